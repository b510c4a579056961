"""The queue under contention: racing claimers and a dispatcher killed mid-transaction."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from clocks import FakeClock

from storage.db import Database
from storage.jobs import JobStore
from storage.models import BookingWindow, CallRequest, ChatOrigin, Job, JobState, Platform

T0 = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("storage_crash_child.py")


def make_request(n: int) -> CallRequest:
    return CallRequest(
        business_name=f"Shop {n}",
        phone="+14155550100",
        business_tz="America/New_York",
        service="haircut",
        person_name="Ann",
        person_tz="America/New_York",
        window=BookingWindow(start_date=date(2030, 3, 5), end_date=date(2030, 3, 9)),
        origin=ChatOrigin(platform=Platform.SLACK, chat_id="C1", user_id=f"U{n % 3}"),
    )


@pytest.fixture
async def two_dbs(tmp_path: Path) -> AsyncIterator[tuple[Database, Database]]:
    """Two independent connections to one database file."""
    path = tmp_path / "queue.db"
    first = await Database.open(path)
    try:
        second = await Database.open(path)
        try:
            yield first, second
        finally:
            await second.close()
    finally:
        await first.close()


async def fill(store: JobStore, count: int, *, due_in: float = -60.0) -> list[Job]:
    return [
        await store.enqueue(make_request(n), due_at=T0 + timedelta(seconds=due_in), max_attempts=3)
        for n in range(count)
    ]


async def claimed_dialing_count(store: JobStore, job_id: str) -> int:
    history = await store.history(job_id)
    return sum(1 for h in history if (h.from_state, h.to_state) == (JobState.QUEUED, JobState.DIALING))


async def test_two_connections_claim_every_job_exactly_once(two_dbs: tuple[Database, Database]) -> None:
    clock = FakeClock(T0)
    store_a, store_b = (JobStore(db, clock=clock) for db in two_dbs)
    jobs = await fill(store_a, 240)

    got_a: list[str] = []
    got_b: list[str] = []
    rounds = 0
    # Each round both claimers hit the database at the same moment from two
    # connections (two worker threads); SQLite's write lock decides who goes
    # first. Free-running loops are not used: SQLite's busy handler is not
    # fair, so one hot loop can starve the other and nothing would be raced.
    while True:
        batch_a, batch_b = await asyncio.wait_for(
            asyncio.gather(
                store_a.claim_due("a", limit=3, lease_seconds=300),
                store_b.claim_due("b", limit=2, lease_seconds=300),
            ),
            timeout=30,
        )
        if not batch_a and not batch_b:
            break
        rounds += 1
        for owner, batch, got in (("a", batch_a, got_a), ("b", batch_b, got_b)):
            assert all(j.state is JobState.DIALING and j.lease_owner == owner for j in batch)
            got.extend(j.id for j in batch)

    assert rounds >= 240 // 5
    assert got_a and got_b, "both claimers should have won some jobs"
    assert not set(got_a) & set(got_b)
    assert sorted(got_a + got_b) == sorted(j.id for j in jobs)
    for job_id in got_a[:20] + got_b[:20]:
        job = await store_b.get(job_id)
        assert (job.attempts, job.lease_owner) == (1, "a" if job_id in got_a else "b")
    # History from the other connection: exactly one queued→dialing row per job.
    rows = await two_dbs[1].fetchall(
        "SELECT job_id, COUNT(*) FROM job_history WHERE from_state = 'queued' AND to_state = 'dialing'"
        " GROUP BY job_id"
    )
    assert {r[0]: r[1] for r in rows} == {j.id: 1 for j in jobs}
    assert await store_a.count_active() == 240
    assert await store_a.list(states=[JobState.QUEUED]) == []


async def run_child_until_claimed(db_path: Path, *, owner: str, commit_n: int, lease: float) -> list[str]:
    """Start the child, wait for its "claimed" line, SIGKILL it mid-transaction."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        str(db_path),
        T0.isoformat(),
        owner,
        str(commit_n),
        str(lease),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        _, err = await proc.communicate()
    assert line.startswith(b"claimed "), f"child failed: {line!r} {err.decode()}"
    assert proc.returncode == -signal.SIGKILL
    ids: list[str] = json.loads(line.split(b" ", 1)[1])
    return ids


