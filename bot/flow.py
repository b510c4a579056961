"""The chat conversation, independent of the chat platform.

Telegram and Slack only translate their updates into calls on ``ChatFlow`` and
its ``Out`` answers into their own messages and buttons. Keeping the dialogue
here means both front ends ask, confirm, edit and cancel in exactly the same
way, and the dialogue is tested once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from bot import render
from bot.intake import Intake, IntakeReply
from storage.errors import IllegalTransition, IntakeError, JobNotFound, ProviderError
from storage.models import ChatOrigin, utcnow
from storage.ports import ErrandDesk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Button:
    """A chat button; ``data`` is the callback data (Telegram) / action value (Slack), ≤ 64 bytes."""

    label: str
    data: str
    style: str = ""  # "primary" | "danger" | "" (Slack only)


@dataclass(frozen=True)
class Out:
    """One message to show."""

    text: str
    buttons: tuple[Button, ...] = ()


@dataclass(frozen=True)
class Pressed:
    """What a button press changes: the pressed message is replaced by ``edit`` and
    ``reply`` (if any) is posted in the same thread."""

    edit: Out | None = None
    reply: Out | None = None


def confirm_buttons(draft_id: str) -> tuple[Button, ...]:
    return (
        Button("Confirm", f"ok:{draft_id}", "primary"),
        Button("Edit", f"ed:{draft_id}"),
        Button("Cancel", f"no:{draft_id}", "danger"),
    )


def needs_you_buttons(job_id: str) -> tuple[Button, ...]:
    """Answers to a needs-you question; the answer text goes to ``ErrandDesk.answer``."""
    return (
        Button("Yes", f"ans:{job_id}:yes", "primary"),
        Button("No", f"ans:{job_id}:no"),
        Button("Cancel errand", f"jx:{job_id}", "danger"),
    )


class ChatFlow:
    """Ask back, confirm, edit, cancel and list errands for one person's chats.

    Args:
        intake: draft keeper and parser.
        desk: where confirmed errands go (the dispatcher).
        clock: aware UTC ``now`` for "they open … — I'll call then".
    """

    def __init__(self, *, intake: Intake, desk: ErrandDesk, clock: Callable[[], datetime] = utcnow) -> None:
        self.intake = intake
        self.desk = desk
        self.clock = clock
        # One submission per person at a time: the desk's per-person limits are a
        # check-then-insert, and Slack runs listeners concurrently (many Confirm clicks).
        self._submitting: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def has_draft(self, key: str) -> bool:
        return self.intake.draft_for(key) is not None

    async def request(self, key: str, origin: ChatOrigin, text: str) -> Out:
        """A new errand: the ``/call`` form when it has ``|`` separators, otherwise free words."""
        deterministic = "|" in text or self.intake.extractor is None
        try:
            if deterministic:
                reply = self.intake.from_command(key, origin, text)
            else:
                reply = await self.intake.from_text(key, origin, text)
        except ProviderError:
            log.exception("intake model failed")
            return Out(render.MODEL_DOWN)
        return await self._out(reply)

    async def follow_up(self, key: str, origin: ChatOrigin, text: str) -> Out | None:
        """A message in a thread with an open draft; ``None`` if there is none."""
        try:
            reply = await self.intake.follow_up(key, origin, text)
        except ProviderError:
            log.exception("intake model failed")
            return Out(render.MODEL_DOWN)
        return None if reply is None else await self._out(reply)

    async def _out(self, reply: IntakeReply) -> Out:
        if reply.kind != "ready" or reply.request is None or reply.draft is None:
            return Out(reply.text)
        due = await self.desk.plan(reply.request)
        return Out(render.confirm_prompt(reply.request, due, self.clock()), confirm_buttons(reply.draft.id))

    async def press(self, user_id: str, data: str) -> Pressed:
        """A button press by ``user_id``; unknown data is ignored."""
        kind, _, rest = data.partition(":")
        if kind in ("ok", "ed", "no"):
            return await self._press_draft(kind, rest, user_id)
        if kind == "ans":
            job_id, _, answer = rest.partition(":")
            try:
                await self.desk.answer(job_id, user_id, answer)
            except (JobNotFound, IllegalTransition) as e:
                return Pressed(reply=Out(f"I couldn't pass that on: {e}"))
            return Pressed(edit=Out(f"You answered “{answer}”. I'll call them back with it."))
        if kind == "jx":
            return Pressed(edit=await self.cancel(user_id, rest))
        return Pressed()

    async def _press_draft(self, kind: str, draft_id: str, user_id: str) -> Pressed:
        draft = self.intake.get(draft_id)
        if draft is None:
            return Pressed(edit=Out(render.DRAFT_GONE))
        if draft.origin.user_id != user_id:
            return Pressed(reply=Out(render.NOT_YOURS))
        if kind == "no":
            self.intake.drop(draft_id)
            return Pressed(edit=Out(render.DRAFT_DROPPED))
        if draft.missing():
            return Pressed(edit=Out(render.DRAFT_GONE))
        request = draft.to_request(person_name=self.intake.person_name, person_tz=self.intake.person_tz)
        summary = render.request_summary(request)
        if kind == "ed":
            self.intake.begin_edit(draft_id)
            return Pressed(edit=Out(summary), reply=Out(render.EDIT_PROMPT))
        self.intake.drop(draft_id)
        try:
            async with self._submitting[user_id]:
                job = await self.desk.submit(request)
        except IntakeError as e:
            return Pressed(edit=Out(f"{summary}\n\n{e}"))
        return Pressed(edit=Out(f"{summary}\n\n{render.confirmed(job, self.intake.person_tz)}"))

    async def cancel(self, user_id: str, job_id: str) -> Out:
        if not job_id.strip():
            return Out("Which errand? Use /cancel ID (see /status for the ids).")
        try:
            job = await self.desk.cancel(job_id.strip(), user_id)
        except JobNotFound:
            return Out(render.cannot_cancel(job_id, "I don't know that errand (see /status)."))
        except IllegalTransition:
            return Out(render.cannot_cancel(job_id, "it's already on the phone or finished."))
        return Out(render.cancelled(job.id))

    async def status(self, user_id: str) -> Out:
        return Out(render.status_list(await self.desk.jobs_for(user_id), self.intake.person_tz))
