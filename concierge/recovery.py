"""Crash recovery for the dispatcher: reconcile half-finished calls before any redial.

A job in dialing/in_call whose lease ran out belongs to a dispatcher that
died (or lost its webhooks). Before deciding anything we adopt the lease
(``JobStore.take_over`` is atomic, so one dispatcher wins) and ask the
provider what became of the call:

* no CallSid recorded → first look for the call (``concierge.lost_calls``: the
  CallSid its nonce-carrying ``initiated`` callback recorded, else Twilio's
  Calls list), since a crash between Twilio accepting the create and
  ``JobStore.set_call_sid`` leaves a real call with no CallSid here. Found →
  reconciled as below; not found → never created: back to queued without
  using an attempt; Twilio unreachable → keep the lease and look again.
* queued / ringing / in-progress, call of a *previous* process → hang up and
  retry later. The media stream and the conversation state lived in the dead
  process; the callee would be talking to nobody, and a fresh call with a
  fresh conversation is the honest way on. (Leaving the call up and renewing
  the lease would only be right if the call could be resumed, which it cannot.)
* queued / ringing / in-progress, call of *this* process (its lease merely
  expired, e.g. a webhook was lost) → renew the lease; the session reports.
* completed without a reported outcome → retryable error; busy / no-answer /
  failed / canceled → the matching outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection
from datetime import timedelta

from concierge.clock import Clock
from concierge.lost_calls import find_lost_call
from concierge.outcomes import Outcomes
from storage.errors import JobNotFound, LeaseLost, ProviderError
from storage.jobs import JobStore
from storage.models import FINAL_STATES, CallOutcome, Job, JobState, OutcomeKind
from storage.ports import CallPlacer, JobEvent, Notifier

log = logging.getLogger(__name__)

#: How far back a restart looks for finished errands whose result never reached the chat.
REDELIVER_WITHIN = timedelta(days=7)

LIVE_STATUSES = frozenset({"queued", "ringing", "in-progress"})

#: Provider call status → (outcome kind, what to tell the person).
ENDED_STATUSES: dict[str, tuple[OutcomeKind, str]] = {
    "completed": (OutcomeKind.ERROR, "The call ended but its result was lost in a restart; I'll call again."),
    "busy": (OutcomeKind.BUSY, "The line was busy."),
    "no-answer": (OutcomeKind.NO_ANSWER, "Nobody answered."),
    "failed": (OutcomeKind.FAILED, "The call could not be connected."),
    "canceled": (OutcomeKind.ERROR, "The call was cancelled before it was answered; I'll call again."),
}


class CallReconciler:
    """Finds and reconciles orphaned jobs (see module docstring).

    Args:
        store: the job queue.
        placer: asks the provider what became of a call.
        notifier: re-sends results that never reached the chat.
        outcomes: settles or gives back the jobs it reconciles.
        clock: what "now" is.
        owner: the dispatcher's lease name.
        lease_seconds: length of an adopted lease.
        placing: the jobs whose call this process is creating right now (left alone).
        hang_up: ends a call, logging rather than raising a provider failure.
    """

    def __init__(
        self,
        store: JobStore,
        placer: CallPlacer,
        notifier: Notifier,
        outcomes: Outcomes,
        *,
        clock: Clock,
        owner: str,
        lease_seconds: float,
        placing: Callable[[], Collection[str]],
        hang_up: Callable[[str], Awaitable[None]],
    ) -> None:
        self._store = store
        self._placer = placer
        self._notifier = notifier
        self._outcomes = outcomes
        self._clock = clock
        self._owner = owner
        self._lease_seconds = lease_seconds
        self._placing = placing
        self._hang_up = hang_up

    async def recover(self, *, startup: bool) -> None:
        """Reconcile every job whose lease expired; at start-up also this owner's old jobs.

        Args:
            startup: this process just started, so jobs leased under its own
                owner name belong to a previous run, not to live sessions here.
        """
        store, owner = self._store, self._owner
        placing = self._placing()
        expired = [j for j in await store.expired_leases() if j.id not in placing]
        seen = set()
        for job in expired:
            seen.add(job.id)
            adopted = await store.take_over(job.id, owner, self._lease_seconds)
            if adopted is None:
                continue  # another dispatcher won the race
            live_here = job.lease_owner == owner and not startup
            await self._reconcile_safely(adopted, live_here=live_here)
        if not startup:
            return
        active = await store.list(states=(JobState.DIALING, JobState.IN_CALL), limit=10_000)
        for job in active:
            if job.lease_owner != owner or job.id in seen:
                continue
            try:
                job = await store.renew_lease(job.id, owner, self._lease_seconds)
            except LeaseLost:
                continue
            await self._reconcile_safely(job, live_here=False)

    async def undelivered_results(self) -> list[Job]:
        """Finished errands whose result never reached the chat (the process died in between).

        Outcomes are stored before the chat is told, so a crash in between leaves a
        finished errand with no result in its thread. Taken at start-up, before
        recovery finishes (and notifies) anything itself.
        """
        since = self._clock.now() - REDELIVER_WITHIN
        finished = tuple(s for s in FINAL_STATES if s is not JobState.CANCELLED)
        jobs = await self._store.list(states=finished, limit=500)
        return [j for j in jobs if j.updated_at >= since and j.result_pending]

    async def redeliver(self, jobs: list[Job]) -> None:
        """Post those results now (``notify`` is idempotent: a repeat is harmless)."""
        for job in jobs:
            log.info("errand %s finished without its result reaching the chat: sending it now", job.id)
            turns = await self._store.turns(job.id, job.attempts)
            await self._notifier.notify(job, JobEvent.FINISHED, turns)

    async def _reconcile_safely(self, job: Job, *, live_here: bool) -> None:
        try:
            await self.reconcile(job, live_here=live_here)
        except (JobNotFound, LeaseLost) as e:
            log.info("recovery of errand %s skipped: %s", job.id, e)

    async def reconcile(self, job: Job, *, live_here: bool) -> None:
        """Decide the fate of one adopted job from the provider's view of its call."""
        outcomes = self._outcomes
        call_sid = job.current_call_sid
        if call_sid is None and job.state is JobState.DIALING:
            found = await find_lost_call(self._store, self._placer, job)
            if not found.known:
                return  # keep the (renewed) lease and look again when it expires
            if found.call_sid is not None:
                job = await self._store.set_call_sid(job.id, found.call_sid)
                call_sid = found.call_sid
        if call_sid is None:
            if job.state is JobState.DIALING:
                await outcomes.requeue_uncounted(job, "recovered: the call was never created", notify=True)
            else:
                outcome = CallOutcome(OutcomeKind.ERROR, summary="The call was lost; I'll call again.")
                await outcomes.settle(job.id, outcome, reason="recovered: in call without a call id")
            return
        try:
            status = await self._placer.call_status(call_sid)
        except ProviderError as e:
            # Cannot tell whether the call is live: keep the (renewed) lease and
            # look again when it expires rather than risk a second call.
            log.warning("status of call %s unknown (%s); will check again", call_sid, e)
            return
        if status in LIVE_STATUSES:
            if live_here:
                await self._store.renew_lease(job.id, self._owner, self._lease_seconds)
                return
            await self._hang_up(call_sid)
            outcome = CallOutcome(
                OutcomeKind.ERROR,
                summary="The call was interrupted by a restart; I'll call again.",
                call_sid=call_sid,
            )
            await outcomes.settle(job.id, outcome, reason=f"recovered: call was {status}, hung up")
            return
        kind, summary = ENDED_STATUSES.get(
            status, (OutcomeKind.ERROR, f"The call ended in an unknown state ({status}); I'll call again.")
        )
        outcome = CallOutcome(kind, summary=summary, call_sid=call_sid)
        await outcomes.settle(job.id, outcome, reason=f"recovered: provider says call {status}")
