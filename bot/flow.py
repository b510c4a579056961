"""The chat conversation, independent of the chat platform.

Telegram and Slack only translate their updates into calls on ``ChatFlow`` and
its ``Out`` answers into their own messages and buttons. Keeping the dialogue
here means both front ends ask, confirm, edit and cancel in exactly the same
way, and the dialogue is tested once.

Drafts live in ``storage.drafts``, never in this object: a restart, or another server on
the same database, continues them. A draft belongs to whoever started it; anyone else's
message in its thread or press on its buttons changes nothing and is told why, privately.
Every change gives the draft a new id, and buttons carry the id they were shown with, so a
press on an older message's buttons is refused instead of acting on a draft the person
has not seen. A refused press never edits a message (a double click's loser must not
overwrite the winner's "Confirmed"); it only answers the presser.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from bot import render
from bot.intake import Intake, IntakeDraft, IntakeReply
from storage.drafts import DraftStore
from storage.errors import IllegalTransition, IntakeError, JobNotFound, ProviderError
from storage.models import ChatOrigin, utcnow
from storage.ports import ErrandDesk, LiveAnswer, LiveQuestions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Button:
    """A chat button; ``data`` is the callback data (Telegram) / action value (Slack), ≤ 64 bytes."""

    label: str
    data: str
    style: str = ""  # "primary" | "danger" | "" (Slack only)


@dataclass(frozen=True)
class Out:
    """One message to show; ``private`` ones only to the person it answers (Slack: ephemeral)."""

    text: str
    buttons: tuple[Button, ...] = ()
    private: bool = False


@dataclass(frozen=True)
class Pressed:
    """What a button press changes: the pressed message is replaced by ``edit`` and
    ``reply`` (if any) is posted in the same thread; ``notice`` is shown to the presser
    only (Slack: ephemeral, Telegram: an alert) and is how a refused press is answered."""

    edit: Out | None = None
    reply: Out | None = None
    notice: str = ""


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


def live_ask_buttons(job_id: str, options: tuple[str, ...]) -> tuple[Button, ...]:
    """Quick replies to a question asked during a call (the same ``ans:`` data as ``needs_you_buttons``,
    so a press after the question expired still reaches the next call). Options too long for a
    button's 64 bytes are left out: free text answers them."""
    buttons = (Button(o, f"ans:{job_id}:{o}") for o in options)
    return tuple(b for b in buttons if len(b.data.encode()) <= 64)


