"""Per-number limits with two dispatchers on one database: one live call per number, a daily cap.

Ten errands from four people all phone the same number. Two dispatchers (separate connections,
as two server processes would have) share the queue file and a fake clock; calls end when the
test says so. Whatever the interleaving, the number never has two calls at once, never more than
``MAX_CALLS_PER_NUMBER_PER_DAY`` in any 24 hours, and every errand ends in a final state, having
been told why it waited.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from pathlib import Path

from clocks import FakeClock
from dispatcher_harness import FakeNotifier, FakePlacer, local, request

from bot import render
from concierge.dispatcher import Dispatcher
from storage.db import open_database
from storage.jobs import JobStore
from storage.models import CallOutcome, Job, JobState, OutcomeKind, WaitReason
from storage.ports import JobEvent

NY = "America/New_York"
ALWAYS_OPEN = "mon-sun 00:00-24:00"
PHONE = "+14155550199"
ERRANDS = 10
PER_DAY = 3


async def test_ten_errands_to_one_number_respect_both_limits_across_two_dispatchers(db_url: str) -> None:
    path = db_url
    clock = FakeClock(local(NY, 2026, 6, 8, 10, 0))
    dbs = [await open_database(path), await open_database(path)]
    stores = [JobStore(db, clock=clock) for db in dbs]
    live: set[str] = set()
    most_live = 0

    def on_place(job: Job) -> None:
        nonlocal most_live
        live.add(job.id)
        most_live = max(most_live, len(live))

    placers = [FakePlacer(clock), FakePlacer(clock)]
    for placer in placers:
        placer.on_place = on_place
    notifiers = [FakeNotifier(), FakeNotifier()]
    dispatchers = [
        Dispatcher(
            store, placer, notifier, owner=f"node-{i}", clock=clock, default_hours=ALWAYS_OPEN,
            max_concurrent=5, max_attempts=3, lease_seconds=900, retry_backoff=timedelta(minutes=30),
            max_calls_per_number_per_day=PER_DAY,
        )
        for i, (store, placer, notifier) in enumerate(zip(stores, placers, notifiers, strict=True))
    ]  # fmt: skip
    runs = [asyncio.create_task(d.run()) for d in dispatchers]

    async def idle() -> None:
        async with asyncio.timeout(10):
            for d in dispatchers:
                await d.wait_idle()

    try:
        jobs = [
            await dispatchers[i % 2].submit(request(user=f"u{i % 4}", phone=PHONE, hours=ALWAYS_OPEN))
            for i in range(ERRANDS)
        ]
        first_calls: set[str] = set()
        for _ in range(500):
            await idle()
            active = await stores[0].list(states=(JobState.DIALING, JobState.IN_CALL))
            assert len(active) <= 1, active
            for job in active:
                # The first call of every other errand goes unanswered, so retries compete too.
                kind = OutcomeKind.NO_ANSWER if job.id not in first_calls and len(first_calls) % 2 else None
                first_calls.add(job.id)
                owner = dispatchers[0] if job.lease_owner == "node-0" else dispatchers[1]
                live.discard(job.id)
                await owner.report_outcome(job.id, CallOutcome(kind or OutcomeKind.DECLINED, "noted"))
            await idle()
            finished = await stores[1].list(states=(JobState.DECLINED,), limit=100)
            if len(finished) == ERRANDS:
                break
            deadlines = [d.sleeping_until for d in dispatchers if d.sleeping_until is not None]
            assert deadlines, "queued errands but no dispatcher waits for anything"
            clock.set(max(min(deadlines), clock.now()))
        else:
            raise AssertionError("the errands did not all finish")
    finally:
        for d in dispatchers:
            d.stop()
        await asyncio.gather(*runs)

    try:
        placed = sorted(c.at for p in placers for c in p.calls)
        assert most_live == 1  # never two calls to the number at once
        for at in placed:  # never more than PER_DAY in any rolling 24 hours
            assert sum(1 for t in placed if at - timedelta(hours=24) < t <= at) <= PER_DAY, placed
        assert len(placed) > ERRANDS  # the retries really happened
        assert {p.calls != [] for p in placers} == {True}  # both dispatchers dialled
        assert placed[-1] - placed[0] >= timedelta(days=(len(placed) - 1) // PER_DAY)

        waits: Counter[str] = Counter()
        for job in jobs:
            final = await stores[0].get(job.id)
            assert final.state is JobState.DECLINED and final.meta.waiting_for is None
            history = await stores[0].history(job.id)
            waits.update(h.reason.split(";")[0] for h in history if h.reason.startswith("waiting:"))
            # Held-back errands are re-planned, not looked at over and over: a handful of rows each.
            assert len(history) < 40, [h.reason for h in history]
        assert set(waits) == {
            "waiting: another errand's call to this number is live",
            f"waiting: {PER_DAY} calls to this number in 24 h",
        }
        # Each person was told: a QUEUED update after each re-plan, besides the first one.
        told = Counter(n.job_id for nf in notifiers for n in nf.notes if n.event is JobEvent.QUEUED)
        assert sum(told.values()) > ERRANDS
    finally:
        for db in dbs:
            await db.close()


async def test_a_held_back_errand_tells_the_person_why_and_until_when(tmp_path: Path) -> None:
    clock = FakeClock(local(NY, 2026, 6, 8, 10, 0))
    async with await open_database(tmp_path / "q.db") as db:
        store = JobStore(db, clock=clock)
        notifier = FakeNotifier()
        dispatcher = Dispatcher(
            store, FakePlacer(clock), notifier, owner="d", clock=clock, default_hours="mon-fri 09:00-17:00",
            max_concurrent=5, max_attempts=3, lease_seconds=900, retry_backoff=timedelta(minutes=30),
            max_calls_per_number_per_day=1,
        )  # fmt: skip
        run = asyncio.create_task(dispatcher.run())
        try:
            first = await dispatcher.submit(request(phone=PHONE))
            second = await dispatcher.submit(request(phone=PHONE, user="u2"))
            async with asyncio.timeout(10):
                await dispatcher.wait_idle()
            busy = await store.get(second.id)
            assert busy.state is JobState.QUEUED and busy.meta.waiting_for is WaitReason.NUMBER_IN_CALL
            text = render.progress(busy, "queued", "America/New_York")
            assert "Waiting: I'm already on the phone with this number for another errand" in text
            assert notifier.events(second.id) == [JobEvent.QUEUED, JobEvent.QUEUED]

            await dispatcher.report_outcome(first.id, CallOutcome(OutcomeKind.DECLINED, "full"))
            clock.advance(timedelta(minutes=5))
            async with asyncio.timeout(10):
                await dispatcher.wait_idle()
            capped = await store.get(second.id)
            assert capped.meta.waiting_for is WaitReason.NUMBER_DAILY_LIMIT
            # 24 h after the first call is Tuesday 10:00, inside the business's hours.
            assert capped.next_attempt_at == local(NY, 2026, 6, 9, 10, 0)
            text = render.progress(capped, "queued", "America/New_York")
            assert "most calls I make to one number in a day" in text and "Tue" in text
        finally:
            dispatcher.stop()
            await run
