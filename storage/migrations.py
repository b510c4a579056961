"""The queue's schema: numbered migrations, written once, rendered in each engine's dialect.

Each migration is a function of a :class:`Dialect`, so both engines get the same tables
with the same columns (``tests/test_storage_engines.py`` compares them on real engines)
and differ only where the engines do: auto-increment keys (``AUTOINCREMENT`` /
``BIGSERIAL``), floating-point columns, append-only triggers (a PostgreSQL trigger calls a
function), JSON access, and the ``jobs.rowid`` that SQLite has implicitly and PostgreSQL
gets as a column, so "insertion order" means the same on both. Never edit an applied
migration: append a new number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from storage.sql import Migration


@dataclass(frozen=True)
class Dialect:
    """The few words in which the engines' DDL differs."""

    serial_key: str  # an auto-increment integer primary key
    real: str  # a floating-point column
    rowid_column: str  # SQLite's implicit rowid, made explicit where it is not implicit
    request_phone: str  # the phone of the JSON ``jobs.request``

    def append_only(self, table: str) -> str:
        """Triggers that refuse any update or delete of ``table``'s rows."""
        if self is SQLITE:
            return "\n".join(
                f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table}\n"
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;"
                for op in ("UPDATE", "DELETE")
            )
        return "\n".join(
            f"CREATE TRIGGER {table}_no_{op.lower()} BEFORE {op} ON {table}\n"
            "    FOR EACH ROW EXECUTE FUNCTION append_only();"
            for op in ("UPDATE", "DELETE")
        )

    def append_only_function(self) -> str:
        """What :meth:`append_only` triggers call (PostgreSQL only)."""
        if self is SQLITE:
            return ""
        return (
            "CREATE FUNCTION append_only() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            "BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$;"
        )


SQLITE = Dialect(
    serial_key="INTEGER PRIMARY KEY AUTOINCREMENT",
    real="REAL",
    rowid_column="",
    request_phone="json_extract(request, '$.phone')",
)
POSTGRESQL = Dialect(
    serial_key="BIGSERIAL PRIMARY KEY",
    real="DOUBLE PRECISION",
    # SQLite's implicit rowid, made explicit: insertion order breaks ties in ORDER BY.
    rowid_column="rowid BIGSERIAL NOT NULL,",
    request_phone="request::json ->> 'phone'",
)


def _queue(d: Dialect) -> str:
    return f"""
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            {d.rowid_column}
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
            meta TEXT NOT NULL DEFAULT '{{}}'
        );
        CREATE INDEX jobs_due ON jobs (state, next_attempt_at);
        CREATE INDEX jobs_call_sid ON jobs (call_sid);
        CREATE INDEX jobs_user ON jobs (user_id, created_at);

        CREATE TABLE job_history (
            seq {d.serial_key},
            job_id TEXT NOT NULL REFERENCES jobs (id),
            at TEXT NOT NULL,
            from_state TEXT,
            to_state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            owner TEXT
        );
        CREATE INDEX job_history_job ON job_history (job_id, seq);
        {d.append_only_function()}
        {d.append_only("job_history")}

        CREATE TABLE turns (
            job_id TEXT NOT NULL REFERENCES jobs (id),
            attempt INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            speaker TEXT NOT NULL,
            text TEXT NOT NULL,
            at {d.real} NOT NULL,
            interrupted INTEGER NOT NULL DEFAULT 0,
            has_latency INTEGER NOT NULL DEFAULT 0,
            speech_end {d.real},
            stt_final {d.real},
            llm_first_token {d.real},
            tts_first_byte {d.real},
            first_audio_out {d.real},
            barge_in_ms {d.real},
            PRIMARY KEY (job_id, attempt, idx)
        );
        """


def _calls_per_number(d: Dialect) -> str:
    # The callee's number as a column, for per-number limits inside the claim transaction
    # (one live call per number, a daily cap), and a ledger of the calls each number
    # received: one row per claim that may have dialled, written in the claim's own
    # transaction and removed again when a claim ends without a call. Back-filled from the
    # history (every queued → dialing was a claim).
    return f"""
        ALTER TABLE jobs ADD COLUMN phone TEXT;
        UPDATE jobs SET phone = {d.request_phone};
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
        """


def _do_not_call(d: Dialect) -> str:
    return f"""
        CREATE TABLE do_not_call (
            e164 TEXT PRIMARY KEY,
            reason TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL,
            added_at TEXT NOT NULL
        );

        CREATE TABLE do_not_call_history (
            seq {d.serial_key},
            e164 TEXT NOT NULL,
            at TEXT NOT NULL,
            action TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL
        );
        CREATE INDEX do_not_call_history_number ON do_not_call_history (e164, seq);
        {d.append_only("do_not_call_history")}
        """


def _drafts(_: Dialect) -> str:
    return """
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
        """


def _chat_state(_: Dialect) -> str:
    return """
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
        """


def _both(version: int, text: Callable[[Dialect], str]) -> Migration:
    return Migration(version, sqlite=text(SQLITE), postgresql=text(POSTGRESQL))


MIGRATIONS: list[Migration] = [
    _both(1, _queue),
    _both(2, _calls_per_number),
    _both(3, _do_not_call),
    _both(4, _drafts),
    _both(5, _chat_state),
]
