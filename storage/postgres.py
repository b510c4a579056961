"""PostgreSQL behind ``storage.sql.Database``: the engine for more than one node (asyncpg).

The stores' SQL uses ``?`` placeholders; :func:`to_dollar` numbers them for PostgreSQL
once per statement text. Transactions are READ COMMITTED and run concurrently across
nodes, so the stores take :meth:`PostgresTransaction.lock` (``pg_advisory_xact_lock``)
before counting rows for a limit, lock rows they change with ``FOR UPDATE``, and claim
with ``FOR UPDATE SKIP LOCKED`` (see ``storage.sql``).

Cluster-wide singletons (:meth:`PostgresDatabase.try_singleton`) are *session* advisory
locks on a connection of their own, outside the pool: PostgreSQL drops the lock the
moment that connection dies, which is exactly "the holder is gone, take over".
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from storage.sql import Database, DatabaseUnavailable, Migration, Row, Singleton, Transaction, format_dt

log = logging.getLogger(__name__)

#: Connections per node. Each live call writes a few short transactions; 10 is far from a limit.
POOL_SIZE = 10
#: How often a held singleton's connection is checked (a dead server or network is noticed by then).
SINGLETON_PING_SECONDS = 2.0
#: Bound on connecting, so a wrong host fails start-up with a message instead of hanging.
CONNECT_TIMEOUT_SECONDS = 10.0
#: Advisory-lock key space of this module (the first int of the two-int form), so other
#: software sharing the database can use its own.
_LOCK_CLASS = 0x0C0C


@functools.lru_cache(maxsize=1024)
def to_dollar(sql: str) -> str:
    """``?`` placeholders → ``$1, $2, …`` (outside quoted text), for asyncpg.

    Raises:
        ValueError: the statement already uses ``$n`` placeholders (mixing would misnumber).
    """
    out: list[str] = []
    n = 0
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "?":
            n += 1
            out.append(f"${n}")
            continue
        out.append(ch)
    return "".join(out)


#: What asyncpg raises when the server or the network failed (not our SQL): worth retrying.
TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # the connection broke or does not exist any more
    asyncpg.OperatorInterventionError,  # shutdown, restart, "cannot connect now"
    asyncpg.TransactionRollbackError,  # deadlock detected, serialization failure
    asyncpg.TooManyConnectionsError,
)


@contextlib.asynccontextmanager
async def _transient_as_unavailable(where: str) -> AsyncIterator[None]:
    """Re-raise a server or network failure as the retryable ``DatabaseUnavailable``."""
    try:
        yield
    except TRANSIENT as e:
        raise DatabaseUnavailable(f"PostgreSQL at {where}: {type(e).__name__}: {e}") from e


def _changed(status: str) -> int:
    """Rows changed, from a command tag such as ``UPDATE 3`` or ``INSERT 0 1``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def describe(url: str) -> str:
    """``host:port/dbname`` of a URL, for messages (never the password)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or ''}"


async def probe(url: str) -> tuple[str, int]:
    """The server's version and the database's schema version (0 if never migrated), changing nothing.

    For ``concierge doctor``: whether a node could start against this database.

    Raises:
        DatabaseUnavailable: the server cannot be reached or refuses us.
    """
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_SECONDS)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        raise DatabaseUnavailable(f"cannot open PostgreSQL at {describe(url)}: {e}") from e
    try:
        server = str(await conn.fetchval("SHOW server_version"))
        if await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL"):
            return server, int(await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_version"))
        return server, 0
    finally:
        await conn.close()


class PostgresTransaction(Transaction):
    """The statements of one READ COMMITTED transaction on one pooled connection."""

    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"

    def __init__(self, conn: asyncpg.Connection, where: str) -> None:
        self._conn = conn
        self._where = where

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with _transient_as_unavailable(self._where):
            return _changed(await self._conn.execute(to_dollar(sql), *params))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with _transient_as_unavailable(self._where):
            await self._conn.executemany(to_dollar(sql), list(rows))

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with _transient_as_unavailable(self._where):
            return list(await self._conn.fetch(to_dollar(sql), *params))

    async def lock(self, key: str) -> None:
        async with _transient_as_unavailable(self._where):
            await self._conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_CLASS, key)


class _SessionSingleton(Singleton):
    """A session advisory lock held on a dedicated connection, watched by a ping task."""

    def __init__(self, conn: asyncpg.Connection, name: str) -> None:
        super().__init__()
        self._conn = conn
        self._name = name
        conn.add_termination_listener(lambda _conn: self.lost.set())
        self._watch = asyncio.create_task(self._ping(), name=f"singleton:{name}")

    async def _ping(self) -> None:
        while not self.lost.is_set():
            await asyncio.sleep(SINGLETON_PING_SECONDS)
            try:
                await asyncio.wait_for(self._conn.fetchval("SELECT 1"), SINGLETON_PING_SECONDS)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                log.warning("lost the %r lock: its database connection stopped answering", self._name)
                self.lost.set()

    async def release(self) -> None:
        self._watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watch
        if not self._conn.is_closed():
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self._conn.execute(
                    "SELECT pg_advisory_unlock($1, hashtext($2))", _LOCK_CLASS, self._name
                )
            if self.lost.is_set():
                self._conn.terminate()  # a close would wait on a connection that no longer answers
            else:
                await self._conn.close()


class PostgresDatabase(Database):
    """A pool of asyncpg connections to one PostgreSQL database, schema applied."""

    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self._pool = pool
        self._url = url
        self.where = describe(url)

    @classmethod
    async def open(
        cls, url: str, migrations: Sequence[Migration], *, pool_size: int = POOL_SIZE
    ) -> PostgresDatabase:
        """Connect a pool and apply pending migrations.

        Raises:
            DatabaseUnavailable: the server cannot be reached or refuses us (the message
                names host, port and database, never the password).
            storage.sql.SchemaTooNew: a newer Concierge has migrated this database.
        """
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=pool_size, timeout=CONNECT_TIMEOUT_SECONDS
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise DatabaseUnavailable(f"cannot open PostgreSQL at {describe(url)}: {e}") from e
        db = cls(pool, url)
        try:
            await db.migrate(migrations)
        except BaseException:
            await pool.close()
            raise
        return db

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        # Failures of the engine's own steps become DatabaseUnavailable; whatever the caller's
        # block raises passes through unchanged (and rolls back).
        async with _transient_as_unavailable(self.where):
            conn = await self._pool.acquire()
        try:
            tx = conn.transaction()
            async with _transient_as_unavailable(self.where):
                await tx.start()
            try:
                yield PostgresTransaction(conn, self.where)
            except BaseException:
                with contextlib.suppress(*TRANSIENT, asyncpg.InterfaceError):
                    await tx.rollback()
                raise
            async with _transient_as_unavailable(self.where):
                await tx.commit()
        finally:
            await self._pool.release(conn)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with _transient_as_unavailable(self.where):
            return list(await self._pool.fetch(to_dollar(sql), *params))

    async def try_singleton(self, name: str) -> Singleton | None:
        try:
            conn = await asyncpg.connect(self._url, timeout=CONNECT_TIMEOUT_SECONDS)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise DatabaseUnavailable(f"cannot reach PostgreSQL at {self.where}: {e}") from e
        try:
            held = await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", _LOCK_CLASS, name)
        except BaseException:
            await conn.close()
            raise
        if not held:
            await conn.close()
            return None
        return _SessionSingleton(conn, name)

    async def _ensure_version_table(self) -> None:
        async with self.transaction() as tx:
            # Two nodes creating the table at once would collide in the catalog; take turns.
            await tx.lock("schema")
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )

    async def _apply_migration(self, migration: Migration) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            tx = PostgresTransaction(conn, self.where)
            await tx.lock("schema")
            if await tx.fetchone("SELECT 1 FROM schema_version WHERE version = ?", (migration.version,)):
                return False
            # No parameters: asyncpg sends a simple query, which may hold several statements.
            await conn.execute(migration.postgresql)
            await tx.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (migration.version, format_dt(datetime.now(UTC))),
            )
        return True
