"""SQLite access for the errand queue: one connection, WAL, numbered migrations.

Several dispatcher processes may share one database file, so every write goes
through :meth:`Database.transaction`, which starts with ``BEGIN IMMEDIATE``:
the write lock is taken *before* anything is read, so a "select due jobs, then
mark them dialing" sequence cannot interleave with another process doing the
same. Inside one process the connection is shared by many coroutines; an
``asyncio.Lock`` serialises them because SQLite has no nested transactions on
one connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

#: How long a connection waits for another process's write lock before giving up.
BUSY_TIMEOUT_MS = 5000

_DT_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+00:00"

#: Numbered migrations, applied in order, each in its own transaction. Never
#: edit an applied one: append a new number instead.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            state TEXT NOT NULL,
            request TEXT NOT NULL,
            user_id TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            next_attempt_at TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            lease_owner TEXT,
            lease_expires_at TEXT,
            call_sid TEXT,
            outcome TEXT,
            meta TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX jobs_due ON jobs (state, next_attempt_at);
        CREATE INDEX jobs_call_sid ON jobs (call_sid);
        CREATE INDEX jobs_user ON jobs (user_id, created_at);

        CREATE TABLE job_history (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL REFERENCES jobs (id),
            at TEXT NOT NULL,
            from_state TEXT,
            to_state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            owner TEXT
        );
        CREATE INDEX job_history_job ON job_history (job_id, seq);
        CREATE TRIGGER job_history_no_update BEFORE UPDATE ON job_history
        BEGIN SELECT RAISE(ABORT, 'job_history is append-only'); END;
        CREATE TRIGGER job_history_no_delete BEFORE DELETE ON job_history
        BEGIN SELECT RAISE(ABORT, 'job_history is append-only'); END;

        CREATE TABLE turns (
            job_id TEXT NOT NULL REFERENCES jobs (id),
            attempt INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            speaker TEXT NOT NULL,
            text TEXT NOT NULL,
            at REAL NOT NULL,
            interrupted INTEGER NOT NULL DEFAULT 0,
            has_latency INTEGER NOT NULL DEFAULT 0,
            speech_end REAL,
            stt_final REAL,
            llm_first_token REAL,
            tts_first_byte REAL,
            first_audio_out REAL,
            barge_in_ms REAL,
            PRIMARY KEY (job_id, attempt, idx)
        );
        """,
    ),
    (
        2,
        # The callee's number as a column, for per-number limits inside the claim
        # transaction (one live call per number, a daily cap), and a ledger of the
        # calls each number received: one row per claim that may have dialled, written
        # in the claim's own transaction and removed again when a claim ends without a
        # call. Back-filled from the history (every queued → dialing was a claim).
        """
        ALTER TABLE jobs ADD COLUMN phone TEXT;
        UPDATE jobs SET phone = json_extract(request, '$.phone');
        CREATE INDEX jobs_phone_state ON jobs (phone, state);

        CREATE TABLE calls (
            job_id TEXT NOT NULL REFERENCES jobs (id),
            attempt INTEGER NOT NULL,
            phone TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (job_id, attempt)
        );
        CREATE INDEX calls_phone_at ON calls (phone, at);
        INSERT INTO calls (job_id, attempt, phone, at)
        SELECT h.job_id, ROW_NUMBER() OVER (PARTITION BY h.job_id ORDER BY h.seq), j.phone, h.at
        FROM job_history h JOIN jobs j ON j.id = h.job_id
        WHERE h.from_state = 'queued' AND h.to_state = 'dialing';
        """,
    ),
    (
        3,
        """
        CREATE TABLE do_not_call (
            e164 TEXT PRIMARY KEY,
            reason TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL,
            added_at TEXT NOT NULL
        );

        CREATE TABLE do_not_call_history (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            e164 TEXT NOT NULL,
            at TEXT NOT NULL,
            action TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL
        );
        CREATE INDEX do_not_call_history_number ON do_not_call_history (e164, seq);
        CREATE TRIGGER do_not_call_history_no_update BEFORE UPDATE ON do_not_call_history
        BEGIN SELECT RAISE(ABORT, 'do_not_call_history is append-only'); END;
        CREATE TRIGGER do_not_call_history_no_delete BEFORE DELETE ON do_not_call_history
        BEGIN SELECT RAISE(ABORT, 'do_not_call_history is append-only'); END;
        """,
    ),
    (
        4,
        """
        -- Chat drafts (storage.drafts): one open draft per chat thread, owned by the person
        -- who started it; id = lineage-version, the version bumped by every change.
        CREATE TABLE drafts (
            lineage TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            thread_key TEXT NOT NULL UNIQUE,
            owner TEXT NOT NULL,
            data TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX drafts_updated ON drafts (updated_at);
        """,
    ),
    (
        5,
        """
        -- Chat state shared by every node. The question a live
        -- call waits on (storage.live_questions): written by the node holding the call, answered
        -- by whichever node receives the owner's answer.
        CREATE TABLE live_questions (
            job_id TEXT PRIMARY KEY,
            token TEXT NOT NULL,
            owner TEXT NOT NULL,
            node TEXT NOT NULL DEFAULT '',
            asked_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            answer TEXT,
            answered_at TEXT
        );
        CREATE INDEX live_questions_owner ON live_questions (owner, asked_at);

        -- Chat updates already handled (storage.chat_updates): Telegram update ids, Slack event ids.
        CREATE TABLE chat_updates (
            update_key TEXT PRIMARY KEY,
            seen_at TEXT NOT NULL
        );
        CREATE INDEX chat_updates_seen ON chat_updates (seen_at);
        """,
    ),
]


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


