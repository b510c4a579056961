"""The queue's schema: numbered migrations, each in SQLite's and PostgreSQL's dialect.

Both texts of a migration leave the same tables with the same columns
(``tests/test_storage_schema.py`` compares them on real engines); they differ only where
the engines do: auto-increment keys (``AUTOINCREMENT`` / ``BIGSERIAL``), triggers (a
PostgreSQL trigger calls a function), JSON access, and the ``jobs.rowid`` that SQLite
has implicitly and PostgreSQL gets as a column, so "insertion order" means the same on
both. Never edit an applied migration: append a new number, with both texts.
"""

from __future__ import annotations

from storage.sql import Migration

MIGRATION_5 = """
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

MIGRATIONS: list[Migration] = [
    Migration(
        1,
        sqlite="""
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
        postgresql="""
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            -- SQLite's implicit rowid, made explicit: insertion order breaks ties in ORDER BY.
            rowid BIGSERIAL NOT NULL,
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
            seq BIGSERIAL PRIMARY KEY,
            job_id TEXT NOT NULL REFERENCES jobs (id),
            at TEXT NOT NULL,
            from_state TEXT,
            to_state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            owner TEXT
        );
        CREATE INDEX job_history_job ON job_history (job_id, seq);
        CREATE FUNCTION append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$;
        CREATE TRIGGER job_history_no_update BEFORE UPDATE ON job_history
            FOR EACH ROW EXECUTE FUNCTION append_only();
        CREATE TRIGGER job_history_no_delete BEFORE DELETE ON job_history
            FOR EACH ROW EXECUTE FUNCTION append_only();

        CREATE TABLE turns (
            job_id TEXT NOT NULL REFERENCES jobs (id),
            attempt INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            speaker TEXT NOT NULL,
            text TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            interrupted INTEGER NOT NULL DEFAULT 0,
            has_latency INTEGER NOT NULL DEFAULT 0,
            speech_end DOUBLE PRECISION,
            stt_final DOUBLE PRECISION,
            llm_first_token DOUBLE PRECISION,
            tts_first_byte DOUBLE PRECISION,
            first_audio_out DOUBLE PRECISION,
            barge_in_ms DOUBLE PRECISION,
            PRIMARY KEY (job_id, attempt, idx)
        );
        """,
    ),
    Migration(
        2,
        # The callee's number as a column, for per-number limits inside the claim
        # transaction (one live call per number, a daily cap), and a ledger of the
        # calls each number received: one row per claim that may have dialled, written
        # in the claim's own transaction and removed again when a claim ends without a
        # call. Back-filled from the history (every queued → dialing was a claim).
        sqlite="""
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
        postgresql="""
        ALTER TABLE jobs ADD COLUMN phone TEXT;
        UPDATE jobs SET phone = request::json ->> 'phone';
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
    Migration(
        3,
        sqlite="""
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
        postgresql="""
        CREATE TABLE do_not_call (
            e164 TEXT PRIMARY KEY,
            reason TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL,
            added_at TEXT NOT NULL
        );

        CREATE TABLE do_not_call_history (
            seq BIGSERIAL PRIMARY KEY,
            e164 TEXT NOT NULL,
            at TEXT NOT NULL,
            action TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL
        );
        CREATE INDEX do_not_call_history_number ON do_not_call_history (e164, seq);
        CREATE TRIGGER do_not_call_history_no_update BEFORE UPDATE ON do_not_call_history
            FOR EACH ROW EXECUTE FUNCTION append_only();
        CREATE TRIGGER do_not_call_history_no_delete BEFORE DELETE ON do_not_call_history
            FOR EACH ROW EXECUTE FUNCTION append_only();
        """,
    ),
    Migration(
        4,
        sqlite="""
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
        postgresql="""
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
    Migration(
        5,
        # The same text on both engines: plain tables, no auto-increment, no triggers.
        sqlite=MIGRATION_5,
        postgresql=MIGRATION_5,
    ),
]
