"""The streaming Claude turn loop of one phone call.

Per caller input the model's reply is streamed, cut into clauses and handed to
TTS while the model is still writing. Tool calls run once the model's message
is complete and their results go back to the model in the same reply. The
history sent to the model holds only what the callee actually heard: a
barge-in (the session cancels the reply iterator, then calls ``interrupted``)
trims the reply to the played words, and a cancelled reply never leaves a
``tool_use`` without its ``tool_result``.

The callee's first words from the assistant are always the product's own fixed disclosure
(``disclosure_sentence``), never the model's: whatever is said first (a model clause, a retry
filler, the apology, a goodbye at a cap) is preceded by it, and a barge-in that cut it short
makes it due again. A reply that only presses keys says nothing, so it discloses nothing yet.

The opening needs no model: the first reply (to the callee's greeting, or to the greet-after
timer) is the disclosure plus ``opening_line`` (the errand in one sentence), built from the errand,
so its audio can be rendered while the phone rings (``fixed_phrases``). It goes into history as the
assistant's first message; the model takes over from the callee's answer. A greeting that is a
phone menu or a request to hold is the model's to answer (keys, "Sure, I'll hold."), and a
disclosure cut off before it was heard brings the fixed opening back once more.

Short acknowledgements (``ACKS``) are said for the model, from pre-rendered audio, when a model
round opens with a lookup tool and no words: the callee hears "Let me check." while the tool and
the next model round run. At most one per reply, and it is written into that round's assistant
message, so the model knows it was said.
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
from datetime import date, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import anthropic
import httpx2
from anthropic import AsyncStream
from anthropic.types import InputJSONDelta, RawMessageStreamEvent

from agent.answer import AnswerBuilder
from agent.base import (
    Agent,
    AgentAction,
    CallConnected,
    CalleeSaid,
    CalleeSilent,
    CallerInput,
    DigitsHeard,
    Hangup,
    Hold,
    MachineBeep,
    PreparedCounts,
    Say,
    SendDigits,
)
from agent.chunking import ClauseChunker
from agent.early import EarlyRound
from agent.history import Message, add_user, drop_empty, prefix_text, set_text, text_of
from agent.limits import CallLimits
from agent.llm import MODEL_RETRY, from_transport_error, to_provider_error
from agent.prompts import DEFAULT_TEMPLATE, build_system_prompt
from agent.spoken import days_phrase, service_phrase
from agent.tools import DEFAULT_MIN_LEAD, AskPerson, BookingTools, FreeBusy, ToolResult
from agent.voicemail import voicemail_body
from storage.errors import user_message
from storage.models import Booking, CallOutcome, CallRequest, OutcomeKind, utcnow
from storage.retry import Attempts, Backoff

log = logging.getLogger(__name__)

APOLOGY = "I'm sorry, I'm having technical trouble on my end. I'll call back later. Goodbye."
#: Said when a per-call cap (``CallLimits``) ends the call.
CAP_GOODBYE = "I'm sorry, I have to end this call now. Thank you for your time, goodbye."
#: Said for the model when a round opens with this tool and no words (pre-rendered audio).
ACKS = {"check_availability": "Let me check.", "confirm_booking": "Sure."}
#: A greeting the fixed opening does not answer: a phone menu, or a request to hold.
_NOT_FOR_OPENING = re.compile(
    r"\bpress(ing)?\b|\bdial\b|\bhold\b|one moment|just a moment|one sec|bear with", re.I
)
#: A time of day in the callee's words ("3pm", "3:30", "noon", "at four"): an offered slot, which a
#: person answers with "Let me check." before looking at the calendar.
_OFFERED_TIME = re.compile(
    r"\b\d{1,2}(:\d{2})?\s*(a\.?\s?m\.?|p\.?\s?m\.?)(?![a-z])|\b\d{1,2}:\d{2}\b|\bnoon\b"
    r"|\bat (one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve)\b",
    re.I,
)
#: Said while the person is asked over chat (``ask_person``), about every ``ask_every`` seconds.
STILL_CHECKING = "Still checking, thanks for waiting."
#: Puts a question to the person over chat and waits for the answer: None when none came in time.
Ask = Callable[[str, Sequence[str]], Awaitable[str | None]]
#: Times the fixed opening is said at most (a disclosure cut off early brings it back once).
_MAX_OPENINGS = 2


def disclosure_sentence(assistant_name: str, person_name: str, *, transcript_notice: bool) -> str:
    """The fixed words that open every call (SECURITY.md: the callee learns first that it is an AI).

    Args:
        assistant_name: how the assistant introduces itself.
        person_name: whom it calls for.
        transcript_notice: add that the call is transcribed (all-party-consent jurisdictions).
    """
    words = f"Hi, this is {assistant_name}, an AI assistant calling on behalf of {person_name}."
    if transcript_notice:
        words += f" This call is transcribed for {person_name}."
    return words


def called_back_disclosure(
    assistant_name: str, person_name: str, service: str, *, transcript_notice: bool
) -> str:
    """The disclosure when the business called us back (an errand's call back, not our call).

    Still the first words the caller hears, and still fixed: who we are, that we are an AI,
    whom we act for, and which errand their call is about.
    """
    words = (
        f"Hi, this is {assistant_name}, the AI assistant for {person_name},"
        f" thanks for calling back about the {service.strip().rstrip('.')}."
    )
    if transcript_notice:
        words += f" This call is transcribed for {person_name}."
    return words


def unknown_caller_message(assistant_name: str) -> str:
    """What a caller hears whose number has no open errand: the disclosure, then goodbye."""
    return (
        f"Hi, this is {assistant_name}, an AI assistant. Thanks for calling back, but I have"
        " nothing open with this number right now, so there is nothing to follow up. Goodbye."
    )


def opening_line(request: CallRequest) -> str:
    """The errand in one sentence, said right after the disclosure without asking the model.

    Only the service and the dates: times are in the person's zone, which need not be the
    business's, so the model (which is told about both zones) talks about times.
    """
    service, days = service_phrase(request), days_phrase(request.window)
    return f"I'd like to book {service}, {days}. Do you have anything available?"


def voicemail_message(
    request: CallRequest, callback_number: str, assistant_name: str, *, transcript_notice: bool = False
) -> str:
    """The whole message left on an answering machine after its beep: the disclosure first, then
    whom it is for, what it is about and the number to call back (``agent.voicemail``)."""
    disclosure = disclosure_sentence(assistant_name, request.person_name, transcript_notice=transcript_notice)
    return f"{disclosure} {voicemail_body(request, callback_number)}"


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
    if isinstance(event, MachineBeep):
        return "[an answering machine beeped: it is recording]"
    raise TypeError(f"unknown caller input {event!r}")


class _RoundFailed(Exception):
    """A model round failed after speech had started: it cannot be retried invisibly."""


class ClaudeAgent(Agent):
    """One call's conversation with Claude (an ``agent.base.Agent``).

    Args:
        client: an ``AsyncAnthropic`` (see ``agent.llm.build_anthropic``; built with ``max_retries=0``).
        model: model name, e.g. settings.anthropic_model.
        request: the errand.
        calendar: the person's free/busy source (``agent.calendar.GraphCalendar``).
        assistant_name: how the assistant introduces itself.
        clock: aware-UTC wall clock (for "today" in the prompt).
        monotonic: clock for ``Say.first_token_at``.
        sleep: waits between retries (tests pass a fast one).
        retry: back-off policy for transient model errors (``storage.retry``).
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
        limits: per-call caps (turns, tool calls, DTMF presses); reaching one ends the call.
        transcript_notice: the disclosure adds that the call is transcribed for the person.
        min_lead: how soon after now a booking may start at the earliest.
        fixed_opening: answer the callee's greeting (or the greet-after timer) with the disclosure
            and ``opening_line`` instead of a model round (``fixed_phrases`` renders it ahead).
        acknowledgements: say ``ACKS`` for the model when a round opens with a lookup tool and no
            words (the prompt then tells the model it need not say "Let me check." itself).
        prompt_template: the system prompt's wording (``agent.prompts.DEFAULT_TEMPLATE`` unless an
            eval measures another version, see AGENT_PROMPT_FILE).
        callback_number: our number, read out in the message left after a machine's beep
            (``MachineBeep``, ``voicemail_message``); None leaves no message, only hangs up.
        called_back: the business called us (a call back about this errand): the disclosure
            thanks them for calling back (``called_back_disclosure``).
        ask: puts a question to the person over chat and returns their answer, or None when none
            came in time (it owns the timeout). Given, the model may call ``ask_person``: the
            callee hears "One moment, let me check with <person>." and, while the answer is
            awaited, ``STILL_CHECKING`` every ``ask_every`` seconds; the reply is busy meanwhile,
            so the call's silence timers do not run. No answer ends the call as needs_user.
        ask_every: seconds between the "still checking" lines (counted with ``sleep``).
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
        retry: Backoff = MODEL_RETRY,
        max_tool_rounds: int = 6,
        max_tokens: int = 400,
        filler_phrases: Sequence[str] = ("One moment, please.",),
        on_booking: Callable[[Booking], Awaitable[None]] | None = None,
        prefetch_calendar: bool = False,
        first_clause_words: int | None = None,
        limits: CallLimits | None = None,
        transcript_notice: bool = True,
        min_lead: timedelta = DEFAULT_MIN_LEAD,
        fixed_opening: bool = False,
        acknowledgements: bool = False,
        prompt_template: str = DEFAULT_TEMPLATE,
        callback_number: str | None = None,
        called_back: bool = False,
        ask: Ask | None = None,
        ask_every: float = 15.0,
    ) -> None:
        self._client = client
        self._ask = ask
        self._ask_every = ask_every
        self._person_first = request.person_name.split()[0] if request.person_name.split() else "them"
        self.checking = f"One moment, let me check with {self._person_first}."
        self._model = model
        self._monotonic = monotonic
        self._sleep = sleep
        self._retry = retry
        self._max_tool_rounds = max_tool_rounds
        self._max_tokens = max_tokens
        self._first_clause_words = first_clause_words
        if called_back:
            self.disclosure = called_back_disclosure(
                assistant_name, request.person_name, request.service, transcript_notice=transcript_notice
            )
        else:
            self.disclosure = disclosure_sentence(
                assistant_name, request.person_name, transcript_notice=transcript_notice
            )
        self.opening = opening_line(request)
        # After a machine's beep: the disclosure (through ``_say``), then this. None: leave nothing.
        self.voicemail = voicemail_body(request, callback_number) if callback_number else None
        self._fixed_opening = fixed_opening
        self._acks = ACKS if acknowledgements else {}
        self._openings = 0  # fixed openings said so far
        self._ack_said = False  # an acknowledgement was said in the current reply
        #: said at once for an offered time, before the model's first round: goes into that round's
        #: assistant message (or its stump) as the first words
        self._pre_ack: str | None = None
        self._prepared = self._discarded = 0  # early requests started / thrown away
        self._disclosed = False  # the callee has heard the disclosure (so far as we know)
        self._unrecorded = False  # said, but not yet put into an assistant message of history
        self._limits = limits or CallLimits()
        self._turns = 0
        self._tool_calls = 0
        self._dtmf_presses = 0
        self._fillers = list(filler_phrases) or ["One moment, please."]
        self._filler_i = 0
        self._filler_said = False
        self._on_booking = on_booking
        self.tools = BookingTools(
            request,
            calendar,
            prefetch=prefetch_calendar,
            clock=clock,
            min_lead=min_lead,
            live_ask=ask is not None,
        )
        today: date = clock().astimezone(ZoneInfo(request.business_tz)).date()
        self.system_prompt = build_system_prompt(
            request,
            assistant_name=assistant_name,
            today=today,
            opening=self.disclosure,
            acks_said=acknowledgements,
            template=prompt_template,
        )
        schemas = self.tools.schemas()
        schemas[-1] = {**schemas[-1], "cache_control": {"type": "ephemeral"}}
        self._tool_defs = schemas
        self.messages: list[Message] = []
        self._outcome: CallOutcome | None = None
        # What the callee was played during the current reply, in order: (assistant message or None
        # for a filler that is not in history, its text).
        self._spoken: list[tuple[Message | None, str]] = []
        self._early: EarlyRound | None = None  # a first round started on an eager end of turn
        self._holds = 0  # times the model agreed to hold (wait_on_hold)

    # -- Agent interface ----------------------------------------------------------------------------

    @property
    def holds(self) -> int:
        return self._holds

    def outcome(self) -> CallOutcome | None:
        if self._outcome is not None:
            return self.tools.keep_booking(self._outcome)
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
            self._discarded += 1
            await early.cancel()
        await self.tools.aclose()

    def fixed_phrases(self) -> tuple[str, ...]:
        """The disclosure, this errand's opening line and the acknowledgements (rendered ahead)."""
        opening = (self.disclosure, self.opening) if self._fixed_opening else ()
        voicemail = (self.disclosure, self.voicemail) if self.voicemail else ()
        return tuple(dict.fromkeys((*opening, *voicemail, *self._acks.values())))

    def prepared_counts(self) -> PreparedCounts:
        return PreparedCounts(started=self._prepared, discarded=self._discarded)

    def _opening_fits(self, event: CallerInput) -> bool:
        """Is ``event`` answered with the fixed opening (no model round)?"""
        if not self._fixed_opening or self._disclosed or self._outcome is not None:
            return False
        if self._openings >= _MAX_OPENINGS:
            return False
        if isinstance(event, CalleeSaid):
            return not _NOT_FOR_OPENING.search(event.text)
        return isinstance(event, CallConnected | CalleeSilent)

    def answers_at_once(self, event: CallerInput) -> bool:
        return self._outcome is None and self._opening_fits(event)

    def prepare(self, event: CallerInput) -> None:
        """Start the model on ``event`` now, before it is final (Flux ``EagerEndOfTurn``).

        ``reply(event)`` then reads this request's answer instead of making its own, provided the
        history it would send is still exactly the same (``agent.early``). Replaces an earlier
        preparation; costs one model request that is thrown away if the callee goes on talking.
        """
        self.discard_prepared()
        if self._outcome is not None or self._opening_fits(event):
            return  # the fixed opening answers it: no model round to start
        messages = copy.deepcopy(self.messages)
        add_user(messages, [{"type": "text", "text": render_input(event)}])
        self._prepared += 1
        self._early = EarlyRound(messages, lambda: self._create(messages))

    def discard_prepared(self) -> None:
        """The callee went on talking (Flux ``TurnResumed``): stop the early request."""
        early, self._early = self._early, None
        if early is not None:
            self._discarded += 1
            early.discard()

    def _claim_prepared(self) -> EarlyRound | None:
        """The early round, if it was started with exactly the history now in ``messages``."""
        early, self._early = self._early, None
        if early is not None and not early.matches(self.messages):
            self._discarded += 1
            early.discard()
            return None
        return early

    async def reply(self, event: CallerInput) -> AsyncGenerator[AgentAction, None]:
        """Stream the answer to one caller input (see the module docstring)."""
        if self._outcome is not None:
            return
        if isinstance(event, MachineBeep):
            self.discard_prepared()
            for action in self._leave_voicemail():
                yield action
            return
        self._spoken = []
        self._filler_said = self._ack_said = False
        self._pre_ack = None
        self._turns += 1
        if self._turns > self._limits.max_turns:
            self.discard_prepared()
            for action in self._end_at_cap(f"the limit of {self._limits.max_turns} turns per call"):
                yield action
            return
        if self._opening_fits(event):
            self.discard_prepared()
            for say in self._open(event):
                yield say
            return
        add_user(self.messages, [{"type": "text", "text": render_input(event)}])
        early = self._claim_prepared()
        first = True
        pre_ack = self._acks.get("check_availability")
        if pre_ack is not None and self._offers_time(event):
            # A person says "Let me check." as soon as a time is offered, not once they know a
            # lookup is needed: the callee hears it while the model starts on the lookup.
            self._ack_said, self._pre_ack, first = True, pre_ack, False
            try:
                for say in self._say(pre_ack, self._monotonic()):
                    yield say
            except BaseException:  # cut off before the model round began: history keeps the words
                self._pre_ack = None
                message: Message = {"role": "assistant", "content": [{"type": "text", "text": pre_ack}]}
                self._record_disclosure(message)
                self.messages.append(message)
                self._spoken.append((message, pre_ack))
                raise
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
                for say in self._say(APOLOGY):
                    yield say
                yield Hangup(self.tools.keep_booking(self._outcome))
                return
            if assistant is None:
                return
            uses = [b for b in assistant["content"] if b["type"] == "tool_use"]
            if not uses:
                return
            cap = self._tool_cap(uses)
            if cap is not None:
                # History stays well-formed (every tool_use answered), though no more rounds follow.
                self.messages.append(assistant)
                add_user(self.messages, [_refused(use, cap) for use in uses])
                for action in self._end_at_cap(cap):
                    yield action
                return
            try:
                results, actions, ran = await self._run_tools(uses)
            except BaseException:
                # Cancelled while a tool ran: keep what was said, without the unanswered tool_use.
                set_text(assistant, text_of(assistant))
                assistant["content"][:] = [b for b in assistant["content"] if b["type"] == "text"]
                if assistant["content"]:
                    self.messages.append(assistant)
                    drop_empty(self.messages)
                raise
            unanswered: CallOutcome | None = None
            asked = next((i for i, r in enumerate(ran) if isinstance(r.action, AskPerson)), None)
            if asked is not None:
                ask = ran[asked].action
                assert isinstance(ask, AskPerson)
                answer: list[str | None] = []
                try:
                    async for say in self._ask_person(ask, answer):
                        yield say
                except BaseException:
                    # The callee spoke (or the call ended) first: history stays well-formed.
                    results[asked]["content"] = (
                        "Interrupted before the person answered: you have no answer from them."
                    )
                    self.messages.append(assistant)
                    add_user(self.messages, results)
                    raise
                results[asked]["content"], unanswered = self._person_answered(ask, answer[0])
            # Both appended in one step: a cancellation can never separate tool_use from tool_result.
            self.messages.append(assistant)
            add_user(self.messages, results)
            if unanswered is not None:  # no answer in time: today's needs_user, a call back later
                self._outcome = self.tools.keep_booking(unanswered)
                for say in self._say(self._no_answer_goodbye()):
                    yield say
                yield Hangup(self._outcome)
                return
            held = any(isinstance(r.action, Hold) for r in ran)
            for action in actions:
                if isinstance(action, SendDigits):
                    self._dtmf_presses += len(action.digits)
                    if self._dtmf_presses > self._limits.max_dtmf_presses:
                        cap = f"the limit of {self._limits.max_dtmf_presses} key presses per call"
                        for end in self._end_at_cap(cap):
                            yield end
                        return
                if isinstance(action, Hangup):
                    self._outcome = action.outcome
                yield action
                if isinstance(action, Hangup):
                    return
            if held:
                # On hold nothing more is said: no further model round until the callee speaks.
                self._holds += 1
                return

    def interrupted(self, heard: str) -> None:
        """Trim the last reply in history to exactly what the callee heard (``heard``).

        A disclosure the callee did not hear in full does not count: it is said again first.
        """
        remaining = heard.strip()
        if not remaining and any(text is self.opening for _, text in self._spoken):
            self._openings -= 1  # an opening cut before a word of it played does not count
        kept: dict[int, tuple[Message, list[str]]] = {}
        for message, text in self._spoken:
            if len(remaining) >= len(text):
                keep, remaining = text, remaining[len(text) :].strip()
            else:
                keep, remaining = remaining, ""
            if text is self.disclosure and keep != text:
                self._disclosed = self._unrecorded = False
                keep = ""  # a cut disclosure is said again whole: history does not keep the stump
            if message is not None:
                kept.setdefault(id(message), (message, []))[1].append(keep)
        for message, parts in kept.values():
            set_text(message, " ".join(p for p in parts if p))
        self._spoken = []
        drop_empty(self.messages)

    def _offers_time(self, event: CallerInput) -> bool:
        """Did the callee offer a time (answered with an acknowledgement before the model)?"""
        if not isinstance(event, CalleeSaid) or self.tools.booking is not None:
            return False
        return _OFFERED_TIME.search(event.text) is not None

    def _open(self, event: CallerInput) -> list[Say]:
        """The fixed opening as ``Say``s, already in history (``interrupted`` trims it if cut)."""
        self._openings += 1
        add_user(self.messages, [{"type": "text", "text": render_input(event)}])
        message: Message = {"role": "assistant", "content": [{"type": "text", "text": self.opening}]}
        says = self._say(self.opening)
        self._record_disclosure(message)
        self.messages.append(message)
        self._spoken.append((message, self.opening))
        return says

    async def _ask_person(self, ask: AskPerson, answer: list[str | None]) -> AsyncGenerator[Say, None]:
        """Say we are checking, ask the person (``ask``) and keep the line while waiting.

        The answer (None: none in time, or asking failed) is appended to ``answer``.
        """
        assert self._ask is not None, "ask_person is offered only with an ask callable"
        for say in self._say(self.checking):
            yield say
        self._spoken.append((None, self.checking))
        pending = asyncio.ensure_future(self._ask(ask.question, ask.options))
        try:
            while True:
                tick = asyncio.ensure_future(self._sleep(self._ask_every))
                try:
                    await asyncio.wait({pending, tick}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    tick.cancel()
                    await asyncio.gather(tick, return_exceptions=True)
                if pending.done():
                    break
                for say in self._say(STILL_CHECKING):
                    yield say
                self._spoken.append((None, STILL_CHECKING))
        finally:
            if not pending.done():
                pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        try:
            answer.append(pending.result())
        except Exception:  # a chat that cannot be reached is no answer: the call goes on as needs_user
            log.exception("asking the person failed")
            answer.append(None)

    def _person_answered(self, ask: AskPerson, answer: str | None) -> tuple[str, CallOutcome | None]:
        """The tool result for the model and, without an answer, the needs_user outcome."""
        person = self._person_first
        said = f'You said "{self.checking}" and the callee waited.'
        if answer is not None and answer.strip():
            words = answer.strip()
            return (
                f"{said} ANSWER FROM {person.upper()} (the person you call for, over chat; not the "
                f"callee's words): “{words}”. Pass it on to the callee and carry on.",
                None,
            )
        outcome = CallOutcome(
            kind=OutcomeKind.NEEDS_USER,
            summary=f"They asked something only {person} can answer; no answer came during the call.",
            question=ask.question,
        )
        return f"{said} NO ANSWER from {person} in time: the call ends and they will be called back.", outcome

    def _no_answer_goodbye(self) -> str:
        return (
            f"I'm sorry, I couldn't reach {self._person_first} just now. "
            "I'll call you back with the answer. Thank you, goodbye."
        )

    def _leave_voicemail(self) -> list[AgentAction]:
        """The fixed voicemail message (if any), then hang up: VOICEMAIL, so the errand is retried.

        A machine records from its beep, so whatever was said before it (the opening over the
        greeting) is not on the recording: the disclosure is due again and ``_say`` puts it first.
        """
        self._spoken = []
        if self.voicemail is None:
            self._outcome = CallOutcome(OutcomeKind.VOICEMAIL, summary="reached voicemail; no message left")
            return [Hangup(self._outcome)]
        self._disclosed = False
        summary = "left a voicemail asking them to call back"
        self._outcome = CallOutcome(OutcomeKind.VOICEMAIL, summary=summary)
        return [*self._say(self.voicemail), Hangup(self._outcome)]

    def _say(self, text: str, first_token_at: float | None = None) -> list[Say]:
        """``text`` as ``Say``s, preceded by the fixed disclosure if the callee has not heard it yet.

        The one gate every spoken word of the agent passes through (model clauses, fillers, the
        apology, the goodbye at a cap), so no path can speak before the disclosure.
        """
        if self._disclosed:
            return [Say(text, first_token_at)]
        self._disclosed = self._unrecorded = True
        self._spoken.append((None, self.disclosure))
        return [Say(self.disclosure, first_token_at), Say(text)]

    def _record_disclosure(self, message: Message) -> None:
        """Put a disclosure said in this reply at the start of ``message`` (history = what was heard)."""
        if not self._unrecorded:
            return
        self._unrecorded = False
        prefix_text(message["content"], self.disclosure)
        self._spoken = [
            (message, text) if message_ is None and text is self.disclosure else (message_, text)
            for message_, text in self._spoken
        ]

    def _tool_cap(self, uses: list[dict[str, Any]]) -> str | None:
        """The cap these tool calls would pass, in words, or None (and count them)."""
        if len(uses) > self._limits.max_tool_calls_per_round:
            return f"the limit of {self._limits.max_tool_calls_per_round} tool calls in one answer"
        self._tool_calls += len(uses)
        if self._tool_calls > self._limits.max_tool_calls:
            return f"the limit of {self._limits.max_tool_calls} tool calls per call"
        return None

    def _end_at_cap(self, cap: str) -> list[AgentAction]:
        """End the call politely because ``cap`` was reached (FAILED: a retry would loop the same way)."""
        log.warning("call ended at a cap: %s", cap)
        outcome = CallOutcome(kind=OutcomeKind.FAILED, summary=f"The call was ended at {cap}.")
        self._outcome = self.tools.keep_booking(outcome)
        return [*self._say(CAP_GOODBYE), Hangup(self._outcome)]

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
        tries = Attempts(self._retry, clock=self._monotonic)
        while True:
            spoke = False
            try:
                async with aclosing(self._round(first, early)) as items:
                    early = None
                    async for item in items:
                        spoke = spoke or isinstance(item, Say)
                        yield item
                return
            except anthropic.APIError as e:
                error = to_provider_error(e)
                wait = tries.failed(error)
                if spoke or wait is None:
                    # Whatever was spoken stays in history (``_round`` committed it).
                    if spoke and wait is not None:
                        return  # the callee heard a partial answer; let them respond to it
                    # The SDK's text can carry request ids and URLs: the log has it, the person does not.
                    log.warning("model unavailable: %r", e)
                    summary = f"Model unavailable: {user_message(error)}."
                    self._outcome = CallOutcome(kind=OutcomeKind.ERROR, summary=summary)
                    return
                # storage.retry's "one moment" point (an async generator yields it here, between tries)
                if not self._filler_said:  # once per reply, not per model round: no "one moment" twice
                    self._filler_said = True
                    text = self._fillers[self._filler_i % len(self._fillers)]
                    self._filler_i += 1
                    for say in self._say(text):
                        yield say
                    self._spoken.append((None, text))
                await self._sleep(wait)

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
        said: list[str] = []
        ack: str | None = None
        first_token_at: float | None = None
        done = retryable = False
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
                                pieces = chunker.feed(delta.text)
                            elif isinstance(delta, InputJSONDelta):
                                answer.partial_json(ev.index, delta.partial_json)
                        else:
                            answer.on_event(ev)
                            if ev.type == "content_block_stop":  # speak text before a tool runs
                                pieces = chunker.flush()
                            elif ev.type == "content_block_start" and not said and not self._ack_said:
                                block = ev.content_block
                                ack = self._acks.get(block.name) if block.type == "tool_use" else None
                                if ack is not None:  # a lookup with no words first: say one for it
                                    self._ack_said = True
                                    if first_token_at is None:
                                        first_token_at = self._monotonic()
                                    pieces = [ack]
                        for piece in pieces:
                            said.append(piece)
                            for say in self._say(piece, first_token_at if first and len(said) == 1 else None):
                                yield say
                    sdk_stream = stream if early is None else early.stream
                    content = answer.content(sdk_stream.response.request if sdk_stream else None)
            except httpx2.TransportError as e:  # a stalled or dropped stream mid-answer
                raise from_transport_error(e) from e
            except anthropic.APIError:
                retryable = True
                raise
            for piece in chunker.flush():
                said.append(piece)
                for say in self._say(piece, first_token_at if first and len(said) == 1 else None):
                    yield say
            done = True
            pre, self._pre_ack = self._pre_ack, None
            if pre is not None:
                content = list(content or [])
                prefix_text(content, pre)
                said.insert(0, pre)
            if not content:
                return
            message: Message = {"role": "assistant", "content": content}
            if ack is not None:
                prefix_text(message["content"], ack)
            self._record_disclosure(message)
            if not any(b["type"] == "tool_use" for b in content):
                self.messages.append(message)
            self._spoken.append((message, " ".join(said)))
            yield message
        finally:
            if not done and (said or self._pre_ack is not None and not (retryable and not said)):
                # Cut short (cancelled by a barge-in, or the stream broke): keep only what was said,
                # as plain text — tools the model was about to call never ran. An acknowledgement
                # said before the round waits for the retry of a round that failed unheard.
                pre, self._pre_ack = self._pre_ack, None
                words = " ".join(p for p in (pre, *said) if p)
                message = {"role": "assistant", "content": [{"type": "text", "text": words}]}
                self._record_disclosure(message)
                self.messages.append(message)
                self._spoken.append((message, words))

    async def _run_tools(
        self, uses: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[AgentAction], list[ToolResult]]:
        results: list[dict[str, Any]] = []
        actions: list[AgentAction] = []
        ran: list[ToolResult] = []
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
            ran.append(result)
            if isinstance(result.action, SendDigits | Hangup):
                actions.append(result.action)
        return results, actions, ran

    async def _booking_confirmed(self, booking: Booking) -> None:
        """Tell the owner at once (it is made durable), so a crash before the goodbye keeps it."""
        if self._on_booking is None:
            return
        try:
            await self._on_booking(booking)
        except Exception:  # the call goes on; the outcome at hang-up still carries the booking
            log.exception("recording the confirmed booking failed")


def _refused(use: dict[str, Any], cap: str) -> dict[str, Any]:
    """The tool_result for a tool call not run because the call reached ``cap``."""
    return {
        "type": "tool_result",
        "tool_use_id": use["id"],
        "content": f"Not run: the call reached {cap} and is ending.",
        "is_error": True,
    }