async def test_killed_dispatcher_loses_nothing_and_its_jobs_are_taken_over_once(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    lease = 120.0
    clock = FakeClock(T0 + timedelta(seconds=1))
    async with await Database.open(path) as setup:
        jobs = await fill(JobStore(setup, clock=clock), 30)

    child_ids = await run_child_until_claimed(path, owner="child", commit_n=12, lease=lease)
    assert len(child_ids) == 12

    async with await Database.open(path) as db_a, await Database.open(path) as db_b:
        store_a, store_b = JobStore(db_a, clock=clock), JobStore(db_b, clock=clock)
        assert await db_a.integrity_check() == "ok"
        # Nothing lost; the committed claims survived, the uncommitted one vanished.
        everything = {j.id: j for j in await store_a.list(limit=1000)}
        assert set(everything) == {j.id for j in jobs}
        for job_id in child_ids:
            job = everything[job_id]
            assert (job.state, job.lease_owner, job.attempts) == (JobState.DIALING, "child", 1)
            assert job.lease_expires_at == T0 + timedelta(seconds=lease)
        rest = set(everything) - set(child_ids)
        assert all(everything[i].state is JobState.QUEUED and everything[i].attempts == 0 for i in rest)

        # While the lease holds, another dispatcher gets only the jobs the child never committed.
        claimed_by_a = await store_a.claim_due("a", limit=100, lease_seconds=3600)
        assert {j.id for j in claimed_by_a} == rest
        assert await store_b.expired_leases() == []
        assert [await store_b.take_over(i, "b", 60) for i in child_ids] == [None] * 12

        # Past the expiry (parent clock, no sleeping) they are recoverable, each exactly once.
        clock.advance(lease)
        assert {j.id for j in await store_a.expired_leases()} == set(child_ids)
        results = await asyncio.wait_for(
            asyncio.gather(
                *(
                    store.take_over(i, name, 60)
                    for i in child_ids
                    for store, name in ((store_a, "a"), (store_b, "b"))
                )
            ),
            timeout=60,
        )
        winners = Counter(job.id for job in results if job is not None)
        assert winners == dict.fromkeys(child_ids, 1)
        assert await store_a.expired_leases() == []

        for job_id in child_ids:
            job = await store_b.get(job_id)
            assert job.lease_owner in ("a", "b") and job.state is JobState.DIALING
            history = await store_a.history(job_id)
            takeovers = [h for h in history if "taken over" in h.reason]
            assert [(h.owner, h.from_state, h.to_state) for h in takeovers] == [
                (job.lease_owner, JobState.DIALING, JobState.DIALING)
            ]
            assert "child" in takeovers[0].reason
            assert await claimed_dialing_count(store_a, job_id) == 1
        assert await db_b.integrity_check() == "ok"


async def test_cancelled_claim_waiting_for_the_lock_leaves_the_connection_usable(
    two_dbs: tuple[Database, Database],
) -> None:
    clock = FakeClock(T0)
    db_a, db_b = two_dbs
    store_b = JobStore(db_b, clock=clock)
    jobs = await fill(JobStore(db_a, clock=clock), 3)

    async with db_a.transaction():  # another writer holds the lock
        waiting = asyncio.create_task(store_b.claim_due("b", limit=10, lease_seconds=60))
        await asyncio.sleep(0)  # let it reach BEGIN IMMEDIATE, which now blocks in SQLite
        waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, timeout=30)

    claimed = await store_b.claim_due("b", limit=10, lease_seconds=60)
    assert sorted(j.id for j in claimed) == sorted(j.id for j in jobs)
    assert [await claimed_dialing_count(store_b, j.id) for j in jobs] == [1, 1, 1]
