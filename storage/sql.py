"""What the stores need from a SQL database, whichever engine is behind it.

The stores (``storage.jobs``, ``storage.numbers``, ``storage.drafts``, …) write their SQL
once, in the subset SQLite and PostgreSQL share, with ``?`` placeholders. Two engines
sit behind this interface: SQLite (``storage.sqlite``, the embedded default: one node)
and PostgreSQL (``storage.postgres``: any number of nodes). Where the engines differ in
*concurrency* the transaction says so in words the stores can use:

* On SQLite every transaction is ``BEGIN IMMEDIATE``: writers are serialised, so a
  read-count-then-write is atomic with nothing more.
* On PostgreSQL transactions are READ COMMITTED and run side by side. A store that counts
  rows to enforce a limit across rows first takes :meth:`Transaction.lock` (a
  transaction-scoped advisory lock: everyone counting the same thing waits their turn),
  and a store that reads a row it will change appends :attr:`Transaction.for_update`.

Timestamps are fixed-width ISO UTC text on both engines (:func:`format_dt`), so string
order is time order and no engine's own clock or time zone ever enters a comparison:
the stores compare against their injected clock.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from storage.errors import ConciergeError, ProviderConnectionError

_DT_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+00:00"


class Row(Protocol):
    """A result row: by column name or by position (``sqlite3.Row`` and ``asyncpg.Record`` both are)."""

    def __getitem__(self, key: Any, /) -> Any: ...


@dataclass(frozen=True)
class Migration:
    """One numbered schema change, in each engine's dialect.

    Both texts must leave the same tables with the same columns (a test compares them);
    they differ only where the engines do (auto-increment keys, triggers, JSON).
    Never edit an applied migration: append a new number instead.
    """

    version: int
    sqlite: str
    postgresql: str


class SchemaTooNew(ConciergeError):
    """The database was migrated by a newer Concierge than this one.

    Older code could misread or damage columns it does not know, so it refuses to run
    rather than guessing: upgrade this node (every node sharing a database must run a
    version that knows its schema).
    """

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"the database schema is version {found}, but this Concierge knows only up to {known}:"
            " another node with a newer Concierge has migrated it. Upgrade this node before starting it."
        )
        self.found = found
        self.known = known


class DatabaseUnavailable(ProviderConnectionError):
    """The database server could not be reached, dropped the connection, or aborted the
    transaction for a reason worth retrying (shutdown, deadlock); the message says which.

    Retryable, like any outside service's outage: the dispatcher waits and goes on, a
    webhook answers 5xx so the provider redelivers. Only a networked engine raises it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, provider="database")


def format_dt(value: datetime) -> str:
    """Fixed-width ISO UTC text, so SQL string comparison orders like time does.

    Raises:
        ValueError: for a naive datetime (its zone would be a guess).
    """
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: pass an aware UTC datetime")
    return value.astimezone(UTC).strftime(_DT_FORMAT)


def parse_dt(text: str) -> datetime:
    """Inverse of :func:`format_dt` (an aware UTC datetime)."""
    return datetime.fromisoformat(text).astimezone(UTC)


class _Queries(ABC):
    """Reading rows: inside a transaction, or outside one (autocommit)."""

    @abstractmethod
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Rows of a query."""

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """First row of a query, or ``None``."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


class Transaction(_Queries):
    """The statements of one transaction (see the module docstring for what each engine promises)."""

    #: Append to a ``SELECT`` of rows this transaction will change: on PostgreSQL the rows are
    #: locked until commit, so two transactions cannot both act on what they read.
    for_update: str = ""
    #: Append to a claim-style ``SELECT``: rows another transaction holds are passed over.
    skip_locked: str = ""

    @abstractmethod
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""

    @abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row."""

    @abstractmethod
    async def lock(self, key: str) -> None:
        """Wait for, then hold until commit, the lock named ``key`` (cluster-wide).

        Take it before counting rows to enforce a limit that spans rows (the queue's
        concurrency cap, a number's daily calls, a person's open errands), always before
        any row lock, so two nodes counting the same thing take turns. A no-op where the
        engine already serialises writers (SQLite).
        """


class Singleton(ABC):
    """A held cluster-wide "only one holder" lock (see :meth:`Database.try_singleton`).

    Attributes:
        lost: set when the lock can no longer be trusted (its connection died): the holder
            must stop the work it guards at once, because another node may now take it.
    """

    def __init__(self) -> None:
        self.lost = asyncio.Event()

    @abstractmethod
    async def release(self) -> None:
        """Give the lock up (idempotent)."""


class Database(_Queries):
    """An open database with the queue's schema applied (open it with ``storage.db.open_database``).

    Always :meth:`close` it (or use ``async with``): connections left open keep threads or
    sockets alive and can hang interpreter exit.

    Attributes:
        dialect: ``"sqlite"`` or ``"postgresql"``.
    """

    dialect: str

    @abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """One transaction: committed when the block ends, rolled back if it raises."""

    @abstractmethod
    async def close(self) -> None:
        """Close every connection (idempotent)."""

    @abstractmethod
    async def try_singleton(self, name: str) -> Singleton | None:
        """Take the cluster-wide lock ``name`` if nobody holds it; ``None`` if somebody does.

        For work that must run on exactly one node at a time (Telegram long polling). The
        lock dies with its holder (process or connection), so another node can take over.
        """

    @abstractmethod
    async def _apply_migration(self, migration: Migration) -> bool:
        """Apply one migration in its own transaction unless already recorded; whether it ran."""

    @abstractmethod
    async def _ensure_version_table(self) -> None:
        """Create ``schema_version`` if missing (safe when several nodes start at once)."""

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def schema_version(self) -> int:
        """Highest applied migration number (0 for an empty database)."""
        row = await self.fetchone("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        return int(row[0]) if row is not None else 0

    async def migrate(self, migrations: Sequence[Migration]) -> list[int]:
        """Apply every migration not yet recorded in ``schema_version``, each exactly once.

        Each runs in its own transaction and re-checks ``schema_version`` inside it, so
        several nodes opening a fresh database at once apply each migration once.

        Returns:
            The version numbers applied by this call (empty when up to date).

        Raises:
            SchemaTooNew: the database already has a migration newer than any in ``migrations``.
        """
        await self._ensure_version_table()
        known = max((m.version for m in migrations), default=0)
        found = await self.schema_version()
        if found > known:
            raise SchemaTooNew(found, known)
        applied: list[int] = []
        for migration in sorted(migrations, key=lambda m: m.version):
            if await self._apply_migration(migration):
                applied.append(migration.version)
        return applied

