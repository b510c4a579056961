"""What happens to an errand after a call attempt: final state, retry, or give up.

Shared by the three places an attempt can end: the telephony layer's report
(``Dispatcher.report_outcome``), a call that could not be placed, and crash
recovery. Each job is settled under a per-job lock, so a status callback and
the end of the media session racing each other settle it exactly once.

Attempt accounting: ``Job.attempts`` counts claims. A claim that ends without
a call (business closed at the last moment, crash before the call existed) is
given back with ``JobStore.unclaim``, which marks it uncounted so it does not
use up the retry budget; ``Job.calls_made`` is the number that does.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

from concierge.clock import Clock
from concierge.locks import JobLocks
from concierge.schedule import Schedule
from storage.errors import IllegalTransition, JobNotFound, LeaseLost, user_message
from storage.jobs import JobStore
from storage.models import OPTED_OUT_STATE, CallOutcome, Job, JobState, OutcomeKind, Turn
from storage.numbers import SOURCE_CALLEE, DoNotCall
from storage.ports import JobEvent, Notifier

log = logging.getLogger(__name__)

#: Creates the calendar event for a booked outcome and returns it with ``event_link``.
OnBooked = Callable[[Job, CallOutcome], Awaitable[CallOutcome]]

_FINAL_FOR: dict[OutcomeKind, JobState] = {
    OutcomeKind.BOOKED: JobState.BOOKED,
    OutcomeKind.DECLINED: JobState.DECLINED,
    OutcomeKind.NEEDS_USER: JobState.NEEDS_USER,
    OutcomeKind.WRONG_NUMBER: JobState.FAILED,
    OutcomeKind.FAILED: JobState.FAILED,
    OutcomeKind.OPTED_OUT: OPTED_OUT_STATE,
}
#: Errands that wait for a call and end at once when their number opts out elsewhere.
_WAITING = (JobState.QUEUED, JobState.NEEDS_USER)


def _booked_then(outcome: CallOutcome) -> str:
    """The summary of a booking confirmed on the phone that a later outcome must not undo."""
    if outcome.kind is OutcomeKind.ERROR:
        return "Booked on the phone; the call was cut off before the goodbye."
    said = f" ({outcome.summary})" if outcome.summary else ""
    return f"Booked on the phone; the call then ended as {outcome.kind.value}{said}, but the booking stands."


class Outcomes:
    """Applies attempt outcomes to the queue and tells the person.

    Args:
        store: the job queue.
        notifier: tells the person what happened.
        schedule: when the business is open (retries land at an opening).
        clock: what "now" is.
        locks: the per-job locks shared with everything else that changes jobs.
        owner: the dispatcher's lease name (claims given back must hold its lease).
        retry_backoff: first retry delay, doubled on each further attempt.
        on_booked: creates the calendar event; a failure there never loses the booking.
        wake: asks the dispatcher's loop to look at the queue again.
        do_not_call: where a number that opted out goes, at once and for good.
    """

    def __init__(
        self,
        store: JobStore,
        notifier: Notifier,
        *,
        schedule: Schedule,
        clock: Clock,
        locks: JobLocks,
        owner: str,
        retry_backoff: timedelta,
        on_booked: OnBooked | None,
        wake: Callable[[], None],
        do_not_call: DoNotCall | None = None,
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._schedule = schedule
        self._clock = clock
        self._locks = locks
        self._owner = owner
        self._retry_backoff = retry_backoff
        self._on_booked = on_booked
        self._wake = wake
        self._do_not_call = do_not_call

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
        async with self._locks.hold(job_id):
            try:
                job = await self._store.get(job_id)
            except JobNotFound:
                log.warning("outcome for unknown errand %s ignored", job_id)
                return None
            if not job.state.is_active:
                return None
            if transcript:
                await self._store.add_turns(job_id, job.attempts, transcript)
            if outcome.call_sid is None and job.current_call_sid:
                outcome = dataclasses.replace(outcome, call_sid=job.current_call_sid)
            booking = job.current_booking
            if outcome.kind is not OutcomeKind.BOOKED and booking is not None:
                # Confirmed on the phone, then the call broke or ended otherwise (crash, dropped
                # stream, a later "sorry, we're full" or question): the appointment exists at the
                # business; calling again would book it twice. The summary says what happened.
                outcome = dataclasses.replace(
                    outcome,
                    kind=OutcomeKind.BOOKED,
                    booking=booking,
                    summary=_booked_then(outcome),
                )
            if outcome.kind is OutcomeKind.BOOKED:
                outcome = await self._create_event(job, outcome)
            try:
                job, event = await self._apply(job, outcome, reason or f"call ended: {outcome.kind}")
            except (IllegalTransition, LeaseLost) as e:
                log.info("outcome for errand %s not applied: %s", job_id, e)
                return None
        await self._notifier.notify(job, event, transcript if event is JobEvent.FINISHED else ())
        if outcome.kind is OutcomeKind.OPTED_OUT:
            await self._opted_out(job, outcome)
        self._wake()
        return job

    async def _opted_out(self, job: Job, outcome: CallOutcome) -> None:
        """The callee asked not to be called again: never again, by anyone's errand.

        The number goes onto the do-not-call list (so no queued, retrying or dialling
        errand is dialled: the dispatcher checks it before every create), and every other
        errand waiting to call it ends now, its person told with the callee's words.
        """
        phone = job.request.phone
        if self._do_not_call is not None:
            reason = f"the callee asked not to be called again (errand {job.id}): {outcome.summary}"
            await self._do_not_call.add(phone, reason, source=SOURCE_CALLEE)
        ended = CallOutcome(OutcomeKind.OPTED_OUT, summary=outcome.summary)
        for other in await self._store.list(states=_WAITING, limit=10_000):
            if other.id == job.id or other.request.phone != phone:
                continue
            async with self._locks.hold(other.id):
                try:
                    if (await self._store.get(other.id)).state not in _WAITING:
                        continue
                    done = await self._store.transition(
                        other.id,
                        OPTED_OUT_STATE,
                        reason="the number opted out on another errand",
                        outcome=ended,
                    )
                except (IllegalTransition, LeaseLost, JobNotFound) as e:
                    log.info("errand %s not ended after the opt-out: %s", other.id, e)
                    continue
            await self._notifier.notify(done, JobEvent.FINISHED)

    async def requeue_uncounted(
        self, job: Job, reason: str, *, notify: bool = False, backoff: bool = False
    ) -> Job | None:
        """Back to queued at the next opening without using up an attempt (no call was placed).

        The caller must hold the job's lease.

        Args:
            backoff: wait at least the first retry delay, for a claim given back because the
                provider misbehaved (a lost create answer): a provider that keeps failing must
                not be hit again at once, over and over, on attempts that never count.
        """
        after = self._clock.now() + (self._retry_backoff if backoff else timedelta(0))
        due = self._schedule.next_opening(job.request, after)
        async with self._locks.hold(job.id):
            try:
                if due is None:
                    failed = CallOutcome(OutcomeKind.FAILED, summary="The business never opens.")
                    job = await self._store.transition(
                        job.id, JobState.FAILED, owner=self._owner, reason="never open", outcome=failed
                    )
                else:
                    job = await self._store.unclaim(job.id, self._owner, reason=reason, next_attempt_at=due)
            except (IllegalTransition, LeaseLost) as e:
                log.info("errand %s not re-queued: %s", job.id, e)
                return None
        if due is None:
            await self._notifier.notify(job, JobEvent.FINISHED)
        elif notify:
            await self._notifier.notify(job, JobEvent.RETRY_PLANNED)
        self._wake()
        return job

    async def _create_event(self, job: Job, outcome: CallOutcome) -> CallOutcome:
        if self._on_booked is None:
            return outcome
        try:
            return await self._on_booked(job, outcome)
        except Exception as e:  # booked on the phone: never lose that over a calendar error
            log.exception("calendar event for errand %s failed", job.id)
            note = f" I could not add it to your calendar ({user_message(e)}), so please add it yourself."
            return dataclasses.replace(outcome, summary=(outcome.summary + note).strip())

    async def _apply(self, job: Job, outcome: CallOutcome, reason: str) -> tuple[Job, JobEvent]:
        store = self._store
        final = _FINAL_FOR.get(outcome.kind)
        if final is not None:
            if final is not JobState.FAILED and job.state is JobState.DIALING:
                # The answered callback was lost; the outcome proves the call was answered.
                await store.transition(job.id, JobState.IN_CALL, reason="answered (implied by outcome)")
            job = await store.transition(job.id, final, reason=reason, outcome=outcome)
            return job, JobEvent.FINISHED
        made = job.calls_made
        if made >= job.max_attempts:
            job = await store.transition(
                job.id, JobState.GAVE_UP, reason=f"{reason}; no attempts left", outcome=outcome
            )
            return job, JobEvent.FINISHED
        backoff = self._retry_backoff * 2 ** max(made - 1, 0)
        due = self._schedule.next_opening(job.request, self._clock.now() + backoff)
        if due is None:
            job = await store.transition(job.id, JobState.FAILED, reason="never open", outcome=outcome)
            return job, JobEvent.FINISHED
        job = await store.transition(
            job.id, JobState.QUEUED, reason=f"{reason}; retry planned", outcome=outcome, next_attempt_at=due
        )
        return job, JobEvent.RETRY_PLANNED
