"""What happens to an errand after a call attempt: final state, retry, or give up.

Shared by the three places an attempt can end: the telephony layer's report
(``Dispatcher.report_outcome``), a call that could not be placed, and crash
recovery. Each job is settled under a per-job lock, so a status callback and
the end of the media session racing each other settle it exactly once.

Attempt accounting: ``Job.attempts`` counts claims. A claim that ends without
a call (business closed at the last moment, crash before the call existed)
adds to ``job.meta["uncounted_attempts"]`` so it does not use up the retry
budget; :func:`calls_made` is the number that does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from storage.errors import IllegalTransition, JobNotFound, LeaseLost
from storage.models import Booking, CallOutcome, Job, JobState, OutcomeKind, Turn
from storage.ports import JobEvent

if TYPE_CHECKING:
    from concierge.dispatcher import Dispatcher
    from storage.jobs import JobStore

log = logging.getLogger(__name__)

_FINAL_FOR: dict[OutcomeKind, JobState] = {
    OutcomeKind.BOOKED: JobState.BOOKED,
    OutcomeKind.DECLINED: JobState.DECLINED,
    OutcomeKind.NEEDS_USER: JobState.NEEDS_USER,
    OutcomeKind.WRONG_NUMBER: JobState.FAILED,
    OutcomeKind.FAILED: JobState.FAILED,
}


def calls_made(job: Job) -> int:
    """Attempts that really dialled (claims minus those that placed no call)."""
    return job.attempts - int(job.meta.get("uncounted_attempts", 0))


def current_call_sid(job: Job) -> str | None:
    """The CallSid of the job's *current* attempt, or ``None`` if none was recorded.

    ``Job.call_sid`` keeps the previous attempt's value after a retry, so the
    attempt it belongs to is remembered in ``meta["call_sid_attempt"]``.
    """
    if job.call_sid and job.meta.get("call_sid_attempt") == job.attempts:
        return job.call_sid
    return None


def confirmed_booking(job: Job) -> Booking | None:
    """The slot the business confirmed during the job's *current* attempt, if one was recorded.

    Recorded the moment ``confirm_booking`` succeeds on the phone
    (``Dispatcher.booking_confirmed``), so it survives a crash before the call ends.
    """
    raw = job.meta.get("confirmed_booking")
    if isinstance(raw, dict) and job.meta.get("confirmed_attempt") == job.attempts:
        return Booking.from_dict(raw)
    return None


async def record_call_sid(store: JobStore, job: Job, call_sid: str) -> Job:
    """Remember the call placed for the job's current attempt (see :func:`current_call_sid`).

    The column is written first: the webhooks match Twilio's callbacks
    against ``Job.call_sid``, so the sooner it is right the better.
    """
    await store.set_call_sid(job.id, call_sid)
    return await store.set_meta(job.id, call_sid_attempt=job.attempts)


class JobLocks:
    """Per-job asyncio locks, reference-counted so finished jobs leave no entries."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, job_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(job_id, (asyncio.Lock(), 0))
        self._locks[job_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[job_id]
            if users <= 1:
                del self._locks[job_id]
            else:
                self._locks[job_id] = (lock, users - 1)


class Outcomes:
    """Applies attempt outcomes for one dispatcher."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._d = dispatcher

    async def settle(
        self,
        job_id: str,
        outcome: CallOutcome,
        transcript: Sequence[Turn] = (),
        *,
        reason: str = "",
    ) -> Job | None:
        """Record an attempt's outcome and move the job on. ``None`` if ignored (idempotent).

        The transcript is stored first, so it survives whatever happens next.
        """
        d = self._d
        async with d.locks.hold(job_id):
            try:
                job = await d.store.get(job_id)
            except JobNotFound:
                log.warning("outcome for unknown errand %s ignored", job_id)
                return None
            if not job.state.is_active:
                return None
            if transcript:
                await d.store.add_turns(job_id, job.attempts, transcript)
            if outcome.call_sid is None and current_call_sid(job):
                outcome = dataclasses.replace(outcome, call_sid=current_call_sid(job))
            booking = confirmed_booking(job)
            if outcome.kind is OutcomeKind.ERROR and booking is not None:
                # Confirmed on the phone, then the call broke (crash, dropped stream, restart):
                # the appointment exists at the business; calling again would book it twice.
                outcome = dataclasses.replace(
                    outcome,
                    kind=OutcomeKind.BOOKED,
                    booking=booking,
                    summary="Booked on the phone; the call was cut off before the goodbye.",
                )
            if outcome.kind is OutcomeKind.BOOKED:
                outcome = await self._create_event(job, outcome)
            try:
                job, event = await self._apply(job, outcome, reason or f"call ended: {outcome.kind}")
            except (IllegalTransition, LeaseLost) as e:
                log.info("outcome for errand %s not applied: %s", job_id, e)
                return None
        await d.notifier.notify(job, event, transcript if event is JobEvent.FINISHED else ())
        d.wake()
        return job

    async def requeue_uncounted(self, job: Job, reason: str, *, notify: bool = False) -> Job | None:
        """Back to queued at the next opening without using up an attempt (no call was placed).

        The caller must hold the job's lease.
        """
        d = self._d
        due = d.next_opening(job.request, d.clock.now())
        async with d.locks.hold(job.id):
            try:
                if due is None:
                    failed = CallOutcome(OutcomeKind.FAILED, summary="The business never opens.")
                    job = await d.store.transition(
                        job.id, JobState.FAILED, owner=d.owner, reason="never open", outcome=failed
                    )
                else:
                    job = await d.store.transition(
                        job.id, JobState.QUEUED, owner=d.owner, reason=reason, next_attempt_at=due
                    )
                    uncounted = int(job.meta.get("uncounted_attempts", 0)) + 1
                    job = await d.store.set_meta(job.id, uncounted_attempts=uncounted)
            except (IllegalTransition, LeaseLost) as e:
                log.info("errand %s not re-queued: %s", job.id, e)
                return None
        if due is None:
            await d.notifier.notify(job, JobEvent.FINISHED)
        elif notify:
            await d.notifier.notify(job, JobEvent.RETRY_PLANNED)
        d.wake()
        return job

    async def _create_event(self, job: Job, outcome: CallOutcome) -> CallOutcome:
        on_booked = self._d.on_booked
        if on_booked is None:
            return outcome
        try:
            return await on_booked(job, outcome)
        except Exception as e:  # booked on the phone: never lose that over a calendar error
            log.exception("calendar event for errand %s failed", job.id)
            problem = str(e) or type(e).__name__
            note = f" I could not add it to your calendar ({problem}), so please add it yourself."
            return dataclasses.replace(outcome, summary=(outcome.summary + note).strip())

    async def _apply(self, job: Job, outcome: CallOutcome, reason: str) -> tuple[Job, JobEvent]:
        d = self._d
        final = _FINAL_FOR.get(outcome.kind)
        if final is not None:
            if final is not JobState.FAILED and job.state is JobState.DIALING:
                # The answered callback was lost; the outcome proves the call was answered.
                await d.store.transition(job.id, JobState.IN_CALL, reason="answered (implied by outcome)")
            job = await d.store.transition(job.id, final, reason=reason, outcome=outcome)
            return job, JobEvent.FINISHED
        made = calls_made(job)
        if made >= job.max_attempts:
            job = await d.store.transition(
                job.id, JobState.GAVE_UP, reason=f"{reason}; no attempts left", outcome=outcome
            )
            return job, JobEvent.FINISHED
        backoff = d.retry_backoff * 2 ** max(made - 1, 0)
        due = d.next_opening(job.request, d.clock.now() + backoff)
        if due is None:
            job = await d.store.transition(job.id, JobState.FAILED, reason="never open", outcome=outcome)
            return job, JobEvent.FINISHED
        job = await d.store.transition(
            job.id, JobState.QUEUED, reason=f"{reason}; retry planned", outcome=outcome, next_attempt_at=due
        )
        return job, JobEvent.RETRY_PLANNED
