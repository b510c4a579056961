"""The errand desk: what the chat front ends may do with errands.

Kept apart from the dispatcher's loop because it is about people (limits,
ownership, polite refusals) rather than timing. ``Dispatcher`` delegates its
``storage.ports.ErrandDesk`` methods here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from concierge.clock import Clock
from concierge.locks import JobLocks
from concierge.schedule import Schedule
from storage.errors import IllegalTransition, IntakeError, JobNotFound, UserLimitReached
from storage.jobs import JobStore
from storage.models import CallRequest, Job, JobState, UserAnswer
from storage.ports import JobEvent, Notifier


class Desk:
    """Submit / cancel / answer on behalf of the people in the chats.

    Args:
        store: the job queue.
        notifier: tells the person what happened.
        schedule: when the business is open (an errand is planned for its next opening).
        clock: what "now" is.
        locks: the per-job locks shared with everything else that changes jobs.
        max_attempts: calls per errand before giving up.
        max_queued_per_user: unfinished errands one person may have.
        errands_per_user_per_hour: submissions one person may make per hour.
        hang_up: ends a call, logging rather than raising a provider failure.
        wake: asks the dispatcher's loop to look at the queue again.
    """

    def __init__(
        self,
        store: JobStore,
        notifier: Notifier,
        *,
        schedule: Schedule,
        clock: Clock,
        locks: JobLocks,
        max_attempts: int,
        max_queued_per_user: int,
        errands_per_user_per_hour: int,
        hang_up: Callable[[str], Awaitable[None]],
        wake: Callable[[], None],
    ) -> None:
        self._store = store
        self._notifier = notifier
        self._schedule = schedule
        self._clock = clock
        self._locks = locks
        self._max_attempts = max_attempts
        self._max_queued_per_user = max_queued_per_user
        self._errands_per_user_per_hour = errands_per_user_per_hour
        self._hang_up = hang_up
        self._wake = wake

    async def plan(self, request: CallRequest) -> datetime:
        """When the call would be placed if submitted now (UTC).

        Raises:
            IntakeError: the opening hours are invalid or never open.
        """
        try:
            self._schedule.hours_for(request)
        except ValueError as e:
            raise IntakeError(f"I can't work out when {request.business_name} is open: {e}") from e
        due = self._schedule.next_opening(request, self._clock.now())
        if due is None:
            raise IntakeError(
                f"I can't find a time when {request.business_name} is open and it is daytime where"
                f" {request.phone} may ring, so I can't call."
            )
        return due

    async def submit(self, request: CallRequest) -> Job:
        """Queue an errand for the next opening time and wake the loop.

        Raises:
            IntakeError: a per-user limit is reached or the hours are unusable.
        """
        due = await self.plan(request)
        try:
            # Limits and insert in one store transaction: two confirms at once (two chat
            # handlers, two server processes) cannot both take the last free place.
            job = await self._store.enqueue_checked(
                request,
                due_at=due,
                max_attempts=self._max_attempts,
                max_unfinished=self._max_queued_per_user,
                max_per_hour=self._errands_per_user_per_hour,
            )
        except UserLimitReached as e:
            raise IntakeError(_limit_reply(e)) from e
        await self._notifier.notify(job, JobEvent.QUEUED)
        self._wake()
        return job

    async def cancel(self, job_id: str, user_id: str) -> Job:
        """Cancel the person's errand; a call still ringing is hung up.

        Raises:
            JobNotFound: unknown id or not this person's errand.
            IllegalTransition: already on the phone or finished.
        """
        job = await self._own_job(job_id, user_id)
        async with self._locks.hold(job_id):
            cancelled = await self._store.cancel(job_id)
        call_sid = job.current_call_sid
        if job.state is JobState.DIALING and call_sid:
            await self._hang_up(call_sid)
        await self._notifier.notify(cancelled, JobEvent.CANCELLED)
        self._wake()
        return cancelled

    async def answer(self, job_id: str, user_id: str, answer: str) -> Job:
        """Re-queue a needs_user errand with the person's answer.

        ``CallRequest`` is immutable in the store, so the answer is kept in
        ``JobMeta.user_answers`` (question and answer) for the next call's
        conversation. The follow-up call gets a fresh retry budget.

        Raises:
            JobNotFound: unknown id or not this person's errand.
            IllegalTransition: the errand is not waiting for an answer.
        """
        store = self._store
        job = await self._own_job(job_id, user_id)
        if job.state is not JobState.NEEDS_USER:
            raise IllegalTransition(f"errand {job_id} is not waiting for an answer (it is {job.state})")
        due = self._schedule.next_opening(job.request, self._clock.now())
        if due is None:
            raise IllegalTransition(f"errand {job_id}: the business never opens")
        question = job.outcome.question if job.outcome else None
        answers = (*job.meta.user_answers, UserAnswer(question, answer))
        await store.update_meta(job_id, user_answers=answers, uncounted_attempts=job.attempts)
        job = await store.transition(
            job_id, JobState.QUEUED, reason="person answered the question", next_attempt_at=due
        )
        await self._notifier.notify(job, JobEvent.QUEUED)
        self._wake()
        return job

    async def _own_job(self, job_id: str, user_id: str) -> Job:
        job = await self._store.get(job_id)
        if job.request.origin.user_id != user_id:
            raise JobNotFound(f"no errand with id {job_id!r}")  # never confirm other people's ids
        return job


def _limit_reply(e: UserLimitReached) -> str:
    if e.limit == "unfinished":
        return (
            f"You already have {e.count} errands waiting or in progress, which is the limit "
            f"({e.allowed}). Please wait for one to finish or cancel one first."
        )
    return (
        f"You've asked for {e.allowed} errands in the last hour, which is the "
        "limit. Please try again a little later."
    )
