"""Questions a live call is waiting on, answered from the errand's chat (``storage.ports.LiveQuestions``).

The agent gets ``PendingQuestions.asker(job)``: an ``ask(question, options)`` that posts the
business's question into the errand's thread and waits, up to the timeout, for the owner's answer.
The chat flow resolves it through ``answer``/``open_for``. It is in-process on purpose: the call
and the chat bot of one errand run in the same server, and a question nobody answered in time
falls back to the stored needs_user path (``ErrandDesk.answer``), which survives restarts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from storage.models import Job
from storage.ports import LiveAnswer

log = logging.getLogger(__name__)

#: Posts the question into the errand's thread; whether it was posted (``ChatNotifier.ask``).
Post = Callable[[Job, str, Sequence[str]], Awaitable[bool]]


@dataclass
class _Pending:
    owner: str
    answer: asyncio.Future[str] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class PendingQuestions:
    """The open questions of live calls, one per errand at most.

    Args:
        post: shows a question in the errand's thread.
        timeout: seconds a call waits for the answer (``LIVE_ASK_TIMEOUT``).
    """

    def __init__(self, post: Post, *, timeout: float) -> None:
        self._post = post
        self._timeout = timeout
        self._open: dict[str, _Pending] = {}

    def asker(self, job: Job) -> Callable[[str, Sequence[str]], Awaitable[str | None]]:
        """The agent's ``ask`` for the call of ``job``."""

        async def ask(question: str, options: Sequence[str]) -> str | None:
            return await self.ask(job, question, options)

        return ask

    async def ask(self, job: Job, question: str, options: Sequence[str] = ()) -> str | None:
        """Post ``question`` and wait for the owner's answer; None if none came in time or the
        question could not be posted (then the call falls back to needs_user)."""
        pending = _Pending(owner=job.request.origin.user_id)
        self._open[job.id] = pending
        try:
            async with asyncio.timeout(self._timeout):
                if not await self._post(job, question, options):
                    return None
                return await pending.answer
        except TimeoutError:
            log.info("no live answer for errand %s within %.0f s", job.id, self._timeout)
            return None
        finally:
            if self._open.get(job.id) is pending:
                del self._open[job.id]

    def answer(self, job_id: str, user_id: str, answer: str) -> LiveAnswer:
        pending = self._open.get(job_id)
        if pending is None or pending.answer.done():
            return LiveAnswer.NONE_OPEN
        if pending.owner != user_id:
            return LiveAnswer.NOT_OWNER
        pending.answer.set_result(answer)
        return LiveAnswer.TAKEN

    def open_for(self, user_id: str) -> str | None:
        return next(
            (job_id for job_id, p in self._open.items() if p.owner == user_id and not p.answer.done()),
            None,
        )