class ChatFlow:
    """Ask back, confirm, edit, cancel and list errands for one person's chats.

    Args:
        intake: reads messages into drafts.
        desk: where confirmed errands go (the dispatcher).
        drafts: where drafts are kept between messages.
        clock: aware UTC ``now`` for "they open … — I'll call then".
        live: questions a call is waiting on right now (``storage.ports.LiveQuestions``); an
            owner's answer goes there first, to the call, and otherwise to ``desk.answer``.
    """

    def __init__(
        self,
        *,
        intake: Intake,
        desk: ErrandDesk,
        drafts: DraftStore,
        clock: Callable[[], datetime] = utcnow,
        live: LiveQuestions | None = None,
    ) -> None:
        self.live = live
        self.intake = intake
        self.desk = desk
        self.drafts = drafts
        self.clock = clock
        # One submission per person at a time: the desk's per-person limits are a
        # check-then-insert, and Slack runs listeners concurrently (many Confirm clicks).
        self._submitting: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # Messages in one thread are read one after another on this server, so two quick
        # replies both apply instead of the second losing the draft's compare-and-set.
        # Weak values: a thread's lock exists only while someone holds it.
        self._threads: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _thread(self, key: str) -> asyncio.Lock:
        lock = self._threads.get(key)
        if lock is None:
            lock = self._threads[key] = asyncio.Lock()
        return lock

    async def has_draft(self, key: str) -> bool:
        """Whether the thread has an open draft (whoever owns it)."""
        return await self.drafts.for_key(key) is not None

    async def request(self, key: str, origin: ChatOrigin, text: str) -> Out:
        """A new errand: the ``/call`` form when it has ``|`` separators, otherwise free words.

        It replaces any draft the thread had.
        """
        deterministic = "|" in text or self.intake.extractor is None
        async with self._thread(key):
            try:
                if deterministic:
                    reply = self.intake.from_command(key, origin, text)
                else:
                    reply = await self.intake.from_text(key, origin, text)
            except ProviderError:
                log.exception("intake model failed")
                return Out(render.MODEL_DOWN)
            return await self._keep(reply, key, origin.user_id, previous=None)

    async def follow_up(self, key: str, origin: ChatOrigin, text: str) -> Out | None:
        """A message in a thread with an open draft; ``None`` if there is none.

        Only the draft's owner changes it; anyone else gets a private note and the draft
        stays as it was.
        """
        live = await self._live_answer(origin.user_id, text)
        if live is not None:
            return live
        async with self._thread(key):
            stored = await self.drafts.for_key(key)
            if stored is None:
                return None
            if stored.owner != origin.user_id:
                return Out(render.NOT_YOUR_DRAFT, private=True)
            draft = IntakeDraft.from_data(stored.id, key, stored.data)
            try:
                reply = await self.intake.follow_up(draft, origin, text)
            except ProviderError:
                log.exception("intake model failed")
                return Out(render.MODEL_DOWN)
            return await self._keep(reply, key, origin.user_id, previous=stored.id)

    async def _keep(self, reply: IntakeReply, key: str, owner: str, *, previous: str | None) -> Out:
        """Store the draft ``reply`` carries (a new id) or drop it on a refusal; the answer."""
        reply = await self.intake.screen(reply)
        if reply.kind == "refuse" or reply.draft is None:
            await self.drafts.drop_key(key)
            return Out(reply.text)
        data = reply.draft.to_data()
        if previous is None:
            stored = await self.drafts.start(key, owner, data)
        else:
            changed = await self.drafts.replace(previous, data)
            if changed is None:  # another server changed or took it meanwhile
                return Out(render.DRAFT_RACED)
            stored = changed
        reply.draft.id = stored.id
        return await self._out(reply)

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
            taken = await self.live.answer(job_id, user_id, answer) if self.live else LiveAnswer.NONE_OPEN
            if taken is LiveAnswer.NOT_OWNER:
                return Pressed(notice=render.NOT_YOUR_QUESTION)
            if taken is LiveAnswer.TAKEN:
                return Pressed(edit=Out(render.live_answered(answer)))
            try:
                await self.desk.answer(job_id, user_id, answer)
            except (JobNotFound, IllegalTransition) as e:
                return Pressed(reply=Out(f"I couldn't pass that on: {e}"))
            return Pressed(edit=Out(f"You answered “{answer}”. I'll call them back with it."))
        if kind == "jx":
            return Pressed(edit=await self.cancel(user_id, rest))
        return Pressed()

    async def _live_answer(self, user_id: str, text: str) -> Out | None:
        """A message from someone whose call (on any node) is waiting on their answer: it is the answer."""
        if self.live is None:
            return None
        job_id = await self.live.open_for(user_id)
        if job_id is None:
            return None
        if await self.live.answer(job_id, user_id, text) is not LiveAnswer.TAKEN:
            return None
        return Out(render.live_answered(text))

    async def _press_draft(self, kind: str, shown_id: str, user_id: str) -> Pressed:
        stored = await self.drafts.current(shown_id)
        if stored is None:
            return Pressed(notice=render.DRAFT_GONE)
        if stored.owner != user_id:
            return Pressed(notice=render.NOT_YOUR_DRAFT)
        if stored.id != shown_id:
            return Pressed(notice=render.DRAFT_CHANGED)
        if kind == "no":
            if await self.drafts.take(shown_id) is None:
                return await self._lost(shown_id)
            return Pressed(edit=Out(render.DRAFT_DROPPED))
        draft = IntakeDraft.from_data(stored.id, stored.key, stored.data)
        if draft.missing():
            return Pressed(notice=render.DRAFT_GONE)
        request = draft.to_request(person_name=self.intake.person_name, person_tz=self.intake.person_tz)
        summary = render.request_summary(request)
        if kind == "ed":
            draft.editing = True
            if await self.drafts.replace(shown_id, draft.to_data()) is None:
                return await self._lost(shown_id)
            return Pressed(edit=Out(summary), reply=Out(render.EDIT_PROMPT))
        # Taken before submitting: of any number of concurrent presses (on any server) exactly
        # one submits; a crash in between loses the draft, never queues it twice.
        if await self.drafts.take(shown_id) is None:
            return await self._lost(shown_id)
        try:
            async with self._submitting[user_id]:
                job = await self.desk.submit(request)
        except IntakeError as e:
            return Pressed(edit=Out(f"{summary}\n\n{e}"))
        return Pressed(edit=Out(f"{summary}\n\n{render.confirmed(job, self.intake.person_tz)}"))

    async def _lost(self, shown_id: str) -> Pressed:
        """Another press or message got to the draft first: say nothing if it is gone (the
        winner answers), or that it changed."""
        stored = await self.drafts.current(shown_id)
        return Pressed() if stored is None else Pressed(notice=render.DRAFT_CHANGED)

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
