"""Dispatcher: business-hours timing, concurrency, retries, outcomes, cancel, limits."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from dispatcher_harness import harness, local, request

from concierge.clock import OffsetClock
from storage.errors import IllegalTransition, IntakeError, JobNotFound, ProviderError, ProviderStatusError
from storage.models import (
    Booking,
    CallOutcome,
    Job,
    JobState,
    OutcomeKind,
    Speaker,
    Turn,
    UserAnswer,
)
from storage.ports import JobEvent

NY = "America/New_York"
SUNDAY_NOON = local(NY, 2026, 6, 7, 12, 0)
MONDAY_9 = local(NY, 2026, 6, 8, 9, 0)
MONDAY_10 = local(NY, 2026, 6, 8, 10, 0)


async def test_enqueued_while_closed_calls_exactly_once_at_opening(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", SUNDAY_NOON) as h:
        job = await h.dispatcher.submit(request())
        assert job.next_attempt_at == MONDAY_9
        assert h.notifier.events(job.id) == [JobEvent.QUEUED]
        await h.idle()
        assert h.placer.calls == []
        assert h.dispatcher._parked_until == MONDAY_9  # sleeps until opening, no polling

        h.clock.set(MONDAY_9 - timedelta(minutes=1))
        await h.idle()
        assert h.placer.calls == []

        h.clock.set(MONDAY_9)
        await h.idle()
        assert [(c.job_id, c.at) for c in h.placer.calls] == [(job.id, MONDAY_9)]
        stored = await h.store.get(job.id)
        assert stored.state is JobState.DIALING and stored.call_sid == h.placer.calls[0].call_sid
        assert h.notifier.events(job.id) == [JobEvent.QUEUED, JobEvent.CALLING]

        h.clock.advance(timedelta(minutes=5))
        await h.idle()
        assert len(h.placer.calls) == 1


async def test_plan_matches_submit_and_rejects_bad_hours(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", SUNDAY_NOON) as h:
        assert await h.dispatcher.plan(request()) == MONDAY_9
        assert await h.dispatcher.plan(request(hours="sun 11:00-13:00")) == SUNDAY_NOON
        with pytest.raises(IntakeError, match="open"):
            await h.dispatcher.submit(request(hours="someday 09:00-10:00"))
        assert await h.store.list() == []


async def test_max_concurrency_is_respected(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10, max_concurrent=2) as h:
        jobs = [await h.dispatcher.submit(request()) for _ in range(5)]
        await h.idle()
        assert len(h.placer.calls) == 2
        assert await h.store.count_active() == 2
        first = h.placer.calls[0].job_id
        await h.dispatcher.call_answered(first, h.placer.calls[0].call_sid)
        await h.dispatcher.report_outcome(first, CallOutcome(OutcomeKind.DECLINED, summary="Fully booked."))
        await h.idle()
        assert len(h.placer.calls) == 3
        assert await h.store.count_active() == 2
        assert {c.job_id for c in h.placer.calls} <= {j.id for j in jobs}


async def test_retry_backoff_lands_at_next_opening(tmp_path: Path) -> None:
    start = local(NY, 2026, 6, 8, 16, 50)
    async with harness(tmp_path / "q.db", start) as h:
        job = await h.dispatcher.submit(request())
        await h.idle()
        assert len(h.placer.calls) == 1
        await h.dispatcher.report_outcome(job.id, CallOutcome(OutcomeKind.NO_ANSWER))
        retried = await h.store.get(job.id)
        # 16:50 + 30 min = 17:20, closed: the retry waits for Tuesday 09:00.
        assert retried.state is JobState.QUEUED
        assert retried.next_attempt_at == local(NY, 2026, 6, 9, 9, 0)
        assert retried.outcome is not None and retried.outcome.kind is OutcomeKind.NO_ANSWER
        assert h.notifier.events(job.id)[-1] is JobEvent.RETRY_PLANNED
        await h.idle()
        assert len(h.placer.calls) == 1

        h.clock.set(local(NY, 2026, 6, 9, 9, 0))
        await h.idle()
        assert len(h.placer.calls) == 2 and h.placer.calls[1].attempt == 2
        await h.dispatcher.report_outcome(job.id, CallOutcome(OutcomeKind.BUSY))
        # Second retry doubles the back-off: 09:00 + 60 min, inside opening hours.
        assert (await h.store.get(job.id)).next_attempt_at == local(NY, 2026, 6, 9, 10, 0)


async def test_max_attempts_gives_up_with_transcript(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10, max_attempts=2) as h:
        job = await h.dispatcher.submit(request())
        await h.idle()
        await h.dispatcher.report_outcome(job.id, CallOutcome(OutcomeKind.VOICEMAIL))
        h.clock.advance(timedelta(minutes=30))
        await h.idle()
        assert len(h.placer.calls) == 2
        turns = [Turn(Speaker.CALLEE, "Leave a message after the tone.", at=1.0)]
        voicemail = CallOutcome(OutcomeKind.VOICEMAIL, summary="Voicemail.")
        await h.dispatcher.report_outcome(job.id, voicemail, turns)
        final = await h.store.get(job.id)
        assert final.state is JobState.GAVE_UP and final.attempts == 2
        last = h.notifier.notes[-1]
        assert last.event is JobEvent.FINISHED and last.transcript == tuple(turns)
        assert await h.store.turns(job.id, 2) == turns
        h.clock.advance(timedelta(days=2))
        await h.idle()
        assert len(h.placer.calls) == 2


async def test_cancel_wakes_the_loop_and_hangs_up(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10, max_concurrent=1) as h:
        a = await h.dispatcher.submit(request())
        b = await h.dispatcher.submit(request())
        await h.idle()
        assert [c.job_id for c in h.placer.calls] == [a.id]
        assert h.dispatcher._parked_until is not None  # only the lease expiry is ahead
        # Cancelling the ringing call frees the only slot: b is dialled without the clock moving.
        cancelled = await h.dispatcher.cancel(a.id, "u1")
        assert cancelled.state is JobState.CANCELLED
        assert h.placer.hung_up == [h.placer.calls[0].call_sid]
        await h.idle()
        assert [c.job_id for c in h.placer.calls] == [a.id, b.id]
        assert h.notifier.events(a.id)[-1] is JobEvent.CANCELLED
        # A late outcome for the cancelled call is ignored.
        await h.dispatcher.report_outcome(a.id, CallOutcome(OutcomeKind.NO_ANSWER))
        assert (await h.store.get(a.id)).state is JobState.CANCELLED


async def test_cancel_of_queued_job_reparks_without_deadline(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", SUNDAY_NOON) as h:
        job = await h.dispatcher.submit(request())
        await h.idle()
        assert h.dispatcher._parked_until == MONDAY_9
        with pytest.raises(JobNotFound):
            await h.dispatcher.cancel(job.id, "someone-else")
        await h.dispatcher.cancel(job.id, "u1")
        await h.idle()
        assert h.dispatcher._parked_until is None
        with pytest.raises(IllegalTransition):
            await h.dispatcher.cancel(job.id, "u1")


async def test_cancel_while_call_is_being_created_hangs_it_up(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10) as h:
        h.placer.gate = asyncio.Event()
        job = await h.dispatcher.submit(request())
        async with asyncio.timeout(5):
            await h.placer.entered.wait()
        await h.dispatcher.cancel(job.id, "u1")
        assert h.placer.hung_up == []  # no CallSid yet
        h.placer.gate.set()
        await h.idle()
        assert h.placer.hung_up == [h.placer.calls[0].call_sid]
        assert (await h.store.get(job.id)).state is JobState.CANCELLED


async def test_outcomes_map_to_final_states(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10, max_concurrent=5) as h:
        kinds = [OutcomeKind.DECLINED, OutcomeKind.NEEDS_USER, OutcomeKind.WRONG_NUMBER, OutcomeKind.FAILED]
        jobs = [await h.dispatcher.submit(request()) for _ in kinds]
        await h.idle()
        for job, kind in zip(jobs, kinds, strict=True):
            await h.dispatcher.call_answered(job.id, "CAx")
            await h.dispatcher.report_outcome(job.id, CallOutcome(kind, question="Tuesday or Wednesday?"))
        states = [(await h.store.get(j.id)).state for j in jobs]
        assert states == [JobState.DECLINED, JobState.NEEDS_USER, JobState.FAILED, JobState.FAILED]
        for job in jobs:
            assert h.notifier.events(job.id)[-2:] == [JobEvent.IN_CALL, JobEvent.FINISHED]


async def test_booked_creates_calendar_event_and_survives_calendar_failure(tmp_path: Path) -> None:
    seen: list[str] = []

    async def on_booked(job: Job, outcome: CallOutcome) -> CallOutcome:
        seen.append(job.id)
        if len(seen) == 2:
            raise ProviderStatusError("graph said no", provider="graph", status=503)
        return outcome.with_event_link("https://outlook.example/event/1")

    async with harness(tmp_path / "q.db", MONDAY_10, on_booked=on_booked) as h:
        a = await h.dispatcher.submit(request())
        b = await h.dispatcher.submit(request())
        await h.idle()
        slot = Booking(MONDAY_10 + timedelta(days=1), MONDAY_10 + timedelta(days=1, minutes=30), "haircut")
        turns = [Turn(Speaker.ASSISTANT, "Hi, I'm an AI assistant calling for Alex.")]
        # Outcome without an answered callback: the dispatcher passes through in_call.
        await h.dispatcher.report_outcome(a.id, CallOutcome(OutcomeKind.BOOKED, "Booked.", slot), turns)
        await h.dispatcher.report_outcome(b.id, CallOutcome(OutcomeKind.BOOKED, "Booked.", slot))
        done_a, done_b = await h.store.get(a.id), await h.store.get(b.id)
        assert done_a.state is JobState.BOOKED and done_a.outcome is not None
        assert done_a.outcome.event_link == "https://outlook.example/event/1"
        assert done_a.outcome.call_sid == h.placer.calls[0].call_sid
        assert done_b.state is JobState.BOOKED and done_b.outcome is not None
        note = "could not add it to your calendar (the calendar service had a problem)"
        assert note in done_b.outcome.summary
        assert "graph said no" not in done_b.outcome.summary  # provider text goes to the log only
        assert [e.to_state for e in await h.store.history(a.id)][-2:] == [JobState.IN_CALL, JobState.BOOKED]
        # Idempotent: a second report changes nothing and stores no more turns.
        await h.dispatcher.report_outcome(a.id, CallOutcome(OutcomeKind.FAILED), turns)
        assert (await h.store.get(a.id)).state is JobState.BOOKED
        assert await h.store.turns(a.id) == turns


async def test_needs_user_answer_requeues_with_fresh_budget(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10, max_attempts=1) as h:
        job = await h.dispatcher.submit(request())
        await h.idle()
        await h.dispatcher.report_outcome(
            job.id, CallOutcome(OutcomeKind.NEEDS_USER, question="Is a beard trim OK too?")
        )
        with pytest.raises(JobNotFound):
            await h.dispatcher.answer(job.id, "intruder", "yes")
        requeued = await h.dispatcher.answer(job.id, "u1", "yes please")
        assert requeued.state is JobState.QUEUED
        answers = requeued.meta.user_answers
        assert answers == (UserAnswer("Is a beard trim OK too?", "yes please"),)
        await h.idle()
        assert len(h.placer.calls) == 2
        again = await h.store.get(job.id)
        assert again.calls_made == 1  # the follow-up call has its own budget
        with pytest.raises(IllegalTransition):
            await h.dispatcher.answer(job.id, "u1", "again")


async def test_call_answered_only_from_dialing(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10) as h:
        job = await h.dispatcher.submit(request())
        await h.idle()
        await h.dispatcher.call_answered(job.id, h.placer.calls[0].call_sid)
        await h.dispatcher.call_answered(job.id, h.placer.calls[0].call_sid)
        await h.dispatcher.call_answered("nope", "CA0")
        assert h.notifier.events(job.id).count(JobEvent.IN_CALL) == 1
        assert (await h.store.get(job.id)).state is JobState.IN_CALL


async def test_a_hold_is_shown_once_from_its_start_and_the_call_again_when_it_ends(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10) as h:
        job = await h.dispatcher.submit(request())
        await h.idle()
        await h.dispatcher.call_on_hold(job.id, True)  # still ringing: nothing to show
        assert JobEvent.ON_HOLD not in h.notifier.events(job.id)
        await h.dispatcher.call_answered(job.id, h.placer.calls[0].call_sid)

        h.clock.advance(timedelta(minutes=2))
        held_at = h.clock.now()
        await h.dispatcher.call_on_hold(job.id, True)
        await h.dispatcher.call_on_hold(job.id, True)  # a repeat edits nothing
        assert (await h.store.get(job.id)).meta.on_hold_since == held_at
        h.clock.advance(timedelta(minutes=3))
        await h.dispatcher.call_on_hold(job.id, False)
        await h.dispatcher.call_on_hold(job.id, False)
        assert (await h.store.get(job.id)).meta.on_hold_since is None
        assert h.notifier.events(job.id)[-3:] == [JobEvent.IN_CALL, JobEvent.ON_HOLD, JobEvent.IN_CALL]

        await h.dispatcher.call_on_hold(job.id, True)
        await h.dispatcher.report_outcome(job.id, CallOutcome(OutcomeKind.DECLINED, summary="Fully booked."))
        await h.dispatcher.call_on_hold(job.id, False)  # the call is over: the result stays shown
        await h.dispatcher.call_on_hold("nope", True)
        assert h.notifier.events(job.id)[-2:] == [JobEvent.ON_HOLD, JobEvent.FINISHED]


async def test_a_call_that_ended_on_hold_leaves_no_hold_for_the_next_call(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10, retry_backoff=timedelta(minutes=1)) as h:
        job = await h.dispatcher.submit(request())
        await h.idle()
        await h.dispatcher.call_answered(job.id, h.placer.calls[0].call_sid)
        await h.dispatcher.call_on_hold(job.id, True)
        await h.dispatcher.report_outcome(job.id, CallOutcome(OutcomeKind.ERROR, summary="On hold too long."))
        assert (await h.store.get(job.id)).meta.on_hold_since is not None
        # the business calls back before the retry: that call starts with no hold
        assert await h.dispatcher.call_received(job.request.phone, "CA" + "9" * 32, "token-hash")
        assert (await h.store.get(job.id)).meta.on_hold_since is None
        await h.dispatcher.call_on_hold(job.id, True)
        await h.dispatcher.report_outcome(job.id, CallOutcome(OutcomeKind.ERROR, summary="On hold too long."))
        # and so does the next call we place
        h.clock.advance(timedelta(minutes=5))
        await h.idle()
        await h.dispatcher.call_answered(job.id, h.placer.calls[-1].call_sid)
        assert (await h.store.get(job.id)).meta.on_hold_since is None
        await h.dispatcher.call_on_hold(job.id, True)  # the new call's hold is shown
        assert h.notifier.events(job.id)[-2:] == [JobEvent.IN_CALL, JobEvent.ON_HOLD]


@pytest.mark.parametrize(("retryable", "state"), [(True, JobState.QUEUED), (False, JobState.FAILED)])
async def test_place_call_provider_error(tmp_path: Path, retryable: bool, state: JobState) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10) as h:
        h.placer.errors.append(ProviderError("twilio down", provider="twilio", retryable=retryable))
        job = await h.dispatcher.submit(request())
        await h.idle()
        stored = await h.store.get(job.id)
        assert stored.state is state and stored.outcome is not None
        assert stored.outcome.summary == "I couldn't place the call (the phone service had a problem)."
        if retryable:
            assert stored.next_attempt_at == MONDAY_10 + timedelta(minutes=30)
            assert h.notifier.events(job.id)[-1] is JobEvent.RETRY_PLANNED
        else:
            assert h.notifier.events(job.id)[-1] is JobEvent.FINISHED


async def test_due_job_of_closed_business_is_deferred_without_using_an_attempt(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", SUNDAY_NOON) as h:
        # Queued behind the dispatcher's back as due now although the business is closed.
        job = await h.store.enqueue(request(), due_at=SUNDAY_NOON, max_attempts=3)
        h.dispatcher.wake()
        await h.idle()
        assert h.placer.calls == []
        deferred = await h.store.get(job.id)
        assert deferred.state is JobState.QUEUED and deferred.next_attempt_at == MONDAY_9
        assert deferred.calls_made == 0
        h.clock.set(MONDAY_9)
        await h.idle()
        assert len(h.placer.calls) == 1


async def test_per_user_limits(tmp_path: Path) -> None:
    async with harness(
        tmp_path / "q.db", SUNDAY_NOON, max_queued_per_user=2, errands_per_user_per_hour=3
    ) as h:
        first = await h.dispatcher.submit(request())
        await h.dispatcher.submit(request())
        with pytest.raises(IntakeError, match="2 errands waiting"):
            await h.dispatcher.submit(request())
        await h.dispatcher.submit(request(user="u2"))  # someone else is not affected
        await h.dispatcher.cancel(first.id, "u1")
        await h.dispatcher.submit(request())  # third this hour
        await h.dispatcher.cancel((await h.dispatcher.jobs_for("u1"))[0].id, "u1")
        with pytest.raises(IntakeError, match="3 errands in the last hour"):
            await h.dispatcher.submit(request())
        h.clock.advance(timedelta(hours=1, minutes=1))
        await h.dispatcher.submit(request())
        assert len(await h.dispatcher.jobs_for("u1")) == 4


async def test_stop_waits_for_in_flight_placement(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10) as h:
        h.placer.gate = asyncio.Event()
        job = await h.dispatcher.submit(request())
        async with asyncio.timeout(5):
            await h.placer.entered.wait()
        h.dispatcher.stop()
        assert h.task is not None
        assert not h.task.done()
        h.placer.gate.set()
        async with asyncio.timeout(5):
            await h.task
        h.task = None
        assert (await h.store.get(job.id)).call_sid == h.placer.calls[0].call_sid
        assert not h.dispatcher._tasks


async def test_offset_clock_fast_forward_places_the_call_at_opening(tmp_path: Path) -> None:
    """The demo's path: real time flowing, then a jump to opening time wakes the loop."""
    clock = OffsetClock()
    clock.jump_to(SUNDAY_NOON)
    async with harness(tmp_path / "q.db", SUNDAY_NOON, clock=clock) as h:
        job = await h.dispatcher.submit(request())
        await h.idle()
        assert h.placer.calls == [] and h.dispatcher.sleeping_until == MONDAY_9
        clock.jump_to(MONDAY_9)
        async with asyncio.timeout(5):
            await h.placer.entered.wait()
        await h.idle()
        assert [c.job_id for c in h.placer.calls] == [job.id]
        assert h.placer.calls[0].at - MONDAY_9 < timedelta(seconds=5)


async def test_concurrent_submits_cannot_overrun_the_queue_cap(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", SUNDAY_NOON, max_queued_per_user=3) as h:
        results = await asyncio.gather(
            *(h.dispatcher.submit(request()) for _ in range(8)), return_exceptions=True
        )
        assert sum(isinstance(r, Job) for r in results) == 3
        assert all(isinstance(r, IntakeError) for r in results if not isinstance(r, Job))
        assert len(await h.dispatcher.jobs_for("u1")) == 3
