"""Two dispatchers (two processes' worth: separate connections) sharing one database file.

The leases must make every errand be dialled by exactly one of them, exactly once,
while both race over 200 due errands, and the concurrency cap (counted inside the claim
transaction) must hold across the two.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta

from dispatcher_harness import FakeNotifier, harness, local, request

from concierge.clock import SystemClock
from concierge.dispatcher import Dispatcher
from storage.db import open_database
from storage.jobs import JobStore
from storage.models import CallOutcome, Job, JobState, OutcomeKind
from storage.ports import FoundCall

JOBS = 200
CAP = 8
ALWAYS_OPEN = "mon-sun 00:00-24:00"


class AnsweringPlacer:
    """Places a call; the test's switchboard ends it later (see ``switchboard``).

    Records, at every placement, how many calls are live across both dispatchers: the
    shared cap must hold at each of those instants (the only ones at which it can grow).
    """

    def __init__(
        self, name: str, placed: list[tuple[str, str]], live: set[str], calls: asyncio.Queue[str]
    ) -> None:
        self.name = name
        self.placed = placed
        self.live = live
        self.calls = calls
        self.most_live = 0

    async def place_call(self, job: Job) -> str:
        self.placed.append((self.name, job.id))
        self.live.add(job.id)
        self.most_live = max(self.most_live, len(self.live))
        self.calls.put_nowait(job.id)
        return f"CA{self.name}{len(self.placed):030d}"

    async def find_calls(self, to: str, *, started_after: datetime) -> list[FoundCall]:
        return []

    async def call_status(self, call_sid: str) -> str:
        return "completed"

    async def hang_up(self, call_sid: str) -> None:
        return None


async def test_two_dispatchers_never_dial_the_same_errand(db_url: str) -> None:
    path = db_url
    clock = SystemClock()
    dbs = [await open_database(path), await open_database(path)]
    stores = [JobStore(db, clock=clock.now) for db in dbs]
    placed: list[tuple[str, str]] = []
    live: set[str] = set()
    calls: asyncio.Queue[str] = asyncio.Queue()
    placers = [AnsweringPlacer(name, placed, live, calls) for name in ("A", "B")]
    dispatchers = [
        Dispatcher(
            store, placer, FakeNotifier(), owner=placer.name, clock=clock, default_hours=ALWAYS_OPEN,
            max_concurrent=CAP, max_attempts=3, lease_seconds=600, retry_backoff=timedelta(minutes=1),
            max_queued_per_user=JOBS, errands_per_user_per_hour=JOBS,
        )
        for store, placer in zip(stores, placers, strict=True)
    ]  # fmt: skip

    async def switchboard() -> None:
        """Ends calls one at a time, each reported to the two dispatchers in turn (as Twilio's
        callbacks reach whichever server a load balancer picks), and lets both react before the
        next: with calls ending back to back, SQLite's unfair lock would let one loop refill the
        shared cap every time and the other would never get a turn."""
        for n in range(JOBS):
            job_id = await calls.get()
            live.discard(job_id)
            outcome = CallOutcome(OutcomeKind.DECLINED, "full")
            await dispatchers[n % 2].report_outcome(job_id, outcome)
            for d in dispatchers:
                await d.wait_idle()

    runs = [asyncio.create_task(d.run()) for d in dispatchers]
    try:
        # errands arrive at both servers at once (as chat messages would), each waking its own loop
        await asyncio.gather(
            *(dispatchers[i % 2].submit(request(user=f"u{i % 20}", hours=ALWAYS_OPEN)) for i in range(JOBS))
        )
        async with asyncio.timeout(60):
            await switchboard()
    finally:
        for d in dispatchers:
            d.stop()
        await asyncio.gather(*runs)
    try:
        per_job = Counter(job_id for _, job_id in placed)
        assert len(per_job) == JOBS and set(per_job.values()) == {1}  # every errand dialled exactly once
        assert {name for name, _ in placed} == {"A", "B"}  # both really took part
        assert max(p.most_live for p in placers) == CAP  # the shared cap was reached, never passed
        jobs = await stores[1].list(limit=JOBS + 1)
        assert len(jobs) == JOBS and {j.state for j in jobs} == {JobState.DECLINED}
        for job in jobs:
            claims = [h for h in await stores[1].history(job.id) if h.to_state is JobState.DIALING]
            assert len(claims) == 1, (job.id, claims)
    finally:
        for db in dbs:
            await db.close()


async def test_an_idle_node_sees_work_another_node_queued_within_the_queue_poll(db_url: str) -> None:
    """Nothing another node does can wake this node's loop: it must look again by itself."""
    start = local("America/New_York", 2026, 6, 8, 10)  # a Monday, open
    poll = timedelta(seconds=5)
    async with harness(db_url, start, queue_poll=poll) as h:
        assert h.dispatcher.sleeping_until == start + poll  # never "until woken": nobody would
        async with await open_database(db_url) as other_node:
            job = await JobStore(other_node, clock=h.clock).enqueue(request(), due_at=start, max_attempts=3)
        await h.idle()
        assert h.placer.calls == []  # not woken: it has not looked yet
        await h.run_until(start + poll)
        assert [c.job_id for c in h.placer.calls] == [job.id]
