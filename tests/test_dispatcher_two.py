"""Two dispatchers (two processes' worth: separate connections) sharing one database file.

The leases must make every errand be dialled by exactly one of them, exactly once,
while both race over 200 due errands.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

from dispatcher_harness import FakeNotifier, request

from concierge.clock import SystemClock
from concierge.dispatcher import Dispatcher
from storage.db import Database
from storage.jobs import JobStore
from storage.models import CallOutcome, Job, JobState, OutcomeKind
from storage.ports import FoundCall

JOBS = 200
ALWAYS_OPEN = "mon-sun 00:00-24:00"


class AnsweringPlacer:
    """Places a call and has it end (declined) a moment later.

    The call's end reaches the two dispatchers in turn, as Twilio's status callbacks reach
    whichever server a load balancer picks: so each server is woken by ends of the other's
    calls too, and neither can sit parked at the shared cap while the other drains the queue.
    """

    def __init__(
        self, name: str, placed: list[tuple[str, str]], ended: list[str], all_ended: asyncio.Event
    ) -> None:
        self.name = name
        self.placed = placed
        self.ended = ended
        self.all_ended = all_ended
        self.dispatchers: list[Dispatcher] = []
        self.tasks: set[asyncio.Task[None]] = set()

    async def place_call(self, job: Job) -> str:
        self.placed.append((self.name, job.id))
        sid = f"CA{self.name}{len(self.placed):030d}"
        task = asyncio.create_task(self._end(job.id, sid))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return sid

    async def _end(self, job_id: str, sid: str) -> None:
        await asyncio.sleep(0)
        server = self.dispatchers[len(self.ended) % len(self.dispatchers)]
        await server.report_outcome(job_id, CallOutcome(OutcomeKind.DECLINED, "full", call_sid=sid))
        self.ended.append(job_id)
        if len(self.ended) >= JOBS:
            self.all_ended.set()

    async def find_calls(self, to: str, *, started_after: datetime) -> list[FoundCall]:
        return []

    async def call_status(self, call_sid: str) -> str:
        return "completed"

    async def hang_up(self, call_sid: str) -> None:
        return None


async def test_two_dispatchers_never_dial_the_same_errand(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    clock = SystemClock()
    dbs = [await Database.open(path), await Database.open(path)]
    stores = [JobStore(db, clock=clock.now) for db in dbs]
    placed: list[tuple[str, str]] = []
    ended: list[str] = []
    all_ended = asyncio.Event()
    placers = [AnsweringPlacer(name, placed, ended, all_ended) for name in ("A", "B")]
    dispatchers = [
        Dispatcher(
            store, placer, FakeNotifier(), owner=placer.name, clock=clock, default_hours=ALWAYS_OPEN,
            max_concurrent=8, max_attempts=3, lease_seconds=600, retry_backoff=timedelta(minutes=1),
            max_queued_per_user=JOBS, errands_per_user_per_hour=JOBS,
        )
        for store, placer in zip(stores, placers, strict=True)
    ]  # fmt: skip
    for placer in placers:
        placer.dispatchers = dispatchers
    runs = [asyncio.create_task(d.run()) for d in dispatchers]
    try:
        # errands arrive at both servers (as chat messages would), each waking its own loop
        await asyncio.gather(
            *(dispatchers[i % 2].submit(request(user=f"u{i % 20}", hours=ALWAYS_OPEN)) for i in range(JOBS))
        )
        async with asyncio.timeout(60):
            await all_ended.wait()
    finally:
        for d in dispatchers:
            d.stop()
        await asyncio.gather(*runs)
        for placer in placers:
            await asyncio.gather(*placer.tasks)
    try:
        per_job = Counter(job_id for _, job_id in placed)
        assert len(per_job) == JOBS and set(per_job.values()) == {1}  # every errand dialled exactly once
        assert {name for name, _ in placed} == {"A", "B"}  # both really took part
        jobs = await stores[1].list(limit=JOBS + 1)
        assert len(jobs) == JOBS and {j.state for j in jobs} == {JobState.DECLINED}
        for job in jobs:
            claims = [h for h in await stores[1].history(job.id) if h.to_state is JobState.DIALING]
            assert len(claims) == 1, (job.id, claims)
    finally:
        for db in dbs:
            await db.close()
