"""Interfaces between layers, as structural protocols.

They live on the ground floor so that a lower layer (telephony, bot) can
implement what a higher one (the dispatcher in ``concierge``) drives without
importing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple, Protocol

from storage.models import CallOutcome, CallRequest, Job, Turn


class FoundCall(NamedTuple):
    """A call the provider knows of (one row of its calls list)."""

    sid: str
    status: str
    start_time: datetime | None  # None while the call is still queued (not yet dialling)


class CallPlacer(Protocol):
    """Places and controls phone calls (``telephony.twilio_rest`` implements it)."""

    async def place_call(self, job: Job) -> str:
        """Start dialling the job's business; returns the provider call id (CallSid).

        Raises:
            storage.errors.ProviderError: ``retryable`` says whether to try again later.
        """
        ...

    async def find_calls(self, to: str, *, started_after: datetime) -> list[FoundCall]:
        """Our calls (from our caller id) to ``to`` that began, or are queued, since ``started_after``.

        How the dispatcher learns whether a create whose answer was lost (timeout,
        transport error, crash) placed a call after all, before it would dial again.

        Raises:
            storage.errors.ProviderError: the provider could not be asked (unknown, not "none").
        """
        ...

    async def call_status(self, call_sid: str) -> str:
        """The provider's current status of a call (Twilio values: queued, ringing,
        in-progress, completed, busy, failed, no-answer, canceled). Used to reconcile
        jobs whose dispatcher crashed mid-call before anything is redialled."""
        ...

    async def hang_up(self, call_sid: str) -> None:
        """End a live call."""
        ...


class OutcomeSink(Protocol):
    """Receives call results (the dispatcher implements it; telephony calls it)."""

    async def call_answered(self, job_id: str, call_sid: str) -> None:
        """The callee picked up: the job moves dialing → in_call."""
        ...

    async def report_outcome(
        self, job_id: str, outcome: CallOutcome, transcript: Sequence[Turn] = ()
    ) -> None:
        """A call attempt ended. Idempotent: a second report for a job that is no
        longer dialing/in_call is ignored."""
        ...


class JobEvent(StrEnum):
    """What happened to an errand, for the person's chat."""

    QUEUED = "queued"  # accepted; job.next_attempt_at is the planned call time
    CALLING = "calling"  # dialling now
    IN_CALL = "in_call"  # the business picked up (or came back after a hold)
    CALLED_BACK = "called_back"  # the business called us back; the errand is in that call
    ON_HOLD = "on_hold"  # the business put the call on hold; job.meta.on_hold_since is when
    RETRY_PLANNED = "retry_planned"  # attempt failed retryably; job.next_attempt_at is the next try
    FINISHED = "finished"  # final state; job.outcome has the details
    CANCELLED = "cancelled"


class Notifier(Protocol):
    """Tells the person what is happening (``bot.notify`` implements it for both chats)."""

    async def notify(self, job: Job, event: JobEvent, transcript: Sequence[Turn] = ()) -> None:
        """Post or edit the progress message for ``job`` in its origin thread.

        Must not raise on delivery failure: it retries and, at worst, logs.
        """
        ...


class ErrandDesk(Protocol):
    """What the chat front ends may do with errands (the dispatcher implements it)."""

    async def plan(self, request: CallRequest) -> datetime:
        """When the call would be placed if submitted now (next opening, UTC)."""
        ...

    async def submit(self, request: CallRequest) -> Job:
        """Queue an errand (after the person confirmed it) and wake the dispatcher.

        Raises:
            storage.errors.IntakeError: refused by a limit (per-user rate, queue size);
                the message is a user-facing reply.
        """
        ...

    async def cancel(self, job_id: str, user_id: str) -> Job:
        """Cancel the person's own errand.

        Raises:
            storage.errors.JobNotFound: unknown id, or not this user's errand.
            storage.errors.IllegalTransition: already on the phone or finished.
        """
        ...

    async def answer(self, job_id: str, user_id: str, answer: str) -> Job:
        """The person answered a needs_user question: re-queue with the answer in the notes."""
        ...

    async def jobs_for(self, user_id: str, *, limit: int = 10) -> list[Job]:
        """The person's most recent errands, newest first."""
        ...


class LiveAnswer(StrEnum):
    """What became of a person's answer to a question asked during a live call."""

    TAKEN = "taken"  # the call was waiting for it: the assistant has it now
    NOT_OWNER = "not_owner"  # only the errand's owner may answer
    NONE_OPEN = "none_open"  # no call is waiting (expired or never asked): the answer is for the next call


class LiveQuestions(Protocol):
    """Questions a live call is waiting on (the app implements it; the chat flow answers them).

    Kept in the database: the call may run on another node than the one the answer reaches.
    """

    async def answer(self, job_id: str, user_id: str, answer: str) -> LiveAnswer:
        """Hand ``answer`` to the call waiting on errand ``job_id``, if ``user_id`` owns it."""
        ...

    async def open_for(self, user_id: str) -> str | None:
        """The errand id whose live call waits on this person's answer, if any (for free text)."""
        ...
