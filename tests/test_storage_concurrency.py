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
from storage_kit import wait_until_sound

from storage.db import Database, open_database
from storage.errors import UserLimitReached
from storage.jobs import CLAIM_LOCK, ClaimLimits, JobStore
from storage.models import BookingWindow, CallRequest, ChatOrigin, Job, JobState, Platform, WaitReason

T0 = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("storage_crash_child.py")


def make_request(n: int, *, phone: str = "+14155550100") -> CallRequest:
    return CallRequest(
        business_name=f"Shop {n}",
        phone=phone,
        business_tz="America/New_York",
        service="haircut",
        person_name="Ann",
        person_tz="America/New_York",
        window=BookingWindow(start_date=date(2030, 3, 5), end_date=date(2030, 3, 9)),
        origin=ChatOrigin(platform=Platform.SLACK, chat_id="C1", user_id=f"U{n % 3}"),
    )


@pytest.fixture
async def two_dbs(db_url: str) -> AsyncIterator[tuple[Database, Database]]:
    """Two independent connections (two nodes) to one database, on each engine."""
    first = await open_database(db_url)
    try:
        second = await open_database(db_url)
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


async def run_child_until_claimed(db_url: str, *, owner: str, commit_n: int, lease: float) -> list[str]:
    """Start the child, wait for its "claimed" line, SIGKILL it mid-transaction."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        db_url,
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


async def test_killed_dispatcher_loses_nothing_and_its_jobs_are_taken_over_once(db_url: str) -> None:
    path = db_url
    lease = 120.0
    clock = FakeClock(T0 + timedelta(seconds=1))
    async with await open_database(path) as setup:
        jobs = await fill(JobStore(setup, clock=clock), 30)

    child_ids = await run_child_until_claimed(path, owner="child", commit_n=12, lease=lease)
    assert len(child_ids) == 12

    async with await open_database(path) as db_a, await open_database(path) as db_b:
        store_a, store_b = JobStore(db_a, clock=clock), JobStore(db_b, clock=clock)
        await wait_until_sound(db_a)
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
        await wait_until_sound(db_b)


async def test_cancelled_claim_waiting_for_the_lock_leaves_the_connection_usable(
    two_dbs: tuple[Database, Database],
) -> None:
    clock = FakeClock(T0)
    db_a, db_b = two_dbs
    store_b = JobStore(db_b, clock=clock)
    jobs = await fill(JobStore(db_a, clock=clock), 3)

    async with db_a.transaction() as tx:  # another writer holds the lock claims take
        await tx.lock(CLAIM_LOCK)
        waiting = asyncio.create_task(store_b.claim_due("b", limit=10, lease_seconds=60))
        await asyncio.sleep(0)  # let it reach BEGIN IMMEDIATE (SQLite) / the advisory lock (PostgreSQL)
        waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, timeout=30)

    claimed = await store_b.claim_due("b", limit=10, lease_seconds=60)
    assert sorted(j.id for j in claimed) == sorted(j.id for j in jobs)
    assert [await claimed_dialing_count(store_b, j.id) for j in jobs] == [1, 1, 1]


async def test_global_cap_holds_with_two_claimers_at_once(two_dbs: tuple[Database, Database]) -> None:
    clock = FakeClock(T0)
    store_a, store_b = (JobStore(db, clock=clock) for db in two_dbs)
    for n in range(60):
        await store_a.enqueue(make_request(n, phone=f"+1415555{n:04d}"), due_at=T0, max_attempts=3)
    cap = ClaimLimits(batch=5, max_active=5, one_call_per_number=True, calls_per_number_per_day=3)
    claimed = 0
    for _ in range(12):
        # Both claimers at the same moment from two connections, each asking for the whole cap.
        got = await asyncio.wait_for(
            asyncio.gather(
                store_a.claim("a", lease_seconds=300, limits=cap),
                store_b.claim("b", lease_seconds=300, limits=cap),
            ),
            timeout=30,
        )
        claimed += sum(len(c.jobs) for c in got)
        assert await store_a.count_active() == 5  # full, never over, whoever won
        assert any(c.at_cap for c in got)
        # Two calls end; the next round may fill exactly those two places.
        for job in await store_b.list(states=(JobState.DIALING,), limit=2):
            await store_b.transition(job.id, JobState.FAILED, reason="test: call ended")
    assert claimed == 5 + 2 * 11


async def test_one_number_gets_one_call_and_the_rest_are_replanned(
    two_dbs: tuple[Database, Database],
) -> None:
    clock = FakeClock(T0)
    store_a, store_b = (JobStore(db, clock=clock) for db in two_dbs)
    jobs = [await store_a.enqueue(make_request(n), due_at=T0, max_attempts=3) for n in range(10)]
    limits = ClaimLimits(max_active=10, one_call_per_number=True, number_busy_retry=timedelta(minutes=5))
    got_a, got_b = await asyncio.gather(
        store_a.claim("a", lease_seconds=300, limits=limits),
        store_b.claim("b", lease_seconds=300, limits=limits),
    )
    assert len(got_a.jobs) + len(got_b.jobs) == 1  # one call to the number, whichever claimer won
    deferred = got_a.deferred + got_b.deferred
    assert len(deferred) == 9 and {d.reason for d in deferred} == {WaitReason.NUMBER_IN_CALL}
    for d in deferred:
        assert d.job.state is JobState.QUEUED and d.job.next_attempt_at == T0 + timedelta(minutes=5)
        assert d.job.meta.waiting_for is WaitReason.NUMBER_IN_CALL
        assert (await store_a.history(d.job.id))[-1].reason.startswith("waiting: another errand's call")
    # Nothing due now: a claimer that asks again neither claims nor busy-loops over them.
    again = await store_b.claim("b", lease_seconds=300, limits=limits)
    assert (again.jobs, again.deferred) == ([], [])
    assert await store_a.next_due_at() == T0 + timedelta(minutes=5)
    assert {j.id for j in jobs} == {d.job.id for d in deferred} | {c.id for c in got_a.jobs + got_b.jobs}


async def test_daily_cap_per_number_counts_every_claimer_and_frees_after_24_hours(
    two_dbs: tuple[Database, Database],
) -> None:
    clock = FakeClock(T0)
    store_a, store_b = (JobStore(db, clock=clock) for db in two_dbs)
    limits = ClaimLimits(max_active=10, one_call_per_number=True, calls_per_number_per_day=3)
    jobs = [await store_a.enqueue(make_request(n), due_at=T0, max_attempts=3) for n in range(4)]
    placed = []
    for i, store in enumerate((store_a, store_b, store_a)):
        [job] = (await store.claim(f"d{i}", lease_seconds=300, limits=limits)).jobs
        placed.append(clock.now())
        await store.transition(job.id, JobState.FAILED, reason="test: call ended")
        clock.advance(timedelta(hours=1))
    # A fourth call to the number within 24 h of the first is held until the first ages out.
    claim = await store_b.claim("d3", lease_seconds=300, limits=limits)
    assert claim.jobs == [] and [d.reason for d in claim.deferred] == [WaitReason.NUMBER_DAILY_LIMIT]
    assert claim.deferred[0].job.next_attempt_at == placed[0] + timedelta(hours=24)
    clock.set(placed[0] + timedelta(hours=24))
    [last] = (await store_a.claim("d4", lease_seconds=300, limits=limits)).jobs
    assert last.id == jobs[3].id and last.meta.waiting_for is None
    # A claim given back without a call (closed at the last moment) does not use up the day's calls.
    await store_a.unclaim(last.id, "d4", reason="closed", next_attempt_at=clock.now())
    assert [j.id for j in (await store_b.claim("d5", lease_seconds=300, limits=limits)).jobs] == [last.id]


async def test_per_user_limits_hold_for_two_stores_submitting_at_once(
    two_dbs: tuple[Database, Database],
) -> None:
    clock = FakeClock(T0)
    stores = [JobStore(db, clock=clock) for db in two_dbs]

    async def submit(i: int) -> Job | UserLimitReached:
        try:
            return await stores[i % 2].enqueue_checked(
                make_request(3 * i), due_at=T0, max_attempts=3, max_unfinished=4, max_per_hour=100
            )
        except UserLimitReached as e:
            return e

    results = await asyncio.gather(*(submit(i) for i in range(12)))  # all from user U0
    assert sum(isinstance(r, Job) for r in results) == 4
    refused = [r for r in results if isinstance(r, UserLimitReached)]
    assert {(e.limit, e.allowed, e.count) for e in refused} == {("unfinished", 4, 4)}
    # The hourly limit counts finished errands too, and frees an hour later.
    for job in await stores[0].list():
        await stores[0].cancel(job.id)
    with pytest.raises(UserLimitReached) as hourly:
        await stores[1].enqueue_checked(
            make_request(0), due_at=T0, max_attempts=3, max_unfinished=9, max_per_hour=4
        )
    assert hourly.value.limit == "per_hour"
    clock.advance(timedelta(hours=1, seconds=1))
    await stores[1].enqueue_checked(
        make_request(0), due_at=T0, max_attempts=3, max_unfinished=9, max_per_hour=4
    )