class Transaction:
    """The statements of one ``BEGIN IMMEDIATE`` … ``COMMIT`` block."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; returns the number of rows it changed."""
        async with self._conn.execute(sql, params) as cursor:
            return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row."""
        async with self._conn.executemany(sql, rows):
            pass

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of a query, seen from inside the transaction."""
        return list(await self._conn.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        """First row of a query, or ``None``."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


class Database:
    """One aiosqlite connection with the queue's schema applied.

    Use :meth:`open` (not the constructor) and always :meth:`close`: an
    aiosqlite connection that is never closed keeps its worker thread alive and
    hangs interpreter exit.
    """

    def __init__(self, conn: aiosqlite.Connection, path: str) -> None:
        self._conn = conn
        self.path = path
        # asyncio.Lock binds to a loop only when first contended, so creating it here is safe.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path) -> Database:
        """Connect, switch to WAL and apply pending migrations.

        Args:
            path: database file, or ``":memory:"`` for a private in-memory database.
        """
        location = str(path)
        # isolation_level=None: the sqlite3 module must not open transactions
        # behind our back; Database.transaction() issues BEGIN IMMEDIATE itself.
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
            await db.migrate()
        except BaseException:
            await conn.close()
            raise
        return db

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        await self._conn.close()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

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
                yield Transaction(self._conn)
                await self._conn.commit()
            except BaseException:
                # Also on a cancel while BEGIN waits for another process's lock:
                # the worker thread still runs the BEGIN later, and without this
                # ROLLBACK (queued behind it, a no-op if nothing is open) the
                # connection would keep the write lock for good.
                await self._conn.rollback()
                raise

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of a read-only query (autocommit, so it sees every committed write)."""
        async with self._lock:
            return list(await self._conn.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        """First row of a read-only query, or ``None``."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def journal_mode(self) -> str:
        """The journal mode in force ("wal" for files, "memory" for ``:memory:``)."""
        row = await self.fetchone("PRAGMA journal_mode")
        assert row is not None
        return str(row[0])

    async def integrity_check(self) -> str:
        """SQLite's own consistency check: "ok" when the file is sound."""
        rows = await self.fetchall("PRAGMA integrity_check")
        return "\n".join(str(r[0]) for r in rows)

    async def schema_version(self) -> int:
        """Highest applied migration number (0 for an empty database)."""
        row = await self.fetchone("SELECT COALESCE(MAX(version), 0) FROM schema_version")
        return int(row[0]) if row is not None else 0

    async def migrate(self, migrations: Sequence[tuple[int, str]] = MIGRATIONS) -> list[int]:
        """Apply every migration not yet recorded in ``schema_version``.

        Each migration runs in its own ``BEGIN IMMEDIATE`` transaction and
        re-checks ``schema_version`` inside it, so two processes opening a
        fresh file at once apply each migration exactly once.

        Returns:
            The version numbers applied by this call (empty when up to date).
        """
        async with self.transaction() as tx:
            await tx.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
        applied: list[int] = []
        for version, sql in sorted(migrations):
            async with self.transaction() as tx:
                if await tx.fetchone("SELECT 1 FROM schema_version WHERE version = ?", (version,)):
                    continue
                for statement in split_statements(sql):
                    await tx.execute(statement)
                await tx.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (version, format_dt(datetime.now(UTC))),
                )
            applied.append(version)
        return applied
