"""The streaming Claude turn loop of one phone call.

Per caller input the model's reply is streamed, cut into clauses and handed to
TTS while the model is still writing. Tool calls run once the model's message
is complete and their results go back to the model in the same reply. The
history sent to the model holds only what the callee actually heard: a
barge-in (the session cancels the reply iterator, then calls ``interrupted``)
trims the reply to the played words, and a cancelled reply never leaves a
``tool_use`` without its ``tool_result``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

import anthropic
import httpx2
from anthropic import AsyncStream
from anthropic.types import InputJSONDelta, RawMessageStreamEvent

from agent.answer import AnswerBuilder
from agent.base import (
    AgentAction,
    CallConnected,
    CalleeSaid,
    CalleeSilent,
    CallerInput,
    DigitsHeard,
    Hangup,
    Say,
    SendDigits,
)
from agent.chunking import ClauseChunker
from agent.early import EarlyRound
from agent.history import Message, add_user, drop_empty, prefix_text, set_text, text_of
from agent.llm import RetryPolicy, from_transport_error
from agent.prompts import build_system_prompt
from agent.tools import BookingTools, FreeBusy
from storage.models import Booking, CallOutcome, CallRequest, OutcomeKind, utcnow

log = logging.getLogger(__name__)

#: The disclosure rule (DESIGN.md, safety): the callee learns in the assistant's first words that
#: it is an AI. The prompt asks for it; this guard makes it hold whatever the model writes.
_DISCLOSES = re.compile(r"\bAI\b|artificial intelligence", re.IGNORECASE)

APOLOGY = "I'm sorry, I'm having technical trouble on my end. I'll call back later. Goodbye."


def render_input(event: CallerInput) -> str:
    """What the model reads for one caller input (bracketed notes are not speech)."""
    if isinstance(event, CalleeSaid):
        return event.text
    if isinstance(event, CallConnected):
        return "[call connected: the callee picked up and has not spoken yet]"
    if isinstance(event, CalleeSilent):
        return f"[silence: the callee has said nothing for {event.seconds:.0f} seconds]"
    if isinstance(event, DigitsHeard):
        return f"[the callee's phone sent DTMF digits: {event.digits}]"
    raise TypeError(f"unknown caller input {event!r}")


class _RoundFailed(Exception):
    """A model round failed after speech had started: it cannot be retried invisibly."""


class ClaudeAgent:
    """One call's conversation with Claude (implements ``agent.base.Agent``).

    Args:
        client: an ``AsyncAnthropic`` (see ``agent.llm.build_anthropic``; built with ``max_retries=0``).
        model: model name, e.g. settings.anthropic_model.
        request: the errand.
        calendar: the person's free/busy source (``agent.calendar.GraphCalendar``).
        assistant_name: how the assistant introduces itself.
        clock: aware-UTC wall clock (for "today" in the prompt).
        monotonic: clock for ``Say.first_token_at``.
        sleep: waits between retries (tests pass a fast one).
        retry: back-off policy for transient model errors.
        max_tool_rounds: model rounds with tool calls per caller input before giving the floor back.
        max_tokens: cap on one model answer (spoken replies are short).
        filler_phrases: said once per reply while a transient error is being retried.
        on_booking: awaited as soon as the business confirms a slot (``confirm_booking``), long
            before the call ends — the dispatcher stores it so a crash mid-call cannot lose it.
        prefetch_calendar: fetch the window's busy intervals now, while the phone rings, so
            availability checks mid-conversation cost no Graph round trip (``BookingTools``);
            needs a running loop, and ``aclose()`` when the call ends.
        first_clause_words: hand the first clause of each model answer to TTS at its first comma
            or after this many words (``ClauseChunker``): it is what the callee waits for.
    """

    def __init__(
        self,
        client: anthropic.AsyncAnthropic,
        *,
        model: str,
        request: CallRequest,
        calendar: FreeBusy,
        assistant_name: str,
        clock: Callable[[], Any] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        retry: RetryPolicy | None = None,
        max_tool_rounds: int = 6,
        max_tokens: int = 400,
        filler_phrases: Sequence[str] = ("One moment, please.",),
        on_booking: Callable[[Booking], Awaitable[None]] | None = None,
        prefetch_calendar: bool = False,
        first_clause_words: int | None = None,
    ) -> None:
        self._client = client
        self._model = model
        self._monotonic = monotonic
        self._sleep = sleep
        self._retry = retry or RetryPolicy()
        self._max_tool_rounds = max_tool_rounds
        self._max_tokens = max_tokens
        self._first_clause_words = first_clause_words
        self.disclosure = (
            f"Hi, this is {assistant_name}, an AI assistant calling on behalf of {request.person_name}."
        )
        self._disclosed = False
        self._fillers = list(filler_phrases) or ["One moment, please."]
        self._filler_i = 0
        self._filler_said = False
        self._on_booking = on_booking
        self.tools = BookingTools(request, calendar, prefetch=prefetch_calendar)
        today: date = clock().astimezone(ZoneInfo(request.business_tz)).date()
        self.system_prompt = build_system_prompt(request, assistant_name=assistant_name, today=today)
        schemas = self.tools.schemas()
        schemas[-1] = {**schemas[-1], "cache_control": {"type": "ephemeral"}}
        self._tool_defs = schemas
        self.messages: list[Message] = []
        self._outcome: CallOutcome | None = None
        # What the callee was played during the current reply, in order: (assistant message or None
        # for a filler that is not in history, its text).
        self._spoken: list[tuple[Message | None, str]] = []
        self._early: EarlyRound | None = None  # a first round started on an eager end of turn

    # -- Agent interface ----------------------------------------------------------------------------

    def outcome(self) -> CallOutcome | None:
        if self._outcome is not None:
            return self._outcome
        if self.tools.booking is not None:
            return CallOutcome(
                kind=OutcomeKind.BOOKED,
                summary="The slot was confirmed, but the call ended before the goodbye.",
                booking=self.tools.booking,
            )
        return None

    async def aclose(self) -> None:
        """Stop the calendar fetches and any early round (the session calls it when the call ends)."""
        early, self._early = self._early, None
        if early is not None:
            await early.cancel()
        await self.tools.aclose()

    def prepare(self, event: CallerInput) -> None:
        """Start the model on ``event`` now, before it is final (Flux ``EagerEndOfTurn``).

        ``reply(event)`` then reads this request's answer instead of making its own, provided the
        history it would send is still exactly the same (``agent.early``). Replaces an earlier
        preparation; costs one model request that is thrown away if the callee goes on talking.
        """
        self.discard_prepared()
        if self._outcome is not None:
            return
        messages = copy.deepcopy(self.messages)
        add_user(messages, [{"type": "text", "text": render_input(event)}])
        self._early = EarlyRound(messages, lambda: self._create(messages))

    def discard_prepared(self) -> None:
        """The callee went on talking (Flux ``TurnResumed``): stop the early request."""
        early, self._early = self._early, None
        if early is not None:
            early.discard()

    def _claim_prepared(self) -> EarlyRound | None:
        """The early round, if it was started with exactly the history now in ``messages``."""
        early, self._early = self._early, None
        if early is not None and not early.matches(self.messages):
            early.discard()
            return None
        return early

    async def reply(self, event: CallerInput) -> AsyncIterator[AgentAction]:
        """Stream the answer to one caller input (see the module docstring)."""
        if self._outcome is not None:
            return
        self._spoken = []
        self._filler_said = False
        add_user(self.messages, [{"type": "text", "text": render_input(event)}])
        early = self._claim_prepared()
        first = True
        for _ in range(self._max_tool_rounds + 1):
            assistant: Message | None = None
            async with aclosing(self._round_with_retries(first, early)) as round_items:
                early = None
                async for item in round_items:
                    if isinstance(item, Say):
                        first = first and item.first_token_at is None
                        yield item
                    else:
                        assistant = item
            if self._outcome is not None:  # the model failed for good: apologise and hang up
                yield Say(APOLOGY)
                yield Hangup(self._outcome)
                return
            if assistant is None:
                return
            uses = [b for b in assistant["content"] if b["type"] == "tool_use"]
            if not uses:
                return
            try:
                results, actions = await self._run_tools(uses)
            except BaseException:
                # Cancelled while a tool ran: keep what was said, without the unanswered tool_use.
                set_text(assistant, text_of(assistant))
                assistant["content"][:] = [b for b in assistant["content"] if b["type"] == "text"]
                if assistant["content"]:
                    self.messages.append(assistant)
                    drop_empty(self.messages)
                raise
            # Both appended in one step: a cancellation can never separate tool_use from tool_result.
            self.messages.append(assistant)
            add_user(self.messages, results)
            for action in actions:
                if isinstance(action, Hangup):
                    self._outcome = action.outcome
                yield action
                if isinstance(action, Hangup):
                    return

    def interrupted(self, heard: str) -> None:
        """Trim the last reply in history to exactly what the callee heard (``heard``)."""
        remaining = heard.strip()
        for message, text in self._spoken:
            if len(remaining) >= len(text):
                keep, remaining = text, remaining[len(text) :].strip()
            else:
                keep, remaining = remaining, ""
            if message is not None:
                set_text(message, keep)
        self._spoken = []
        drop_empty(self.messages)
        # A disclosure cut off before the callee heard "AI" does not count: say it again.
        self._disclosed = any(
            _DISCLOSES.search(text_of(m)) for m in self.messages if m["role"] == "assistant"
        )

    def _disclose(self, pieces: list[str], held: list[str], *, final: bool) -> list[str]:
        """Hold the call's first sentence until it is known to disclose; otherwise say the disclosure first.

        Costs nothing after the first sentence of the call: the guard is then off.
        """
        if self._disclosed or not (pieces or held):
            return pieces
        held.extend(pieces)
        if _DISCLOSES.search(" ".join(held)):
            self._disclosed = True
        elif final or any(p.rstrip().endswith((".", "!", "?")) for p in held):
            self._disclosed = True
            held.insert(0, self.disclosure)
        else:
            return []
        out = list(held)
        held.clear()
        return out

    # -- one model round ----------------------------------------------------------------------------

    async def _round_with_retries(
        self, first: bool, early: EarlyRound | None = None
    ) -> AsyncGenerator[Say | Message, None]:
        """One model call, retried on transient errors while nothing of it was spoken yet.

        ``early``: the request already running for this round (its first attempt only).

        Yields ``Say``s as they stream and finally the assistant message to append (with
        its tool_use blocks), or nothing when the model said nothing. Sets ``_outcome``
        to an error outcome when it gives up.
        """
        attempt = 0
        while True:
            attempt += 1
            spoke = False
            try:
                async with aclosing(self._round(first, early)) as items:
                    early = None
                    async for item in items:
                        spoke = spoke or isinstance(item, Say)
                        yield item
                return
            except anthropic.APIError as e:
                if spoke or not self._retry.should_retry(attempt, e):
                    # Whatever was spoken stays in history (``_round`` committed it).
                    if spoke and self._retry.should_retry(attempt, e):
                        return  # the callee heard a partial answer; let them respond to it
                    self._outcome = CallOutcome(kind=OutcomeKind.ERROR, summary=f"Model unavailable: {e}")
                    return
                if not self._filler_said:  # once per reply, not per model round: no "one moment" twice
                    self._filler_said = True
                    text = self._fillers[self._filler_i % len(self._fillers)]
                    self._filler_i += 1
                    self._spoken.append((None, text))
                    yield Say(text)
                await self._sleep(self._retry.delay(attempt, e))

    def _create(self, messages: list[Message]) -> Awaitable[AsyncStream[RawMessageStreamEvent]]:
        """Start one streaming model request with ``messages`` as the history."""
        system = [{"type": "text", "text": self.system_prompt, "cache_control": {"type": "ephemeral"}}]
        params: Any = {"system": system, "tools": self._tool_defs, "messages": messages}
        return self._client.messages.create(
            model=self._model, max_tokens=self._max_tokens, stream=True, **params
        )

    async def _round(
        self, first: bool, early: EarlyRound | None = None
    ) -> AsyncGenerator[Say | Message, None]:
        chunker = ClauseChunker(first_clause_words=self._first_clause_words)
        answer = AnswerBuilder()
        held: list[str] = []
        said: list[str] = []
        first_token_at: float | None = None
        done = False
        try:
            try:
                async with contextlib.AsyncExitStack() as stack:
                    events: AsyncIterator[RawMessageStreamEvent]
                    if early is None:
                        stream = await self._create(self.messages)
                        events = await stack.enter_async_context(stream)
                    else:  # its answer is already on its way (or here)
                        stack.push_async_callback(early.cancel)
                        events = early.events()
                    async for ev in events:
                        pieces: list[str] = []
                        if ev.type == "content_block_delta":
                            delta = ev.delta
                            if delta.type == "text_delta":
                                if first_token_at is None:
                                    first_token_at = self._monotonic()
                                answer.text(ev.index, delta.text)
                                pieces = self._disclose(chunker.feed(delta.text), held, final=False)
                            elif isinstance(delta, InputJSONDelta):
                                answer.partial_json(ev.index, delta.partial_json)
                        else:
                            answer.on_event(ev)
                            if ev.type == "content_block_stop":  # speak text before a tool runs
                                pieces = self._disclose(chunker.flush(), held, final=True)
                        for piece in pieces:
                            said.append(piece)
                            yield Say(piece, first_token_at if first and len(said) == 1 else None)
                    sdk_stream = stream if early is None else early.stream
                    content = answer.content(sdk_stream.response.request if sdk_stream else None)
            except httpx2.TransportError as e:  # a stalled or dropped stream mid-answer
                raise from_transport_error(e) from e
            for piece in self._disclose(chunker.flush(), held, final=True):
                said.append(piece)
                yield Say(piece, first_token_at if first and len(said) == 1 else None)
            done = True
            if said and said[0] is self.disclosure:
                prefix_text(content, self.disclosure)
            if not content:
                return
            message: Message = {"role": "assistant", "content": content}
            if not any(b["type"] == "tool_use" for b in content):
                self.messages.append(message)
            self._spoken.append((message, " ".join(said)))
            yield message
        finally:
            if not done and said:
                # Cut short (cancelled by a barge-in, or the stream broke): keep only what was said,
                # as plain text — tools the model was about to call never ran.
                message = {"role": "assistant", "content": [{"type": "text", "text": " ".join(said)}]}
                self.messages.append(message)
                self._spoken.append((message, " ".join(said)))

    async def _run_tools(self, uses: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[AgentAction]]:
        results: list[dict[str, Any]] = []
        actions: list[AgentAction] = []
        for use in uses:
            before = self.tools.booking
            result = await self.tools.run(use["name"], use.get("input") or {})
            if self.tools.booking is not None and self.tools.booking is not before:
                await self._booking_confirmed(self.tools.booking)
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": use["id"],
                "content": result.content,
            }
            if result.is_error:
                block["is_error"] = True
            results.append(block)
            if isinstance(result.action, SendDigits | Hangup):
                actions.append(result.action)
        return results, actions

    async def _booking_confirmed(self, booking: Booking) -> None:
        """Tell the owner at once (it is made durable), so a crash before the goodbye keeps it."""
        if self._on_booking is None:
            return
        try:
            await self._on_booking(booking)
        except Exception:  # the call goes on; the outcome at hang-up still carries the booking
            log.exception("recording the confirmed booking failed")
