"""Questions live calls are waiting on, in the database, so any node can take the answer.

A call runs on one node; the person's answer may arrive at any node sharing the database (a
Telegram webhook or a Slack event goes wherever the load balancer sends it). So the node holding
the call writes the open question here (:meth:`LiveQuestionStore.open`), whichever node receives
the person's answer stores it (:meth:`LiveQuestionStore.answer`, only from the errand's owner),
and the holding node reads it back (:meth:`LiveQuestionStore.answer_of`) and finally closes the
question (:meth:`LiveQuestionStore.close`), which also returns an answer stored after it stopped
waiting: once :meth:`~LiveQuestionStore.answer` has said ``TAKEN`` the call gets that answer.

One open question per errand (``job_id`` is the key); each asking has its own random ``token``,
so an answer to an earlier asking is never read as the answer to a later one. A question whose
node died is never closed: it is ignored after ``expires_at`` and purged by the next ``open``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from storage.models import utcnow
from storage.ports import LiveAnswer
from storage.sql import Database, format_dt

__all__ = ["LiveQuestionStore"]


class LiveQuestionStore:
    """Table ``live_questions`` (migration 5) over one :class:`~storage.db.Database`.

    Args:
        db: an open database; the store does not close it.
        clock: aware UTC ``now`` for ``asked_at``/``expires_at`` (real time: a clock that jumps
            ahead, like the demo's, would expire questions a call is still waiting on).
    """

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._clock = clock

    async def open(self, job_id: str, owner: str, *, node: str, expires_in: timedelta) -> str:
        """Open the errand's question (replacing any earlier one of it); returns its token.

        Args:
            job_id: the errand whose call asks.
            owner: chat user id of the errand's owner, the only one whose answer counts.
            node: the node holding the call (for people reading the table).
            expires_in: after this the question counts as closed even if its node never closes
                it (the call's own timeout plus a margin).
        """
        token = secrets.token_hex(8)
        at = self._clock()
        now = format_dt(at)
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM live_questions WHERE expires_at < ?", (now,))
            await tx.execute(
                "INSERT INTO live_questions (job_id, token, owner, node, asked_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (job_id) DO UPDATE SET token = excluded.token, owner = excluded.owner,"
                " node = excluded.node, asked_at = excluded.asked_at, expires_at = excluded.expires_at,"
                " answer = NULL, answered_at = NULL",
                (job_id, token, owner, node, now, format_dt(at + expires_in)),
            )
        return token

    async def answer(self, job_id: str, user_id: str, answer: str) -> LiveAnswer:
        """Store ``answer`` for the errand's open question if ``user_id`` owns it.

        Check and write are one transaction (the row locked on PostgreSQL), so of two answers
        arriving at two nodes at once exactly one is ``TAKEN``.
        """
        async with self._db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT owner FROM live_questions"
                " WHERE job_id = ? AND answer IS NULL AND expires_at >= ?" + tx.for_update,
                (job_id, format_dt(self._clock())),
            )
            if row is None:
                return LiveAnswer.NONE_OPEN
            if row["owner"] != user_id:
                return LiveAnswer.NOT_OWNER
            await tx.execute(
                "UPDATE live_questions SET answer = ?, answered_at = ? WHERE job_id = ? AND answer IS NULL",
                (answer, format_dt(self._clock()), job_id),
            )
        return LiveAnswer.TAKEN

    async def open_for(self, user_id: str) -> str | None:
        """The errand whose open, unanswered question waits on this person (the oldest), or None."""
        row = await self._db.fetchone(
            "SELECT job_id FROM live_questions WHERE owner = ? AND answer IS NULL AND expires_at >= ?"
            " ORDER BY asked_at, job_id LIMIT 1",
            (user_id, format_dt(self._clock())),
        )
        return None if row is None else str(row["job_id"])

    async def answer_of(self, job_id: str, token: str) -> str | None:
        """The answer stored for this asking, or None (not yet, or the question is gone)."""
        row = await self._db.fetchone(
            "SELECT answer FROM live_questions WHERE job_id = ? AND token = ?", (job_id, token)
        )
        return None if row is None or row["answer"] is None else str(row["answer"])

    async def close(self, job_id: str, token: str) -> str | None:
        """Remove this asking's question; returns an answer stored before it went (else None)."""
        async with self._db.transaction() as tx:
            row = await tx.fetchone(
                "SELECT answer FROM live_questions WHERE job_id = ? AND token = ?" + tx.for_update,
                (job_id, token),
            )
            if row is None:
                return None
            await tx.execute("DELETE FROM live_questions WHERE job_id = ? AND token = ?", (job_id, token))
        return None if row["answer"] is None else str(row["answer"])

