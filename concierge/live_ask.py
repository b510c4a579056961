"""Questions a live call is waiting on, answered from the errand's chat (``storage.ports.LiveQuestions``).

The agent gets ``PendingQuestions.asker(job)``: an ``ask(question, options)`` that posts the
business's question into the errand's thread and waits, up to the timeout, for the owner's answer.
The chat flow hands answers in through ``answer``/``open_for``. The question lives in the database
(``storage.live_questions``), not in this object: the person's answer may reach any node sharing
the database, and the node holding the call reads it back, polling every ``poll_interval`` only
while one of its questions is open (an answer received on this same node wakes it at once). A
question nobody answered in time falls back to the stored needs_user path (``ErrandDesk.answer``),
which survives restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

from storage.live_questions import LiveQuestionStore
from storage.models import Job
from storage.ports import LiveAnswer

log = logging.getLogger(__name__)

#: Posts the question into the errand's thread; whether it was posted (``ChatNotifier.ask``).
Post = Callable[[Job, str, Sequence[str]], Awaitable[bool]]

#: How often the node holding a call looks for an answer stored by another node.
POLL_INTERVAL = 0.25
#: A question stays answerable this long past the call's own timeout if its node dies unclosed.
EXPIRY_MARGIN = timedelta(seconds=60)


class PendingQuestions:
    """The open questions of this node's live calls, one per errand at most, kept in the database.

    Args:
        post: shows a question in the errand's thread.
        store: the shared table of open questions.
        timeout: seconds a call waits for the answer (``LIVE_ASK_TIMEOUT``).
        node: this node's name, written beside its questions.
        poll_interval: seconds between looks for an answer another node stored.
    """

    def __init__(
        self,
        post: Post,
        store: LiveQuestionStore,
        *,
        timeout: float,
        node: str = "",
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self._post = post
        self._store = store
        self._timeout = timeout
        self._node = node
        self._poll_interval = poll_interval
        # Questions this node is waiting on: an answer taken here wakes its call without a poll.
        self._waiting: dict[str, asyncio.Event] = {}

    def asker(self, job: Job) -> Callable[[str, Sequence[str]], Awaitable[str | None]]:
        """The agent's ``ask`` for the call of ``job``."""

        async def ask(question: str, options: Sequence[str]) -> str | None:
            return await self.ask(job, question, options)

        return ask

    async def ask(self, job: Job, question: str, options: Sequence[str] = ()) -> str | None:
        """Post ``question`` and wait for the owner's answer; None if none came in time or the
        question could not be posted (then the call falls back to needs_user)."""
        token = await self._store.open(
            job.id,
            job.request.origin.user_id,
            node=self._node,
            expires_in=timedelta(seconds=self._timeout) + EXPIRY_MARGIN,
        )
        arrived = self._waiting[job.id] = asyncio.Event()
        answer: str | None = None
        try:
            async with asyncio.timeout(self._timeout):
                if await self._post(job, question, options):
                    answer = await self._wait(job.id, token, arrived)
        except TimeoutError:
            log.info("no live answer for errand %s within %.0f s", job.id, self._timeout)
        finally:
            if self._waiting.get(job.id) is arrived:
                del self._waiting[job.id]
            # An answer stored after the wait ended was told TAKEN: the call still gets it.
            late = await self._store.close(job.id, token)
        return answer if answer is not None else late

    async def _wait(self, job_id: str, token: str, arrived: asyncio.Event) -> str:
        while (answer := await self._store.answer_of(job_id, token)) is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await arrived.wait()
            arrived.clear()
        return answer

    async def answer(self, job_id: str, user_id: str, answer: str) -> LiveAnswer:
        """Hand ``answer`` to the call waiting on errand ``job_id`` (on any node) if ``user_id`` owns it."""
        taken = await self._store.answer(job_id, user_id, answer)
        if taken is LiveAnswer.TAKEN and (arrived := self._waiting.get(job_id)) is not None:
            arrived.set()
        return taken

    async def open_for(self, user_id: str) -> str | None:
        """The errand whose live call (on any node) waits on this person's answer, if any."""
        return await self._store.open_for(user_id)
