"""SQLite behind ``storage.sql.Database``: the embedded default, one connection, WAL.

Several processes may share one database file, so every write goes through
``BEGIN IMMEDIATE``: the write lock is taken *before* anything is read, so a "select
due jobs, then mark them dialing" sequence cannot interleave with another process
doing the same. Inside one process the connection is shared by many coroutines; an
``asyncio.Lock`` serialises them because SQLite has no nested transactions on one
connection.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from storage.sql import Database, Migration, Row, Singleton, Transaction, format_dt

#: How long a connection waits for another process's write lock before giving up.
BUSY_TIMEOUT_MS = 5000


def split_statements(sql: str) -> list[str]:
    """Split a migration script into complete statements.

    ``executescript`` would commit any open transaction first, which breaks
    "one migration, one transaction"; splitting with
    ``sqlite3.complete_statement`` keeps trigger bodies and quoted ``;`` whole.
    """
    statements: list[str] = []
    current = ""
    for piece in sql.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \n\t;"):
                statements.append(current.strip())
            current = ""
    if current.strip(" \n\t;"):
        raise ValueError(f"incomplete SQL statement in migration: {current.strip()!r}")
    return statements


class SqliteTransaction(Transaction):
    """The statements of one ``BEGIN IMMEDIATE`` … ``COMMIT`` block (already serialised: no locks needed)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        async with self._conn.execute(sql, params) as cursor:
            return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with self._conn.executemany(sql, rows):
            pass

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self._conn.execute_fetchall(sql, params))

    async def lock(self, key: str) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` already holds the only write lock there is."""


class _FileSingleton(Singleton):
    """An ``flock`` on a file beside the database: the kernel drops it when the holder dies."""

    def __init__(self, fd: int | None, held: set[str], name: str) -> None:
        super().__init__()
        self._fd = fd
        self._held = held
        self._name = name

    async def release(self) -> None:
        self._held.discard(self._name)
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class SqliteDatabase(Database):
    """One aiosqlite connection with the queue's schema applied.

    Use :meth:`open` (not the constructor) and always :meth:`close`: an
    aiosqlite connection that is never closed keeps its worker thread alive and
    hangs interpreter exit.
    """

    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, path: str) -> None:
        self._conn = conn
        self.path = path
        # asyncio.Lock binds to a loop only when first contended, so creating it here is safe.
        self._lock = asyncio.Lock()
        self._singletons: set[str] = set()

    @classmethod
    async def open(cls, path: str | Path, migrations: Sequence[Migration]) -> SqliteDatabase:
        """Connect, switch to WAL and apply pending migrations.

        Args:
            path: database file, or ``":memory:"`` for a private in-memory database.
        """
        location = str(path)
        # isolation_level=None: the sqlite3 module must not open transactions
        # behind our back; transaction() issues BEGIN IMMEDIATE itself.
        conn = await aiosqlite.connect(location, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            conn.row_factory = sqlite3.Row
            db = cls(conn, location)
            for pragma in (
                f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}",
                "PRAGMA journal_mode = WAL",
                "PRAGMA synchronous = NORMAL",
                "PRAGMA foreign_keys = ON",
            ):
                await db._run(pragma)
            await db.migrate(migrations)
        except BaseException:
            await conn.close()
            raise
        return db

    async def close(self) -> None:
        await self._conn.close()

    async def _run(self, sql: str) -> None:
        async with self._conn.execute(sql):
            pass

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``, or ``ROLLBACK`` if the block raises.

        The write lock is held from the first statement, so a read-then-write
        inside the block is atomic against other connections and processes.
        """
        async with self._lock:
            try:
                await self._run("BEGIN IMMEDIATE")
                yield SqliteTransaction(self._conn)
                await self._conn.commit()
            except BaseException:
                # Also on a cancel while BEGIN waits for another process's lock:
                # the worker thread still runs the BEGIN later, and without this
                # ROLLBACK (queued behind it, a no-op if nothing is open) the
                # connection would keep the write lock for good.
                await self._conn.rollback()
                raise

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._lock:
            return list(await self._conn.execute_fetchall(sql, params))

    async def try_singleton(self, name: str) -> Singleton | None:
        """An ``flock`` on ``<database>.<name>.lock`` (in-process only for ``:memory:``).

        Every process sharing the file sees the lock; the kernel releases it when the
        holding process dies, so another one can take over.
        """
        if name in self._singletons:
            return None
        fd: int | None = None
        if self.path != ":memory:":
            safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
            fd = os.open(f"{self.path}.{safe}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
        self._singletons.add(name)
        return _FileSingleton(fd, self._singletons, name)

    async def journal_mode(self) -> str:
        """The journal mode in force ("wal" for files, "memory" for ``:memory:``)."""
        row = await self.fetchone("PRAGMA journal_mode")
        assert row is not None
        return str(row[0])

    async def integrity_check(self) -> str:
        """SQLite's own consistency check: "ok" when the file is sound."""
        rows = await self.fetchall("PRAGMA integrity_check")
        return "\n".join(str(r[0]) for r in rows)

    async def _ensure_version_table(self) -> None:
        async with self.transaction() as tx:
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )

    async def _apply_migration(self, migration: Migration) -> bool:
        async with self.transaction() as tx:
            if await tx.fetchone("SELECT 1 FROM schema_version WHERE version = ?", (migration.version,)):
                return False
            for statement in split_statements(migration.sqlite):
                await tx.execute(statement)
            await tx.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (migration.version, format_dt(datetime.now(UTC))),
            )
        return True
