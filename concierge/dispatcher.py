"""The dispatcher: the business-hours timer between the queue and the phone.

One loop claims due errands (within the concurrency cap), places their calls
and then *sleeps on the clock* until the next errand falls due, a lease runs
out, or something wakes it (a new errand, a cancel, a call result). It never
polls on a fixed tick.

Safety rules enforced here: no call outside the business's hours
in its own zone (checked immediately before every ``place_call``), a hard cap
on concurrent calls, one live call per number and a daily cap per number (all
three inside ``JobStore.claim``'s transaction, so several dispatchers on one
database hold them together), and no blind redial after a crash — jobs left mid-call
are reconciled against the provider's call status first.

The dispatcher composes the pieces and owns the loop; each piece gets only the
collaborators it needs: ``concierge.desk`` (what people may do),
``concierge.outcomes`` (what an attempt's end means), ``concierge.recovery``
(orphaned calls) and ``concierge.schedule`` (opening hours).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Any

from bot.phone import DestinationPolicy, check_destination
from concierge.calling_window import DailyWindow
from concierge.clock import Clock
from concierge.desk import Desk
from concierge.locks import JobLocks
from concierge.lost_calls import find_lost_call
from concierge.outcomes import OnBooked, Outcomes
from concierge.recovery import CallReconciler
from concierge.schedule import Schedule
from storage.errors import (
    JobNotFound,
    ProviderConnectionError,
    ProviderError,
    ProviderTimeoutError,
    user_message,
)
from storage.jobs import ClaimLimits, JobStore
from storage.models import Booking, CallOutcome, CallRequest, Job, JobState, OutcomeKind, Turn
from storage.numbers import DoNotCall
from storage.ports import CallPlacer, JobEvent, Notifier
from storage.retry import Backoff
from storage.sql import DatabaseUnavailable

log = logging.getLogger(__name__)

__all__ = ["Dispatcher", "OnBooked"]

#: A claimed job with no free capacity and nothing else to wait for: guard
#: against a hot loop if the store and dispatcher clocks ever disagree.
_SAFETY_PARK = timedelta(seconds=1)
#: How the loop waits out a database outage: 0.5 s doubling to 15 s, for as long as it lasts.
DATABASE_OUTAGE_RETRY = Backoff(max_attempts=1 << 30, base_delay=0.5, max_delay=15.0)
#: How far an errand is put back when its number is on the phone with another errand.
NUMBER_BUSY_RETRY = timedelta(minutes=5)


class Dispatcher:
    """Queue timer, call placer driver, and the desk the chat front ends talk to.

    Implements ``storage.ports.OutcomeSink`` (telephony reports results here)
    and ``storage.ports.ErrandDesk`` (the bots submit and cancel here).

    Args:
        store: the job queue; it must use the same clock as ``clock``.
        placer: places, inspects and hangs up calls.
        notifier: tells the person what happens.
        owner: this dispatcher's lease name (stable across restarts of one
            deployment, so a restart recognises its own unfinished calls).
        clock: wall time and the interruptible sleep.
        default_hours: opening-hours spec used when a request has none.
        max_concurrent: hard cap on calls in dialing/in_call (across every dispatcher
            sharing the database).
        max_calls_per_number_per_day: calls one number may receive in any 24 hours,
            across all people and errands.
        max_attempts: calls per errand before giving up.
        lease_seconds: claim lease; must exceed the longest possible call.
        retry_backoff: first retry delay, doubled on each further attempt.
        max_queued_per_user: unfinished errands one person may have.
        errands_per_user_per_hour: submissions one person may make per hour.
        on_booked: creates the calendar event and returns the outcome with
            ``event_link``; a failure there never loses the booking.
        callee_window: the callee's local calling hours (``CALLEE_LOCAL_HOURS``), checked
            with the business's hours in planning and right before every dial.
        do_not_call: numbers never to dial (checked right before every dial).
        destinations: countries and number types that may be dialled (checked right
            before every dial, since the settings may change while an errand waits).
        queue_poll: the longest the loop sleeps without looking at the queue (``None``: until
            woken or a known deadline). Other nodes sharing the database cannot wake this one:
            a place freed under the cap by another node's call, an errand queued there, a dead
            node's calls whose leases will run out are seen on the next look.
    """

    def __init__(
        self,
        store: JobStore,
        placer: CallPlacer,
        notifier: Notifier,
        *,
        owner: str,
        clock: Clock,
        default_hours: str,
        max_concurrent: int,
        max_attempts: int,
        lease_seconds: float,
        retry_backoff: timedelta,
        max_queued_per_user: int = 10,
        errands_per_user_per_hour: int = 20,
        max_calls_per_number_per_day: int = 3,
        on_booked: OnBooked | None = None,
        callee_window: DailyWindow | None = None,
        do_not_call: DoNotCall | None = None,
        destinations: DestinationPolicy | None = None,
        queue_poll: timedelta | None = None,
    ) -> None:
        self.store = store
        self.placer = placer
        self.notifier = notifier
        self.owner = owner
        self.clock = clock
        self.max_concurrent = max_concurrent
        self.lease_seconds = lease_seconds
        self.queue_poll = queue_poll
        self.claim_limits = ClaimLimits(
            batch=max_concurrent,
            max_active=max_concurrent,
            one_call_per_number=True,
            calls_per_number_per_day=max_calls_per_number_per_day,
            number_busy_retry=NUMBER_BUSY_RETRY,
        )
        self._wake = asyncio.Event()
        self._stopping = False
        self._running = False
        self._parked = False
        self._parked_until: datetime | None = None
        self._change = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._placing: set[str] = set()
        self.locks = JobLocks()
        self.schedule = Schedule(default_hours, clock, callee_window)
        self.do_not_call = do_not_call
        self.destinations = destinations
        self.outcomes = Outcomes(
            store,
            notifier,
            schedule=self.schedule,
            clock=clock,
            locks=self.locks,
            owner=owner,
            retry_backoff=retry_backoff,
            on_booked=on_booked,
            wake=self.wake,
            do_not_call=do_not_call,
        )
        self._reconciler = CallReconciler(
            store,
            placer,
            notifier,
            self.outcomes,
            clock=clock,
            owner=owner,
            lease_seconds=lease_seconds,
            placing=lambda: self._placing,
            hang_up=self.hang_up_quietly,
        )
        self._desk = Desk(
            store,
            notifier,
            schedule=self.schedule,
            clock=clock,
            locks=self.locks,
            max_attempts=max_attempts,
            max_queued_per_user=max_queued_per_user,
            errands_per_user_per_hour=errands_per_user_per_hour,
            hang_up=self.hang_up_quietly,
            wake=self.wake,
        )

    # -- ErrandDesk (see concierge.desk) -------------------------------------

    async def plan(self, request: CallRequest) -> datetime:
        """When the call would be placed if submitted now (UTC); IntakeError if never."""
        return await self._desk.plan(request)

    async def submit(self, request: CallRequest) -> Job:
        """Queue an errand for the next opening time (IntakeError on a limit) and wake the loop."""
        return await self._desk.submit(request)

    async def cancel(self, job_id: str, user_id: str) -> Job:
        """Cancel the person's errand; a call still ringing is hung up."""
        return await self._desk.cancel(job_id, user_id)

    async def answer(self, job_id: str, user_id: str, answer: str) -> Job:
        """Re-queue a needs_user errand with the person's answer."""
        return await self._desk.answer(job_id, user_id, answer)

    async def jobs_for(self, user_id: str, *, limit: int = 10) -> list[Job]:
        """The person's most recent errands, newest first."""
        return await self.store.list(user_id=user_id, limit=limit)

    # -- OutcomeSink -------------------------------------------------------

    async def call_answered(self, job_id: str, call_sid: str) -> None:
        """dialing → in_call; repeats and late callbacks are ignored."""
        async with self.locks.hold(job_id):
            try:
                job = await self.store.get(job_id)
            except JobNotFound:
                log.warning("answered callback for unknown errand %s", job_id)
                return
            if job.state is not JobState.DIALING:
                return
            if job.current_call_sid is None:  # the callback beat set_call_sid
                await self.store.set_call_sid(job_id, call_sid)
            if job.meta.on_hold_since is not None:  # an earlier call ended on hold
                await self.store.update_meta(job_id, on_hold_since=None)
            job = await self.store.transition(job_id, JobState.IN_CALL, reason="call answered")
        await self.notifier.notify(job, JobEvent.IN_CALL)

    async def call_received(self, phone: str, call_sid: str, token_sha256: str) -> Job | None:
        """The business at ``phone`` called us back: its open errand (if any) is now in this call.

        The errand moves to in_call under this dispatcher's lease (``JobStore.receive_call``),
        so it is never dialled while the call is live, and the outcome is settled like an
        outbound call's. Callee-local hours and do-not-call do not apply: they govern calls we
        place, and this one the business placed. ``None``: no open errand to that number.
        """
        job = await self.store.receive_call(
            phone, call_sid, owner=self.owner, lease_seconds=self.lease_seconds, token_sha256=token_sha256
        )
        if job is None:
            return None
        if job.meta.on_hold_since is not None:  # an earlier call ended on hold
            job = await self.store.update_meta(job.id, on_hold_since=None)
        log.info("errand %s: %s called back (call %s)", job.id, phone, call_sid)
        await self.notifier.notify(job, JobEvent.CALLED_BACK)
        self.wake()  # the lease expiry is a deadline the loop must know
        return job

    async def call_on_hold(self, job_id: str, on_hold: bool) -> None:
        """The live call went on hold (``True``) or the business came back (``False``).

        The chat's progress message says "On hold since 14:02" (this clock's time, shown in the
        person's zone), then goes back to the in-call text. Only a change is shown — a repeat
        changes nothing, so each hold costs two edits at most — and only while the errand is
        in a call. The person is told with the errand's lock held, so a call that ends meanwhile
        posts its result after this edit, never under it.
        """
        async with self.locks.hold(job_id):
            try:
                job = await self.store.get(job_id)
            except JobNotFound:
                log.warning("hold report for unknown errand %s", job_id)
                return
            if job.state is not JobState.IN_CALL or (job.meta.on_hold_since is not None) == on_hold:
                return
            job = await self.store.update_meta(job_id, on_hold_since=self.clock.now() if on_hold else None)
            await self.notifier.notify(job, JobEvent.ON_HOLD if on_hold else JobEvent.IN_CALL)

    async def booking_confirmed(self, job_id: str, booking: Booking) -> None:
        """The business confirmed ``booking`` on the phone: store it before the call ends.

        If the call then breaks (or this process dies) the attempt still ends booked —
        see ``Outcomes.settle`` — instead of phoning the business to book it again.
        """
        job = await self.store.get(job_id)
        if job.state.is_active:
            await self.store.update_meta(job_id, confirmed_booking=booking, confirmed_attempt=job.attempts)

    async def report_outcome(
        self, job_id: str, outcome: CallOutcome, transcript: Sequence[Turn] = ()
    ) -> None:
        """Record how a call attempt ended (idempotent) and decide what comes next."""
        await self.outcomes.settle(job_id, outcome, transcript)

    # -- the loop ----------------------------------------------------------

    def wake(self) -> None:
        """Make the loop look at the queue now (new errand, cancel, result)."""
        self._wake.set()
        self._changed()

    def stop(self) -> None:
        """Ask :meth:`run` to finish; in-flight call placements are awaited, not cut off."""
        self._stopping = True
        self.wake()

    async def recover(self) -> None:
        """Adopt and reconcile jobs left mid-call by a previous run or a dead dispatcher."""
        await self._reconciler.recover(startup=True)

    async def run(self) -> None:
        """Recover, then dispatch until :meth:`stop`. Owns every task it starts."""
        if self._running:
            raise RuntimeError("Dispatcher.run() is already running")
        self._running, self._stopping = True, False
        try:
            undelivered = await self._reconciler.undelivered_results()
            await self.recover()
            # Results a previous run stored but never posted: in the background (owned by
            # this loop), so a chat outage cannot hold up dialling.
            self._own(self._reconciler.redeliver(undelivered), "redeliver-results")
            outage = 0  # failed steps in a row while the database is unreachable
            while not self._stopping:
                self._wake.clear()
                try:
                    again, until = await self._step()
                except DatabaseUnavailable as e:
                    # A networked database restarting or failing over: wait and go on, never die.
                    outage += 1
                    wait = DATABASE_OUTAGE_RETRY.delay(outage, e) or DATABASE_OUTAGE_RETRY.max_delay
                    log.warning("the database is unavailable (%s); trying again in %.1f s", e, wait)
                    await self._park(self.clock.now() + timedelta(seconds=wait))
                    continue
                outage = 0
                if again or self._stopping:
                    continue
                await self._park(until)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            for task in self._tasks:
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks)
            self._running = False
            self._changed()

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is looping (tests that need a stack which never dials stop it)."""
        return self._running

    @property
    def sleeping_until(self) -> datetime | None:
        """The deadline the parked loop sleeps until (``None``: until woken); for tests and the demo."""
        return self._parked_until if self._parked else None

    async def wait_idle(self) -> None:
        """Wait until the loop sleeps with nothing in flight and nothing due (tests, demo)."""
        while True:
            changed = self._change
            if self._is_idle():
                return
            await changed.wait()

    async def _step(self) -> tuple[bool, datetime | None]:
        """One pass: sweep expired leases, claim and start due calls.

        Returns whether to go round again at once (more may be due), and
        otherwise the instant to sleep until (``None``: until woken).
        """
        await self._reconciler.recover(startup=False)
        claim = await self.store.claim(
            self.owner,
            lease_seconds=self.lease_seconds,
            limits=self.claim_limits,
            plan=self.schedule.next_opening,
        )
        for job in claim.jobs:
            self._start_placing(job)
        for deferral in claim.deferred:
            # Re-planned for a per-number limit: the person sees the new time and why.
            job = deferral.job
            self._own(self.notifier.notify(job, JobEvent.QUEUED), f"notify-deferred-{job.id}")
        deadlines = [await self._next_lease_expiry()]
        if not claim.at_cap:  # at the cap, an outcome or a cancel wakes us when a slot frees
            deadlines.append(await self.store.next_due_at())
        pending = [d for d in deadlines if d is not None]
        if self.queue_poll is not None:
            pending.append(self.clock.now() + self.queue_poll)
        if not pending:
            return False, None
        until, now = min(pending), self.clock.now()
        if until <= now:
            return (True, None) if claim.jobs or claim.deferred else (False, now + _SAFETY_PARK)
        return False, until

    async def _next_lease_expiry(self) -> datetime | None:
        active = await self.store.list(states=(JobState.DIALING, JobState.IN_CALL), limit=10_000)
        expiries = [j.lease_expires_at for j in active if j.lease_expires_at and j.id not in self._placing]
        return min(expiries) if expiries else None

    async def _park(self, until: datetime | None) -> None:
        self._parked, self._parked_until = True, until
        self._changed()
        try:
            await self.clock.wait(self._wake, until)
        finally:
            self._parked = False

    def _is_idle(self) -> bool:
        return (
            self._parked
            and not self._wake.is_set()
            and not self._placing
            and (self._parked_until is None or self._parked_until > self.clock.now())
        )

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    # -- placing calls -----------------------------------------------------

    def _start_placing(self, job: Job) -> None:
        self._placing.add(job.id)
        self._own(self._place(job), f"place-call-{job.id}")

    def _own(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` as a task of this loop (awaited by :meth:`run` before it returns)."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _place(self, job: Job) -> None:
        try:
            if await self._defer_if_closed(job):
                return
            await self.notifier.notify(job, JobEvent.CALLING)
            if await self._refuse_destination(job):
                return
            if await self._defer_if_closed(job):
                return
            # Nothing may await between the hours check above and this call.
            try:
                call_sid = await self.placer.place_call(job)
            except (ProviderTimeoutError, ProviderConnectionError) as e:
                # No definite answer: the call may exist. Never dial again before knowing.
                log.warning("placing the call for errand %s got no answer: %s", job.id, e)
                await self._after_lost_answer(job)
                return
            except ProviderError as e:
                log.warning("placing the call for errand %s failed: %s", job.id, e)
                kind = OutcomeKind.ERROR if e.retryable else OutcomeKind.FAILED
                outcome = CallOutcome(kind, summary=f"I couldn't place the call ({user_message(e)}).")
                await self.outcomes.settle(job.id, outcome, reason=f"call not placed: {e}")
                return
            current = await self.store.set_call_sid(job.id, call_sid)
            if not current.state.is_active:  # cancelled while the call was being created
                await self.hang_up_quietly(call_sid)
        except Exception:
            # A bug or a database error here must not kill the loop; the lease
            # expires and the sweep reconciles the job with the provider.
            log.exception("placing the call for errand %s failed", job.id)
        finally:
            self._placing.discard(job.id)
            self.wake()  # the job's lease expiry is now a deadline the loop must know

    async def _after_lost_answer(self, job: Job) -> None:
        """The create's answer was lost: adopt the call it placed, or give the claim back."""
        found = await find_lost_call(self.store, self.placer, job)
        if not found.known:
            return  # keep the lease: when it runs out, recovery looks again (never a blind redial)
        if found.call_sid is None:
            await self.outcomes.requeue_uncounted(
                job, "call not placed: the create got no answer", notify=True, backoff=True
            )
            return
        current = await self.store.get(job.id)
        if current.current_call_sid is None:
            current = await self.store.set_call_sid(job.id, found.call_sid)
        if not current.state.is_active:  # cancelled meanwhile
            await self.hang_up_quietly(found.call_sid)

    async def _refuse_destination(self, job: Job) -> bool:
        """End the errand, with no call, if its number is on the do-not-call list or not dialable."""
        phone = job.request.phone
        refusal = None
        if self.do_not_call is not None and await self.do_not_call.contains(phone):
            refusal = f"I won't call {phone}: it is on the do-not-call list."
        elif self.destinations is not None:
            refusal = check_destination(phone, self.destinations)
        if refusal is None:
            return False
        outcome = CallOutcome(OutcomeKind.FAILED, summary=refusal)
        await self.outcomes.settle(job.id, outcome, reason=f"not dialled: {refusal}")
        return True

    async def _defer_if_closed(self, job: Job) -> bool:
        """Put a claimed job back if its business is closed right now (no call, no attempt used)."""
        if self.schedule.is_open_now(job.request):
            return False
        await self.outcomes.requeue_uncounted(job, "business closed now; waiting for opening time")
        return True

    @property
    def placing_ids(self) -> frozenset[str]:
        """Jobs whose call this process is creating right now (recovery leaves them alone)."""
        return frozenset(self._placing)

    async def hang_up_quietly(self, call_sid: str) -> None:
        """Hang up; a provider failure is logged, not raised (the call may already be over)."""
        try:
            await self.placer.hang_up(call_sid)
        except ProviderError as e:
            log.warning("hanging up call %s failed: %s", call_sid, e)
