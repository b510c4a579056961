"""The two engines behind ``storage.sql``: one schema, the schema guard, singletons, SKIP LOCKED."""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from factories import call_request
from storage_kit import columns

from storage.db import MIGRATIONS, Migration, SchemaTooNew, open_database
from storage.jobs import JobStore
from storage.models import CallRequest, ChatOrigin, Platform
from storage.postgres import to_dollar

T0 = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[1]

#: A node that takes a singleton, says so, and holds it until it is killed.
HOLDER = """
import asyncio, sys
from storage.db import open_database

async def main() -> None:
    db = await open_database(sys.argv[1])
    held = await db.try_singleton("telegram-polling")
    print("held" if held else "busy", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def request(n: int = 0) -> CallRequest:
    return call_request(
        phone=f"+1415555{n:04d}", origin=ChatOrigin(platform=Platform.SLACK, chat_id="C1", user_id="U1")
    )


async def test_both_engines_build_the_same_tables_and_columns(tmp_path: Path, pg_url: str) -> None:
    async with await open_database(tmp_path / "q.db") as lite, await open_database(pg_url) as pg:
        assert await lite.schema_version() == await pg.schema_version() == MIGRATIONS[-1].version
        lite_columns, pg_columns = await columns(lite), await columns(pg)
    # SQLite's jobs.rowid is implicit; PostgreSQL has it as a column so ORDER BY rowid means the same.
    pg_columns["jobs"].remove("rowid")
    assert pg_columns == lite_columns
    assert {"jobs", "job_history", "turns", "calls", "do_not_call", "drafts"} <= set(lite_columns)


async def test_older_code_refuses_a_newer_schema(db_url: str) -> None:
    newer = [*MIGRATIONS, Migration(MIGRATIONS[-1].version + 1, sqlite="SELECT 1;", postgresql="SELECT 1;")]
    async with await open_database(db_url) as db:
        assert await db.migrate(newer) == [newer[-1].version]
        with pytest.raises(SchemaTooNew, match="Upgrade this node") as refused:
            await db.migrate(MIGRATIONS)  # what the older code does when it opens the database
    assert (refused.value.found, refused.value.known) == (newer[-1].version, MIGRATIONS[-1].version)
    with pytest.raises(SchemaTooNew):
        await open_database(db_url)


def test_question_marks_become_numbered_parameters_outside_quotes() -> None:
    assert to_dollar("SELECT a FROM t WHERE b = ? AND c IN (?, ?)") == (
        "SELECT a FROM t WHERE b = $1 AND c IN ($2, $3)"
    )
    assert to_dollar("SELECT '?', \"a?\" FROM t WHERE x = ?") == "SELECT '?', \"a?\" FROM t WHERE x = $1"


async def _start_holder(url: str) -> tuple[asyncio.subprocess.Process, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, url, cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
    return proc, line.strip()


async def test_a_singleton_has_one_holder_and_passes_on_when_the_holder_dies(db_url: str) -> None:
    async with await open_database(db_url) as db:
        proc, said = await _start_holder(db_url)
        try:
            assert said == b"held"
            assert await db.try_singleton("telegram-polling") is None  # another node holds it
            assert await db.try_singleton("another-name") is not None  # names are independent
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        # The holder is gone: the lock is free (PostgreSQL notices the closed socket a moment later).
        deadline = asyncio.get_running_loop().time() + 30
        while (mine := await db.try_singleton("telegram-polling")) is None:
            assert asyncio.get_running_loop().time() < deadline, "the dead holder's lock was never freed"
            await asyncio.sleep(0.05)
        assert await db.try_singleton("telegram-polling") is None  # not even twice in one node
        await mine.release()
        again = await db.try_singleton("telegram-polling")
        assert again is not None
        await again.release()


async def test_a_postgresql_singleton_reports_a_lost_connection(pg_url: str) -> None:
    async with await open_database(pg_url) as db:
        held = await db.try_singleton("telegram-polling")
        assert held is not None and not held.lost.is_set()
        await db.fetchone(
            "SELECT pg_terminate_backend(pid) FROM pg_locks"
            " WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
        )
        await asyncio.wait_for(held.lost.wait(), timeout=30)
        await held.release()
        taken = await db.try_singleton("telegram-polling")
        assert taken is not None
        await taken.release()


async def test_a_postgresql_claim_passes_over_rows_another_transaction_holds(pg_url: str) -> None:
    async with await open_database(pg_url) as db:
        store = JobStore(db, clock=lambda: T0)
        first = await store.enqueue(request(1), due_at=T0, max_attempts=3)
        second = await store.enqueue(request(2), due_at=T0, max_attempts=3)
        async with db.transaction() as tx:  # e.g. a cancel deciding on the first errand
            await tx.fetchone(f"SELECT id FROM jobs WHERE id = ?{tx.for_update}", (first.id,))
            claimed = await asyncio.wait_for(store.claim_due("node-b", limit=5, lease_seconds=60), 30)
            assert [j.id for j in claimed] == [second.id]
        [later] = await store.claim_due("node-b", limit=5, lease_seconds=60)
        assert later.id == first.id
