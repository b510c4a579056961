"""The errand desk: what the chat front ends may do with errands.

Kept apart from the dispatcher's loop because it is about people (limits,
ownership, polite refusals) rather than timing. ``Dispatcher`` delegates its
``storage.ports.ErrandDesk`` methods here.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from concierge.dispatcher_outcomes import current_call_sid
from storage.errors import IllegalTransition, IntakeError, JobNotFound
from storage.models import CallRequest, Job, JobState
from storage.ports import JobEvent

if TYPE_CHECKING:
    from concierge.dispatcher import Dispatcher

_UNFINISHED = (JobState.QUEUED, JobState.DIALING, JobState.IN_CALL)


class Desk:
    """Submit / cancel / answer on behalf of one dispatcher."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._d = dispatcher

    async def plan(self, request: CallRequest) -> datetime:
        """When the call would be placed if submitted now (UTC).

        Raises:
            IntakeError: the opening hours are invalid or never open.
        """
        try:
            return self._d.hours_for(request).next_open(self._d.clock.now())
        except ValueError as e:
            raise IntakeError(f"I can't work out when {request.business_name} is open: {e}") from e

    async def submit(self, request: CallRequest) -> Job:
        """Queue an errand for the next opening time and wake the loop.

        Raises:
            IntakeError: a per-user limit is reached or the hours are unusable.
        """
        d = self._d
        user = request.origin.user_id
        # Check-then-enqueue per person in one critical section: chat front ends run
        # handlers concurrently, and two confirms at once must not both pass the cap.
        async with d.locks.hold(f"user:{request.origin.platform}:{user}"):
            return await self._submit_checked(request, user)

    async def _submit_checked(self, request: CallRequest, user: str) -> Job:
        d = self._d
        unfinished = await d.store.list(states=_UNFINISHED, user_id=user, limit=d.max_queued_per_user + 1)
        if len(unfinished) >= d.max_queued_per_user:
            raise IntakeError(
                f"You already have {len(unfinished)} errands waiting or in progress, which is the limit "
                f"({d.max_queued_per_user}). Please wait for one to finish or cancel one first."
            )
        hour_ago = d.clock.now() - timedelta(hours=1)
        recent = await d.store.list(user_id=user, limit=d.errands_per_user_per_hour)
        if sum(1 for j in recent if j.created_at > hour_ago) >= d.errands_per_user_per_hour:
            raise IntakeError(
                f"You've asked for {d.errands_per_user_per_hour} errands in the last hour, which is the "
                "limit. Please try again a little later."
            )
        due = await self.plan(request)
        job = await d.store.enqueue(request, due_at=due, max_attempts=d.max_attempts)
        await d.notifier.notify(job, JobEvent.QUEUED)
        d.wake()
        return job

    async def cancel(self, job_id: str, user_id: str) -> Job:
        """Cancel the person's errand; a call still ringing is hung up.

        Raises:
            JobNotFound: unknown id or not this person's errand.
            IllegalTransition: already on the phone or finished.
        """
        d = self._d
        job = await self._own_job(job_id, user_id)
        async with d.locks.hold(job_id):
            cancelled = await d.store.cancel(job_id)
        call_sid = current_call_sid(job)
        if job.state is JobState.DIALING and call_sid:
            await d.hang_up_quietly(call_sid)
        await d.notifier.notify(cancelled, JobEvent.CANCELLED)
        d.wake()
        return cancelled

    async def answer(self, job_id: str, user_id: str, answer: str) -> Job:
        """Re-queue a needs_user errand with the person's answer.

        ``CallRequest`` is immutable in the store, so the answer is kept in
        ``job.meta["user_answers"]`` (question and answer) for the next call's
        conversation. The follow-up call gets a fresh retry budget.

        Raises:
            JobNotFound: unknown id or not this person's errand.
            IllegalTransition: the errand is not waiting for an answer.
        """
        d = self._d
        job = await self._own_job(job_id, user_id)
        if job.state is not JobState.NEEDS_USER:
            raise IllegalTransition(f"errand {job_id} is not waiting for an answer (it is {job.state})")
        due = d.next_opening(job.request, d.clock.now())
        if due is None:
            raise IllegalTransition(f"errand {job_id}: the business never opens")
        question = job.outcome.question if job.outcome else None
        answers = [*job.meta.get("user_answers", []), {"question": question, "answer": answer}]
        await d.store.set_meta(job_id, user_answers=answers, uncounted_attempts=job.attempts)
        job = await d.store.transition(
            job_id, JobState.QUEUED, reason="person answered the question", next_attempt_at=due
        )
        await d.notifier.notify(job, JobEvent.QUEUED)
        d.wake()
        return job

    async def _own_job(self, job_id: str, user_id: str) -> Job:
        job = await self._d.store.get(job_id)
        if job.request.origin.user_id != user_id:
            raise JobNotFound(f"no errand with id {job_id!r}")  # never confirm other people's ids
        return job
