"""The tools the phone model may use, with schemas generated from typed methods.

The model proposes; these handlers decide. ``confirm_booking`` is the only way a
slot becomes a booking, and it refuses anything outside the person's window, in the
past or too soon, too long, busy in their calendar, or a second booking — so a model
that misreads a time (or a callee who talks it into one) can never book it. The
calendar stays private: tools answer "fits" or "does not fit" for a proposed slot
inside the errand's window, never busy spans, other events or anything outside it.
Schemas come from the handlers' annotations and Google-style docstrings so the
description the model reads and the code that runs can't drift apart.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as tod
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

from agent.base import Hangup, Hold, SendDigits
from storage import text
from storage.errors import user_message
from storage.models import Booking, CallOutcome, CallRequest, OutcomeKind, utcnow

_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
log = logging.getLogger(__name__)
Spans = list[tuple[datetime, datetime]]

#: A live calendar check started when ``check_availability`` found a slot free stands in for
#: ``confirm_booking``'s own live check for this long (the model's next round is a few hundred ms).
LIVE_CHECK_MAX_AGE = 10.0

#: A booking must start at least this long after now (``MIN_LEAD_MINUTES``).
DEFAULT_MIN_LEAD = timedelta(minutes=60)
#: The longest booking accepted, as a multiple of the errand's duration.
MAX_DURATION_FACTOR = 1.5


class FreeBusy(Protocol):
    """What the tools need from a calendar (``agent.calendar.GraphCalendar`` provides it)."""

    async def busy(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]: ...


class ToolInputError(ValueError):
    """The model called a tool with arguments that make no sense; the message tells it why."""


@dataclass(frozen=True)
class AskPerson:
    """Put the callee's question to the person over chat while the line is held (``ClaudeAgent``)."""

    question: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class ToolResult:
    """What a tool call produced: text for the model, and maybe an action for the call."""

    content: str
    is_error: bool = False
    action: SendDigits | Hangup | Hold | AskPerson | None = None


def tool(func: Callable[..., Awaitable[ToolResult]]) -> Callable[..., Awaitable[ToolResult]]:
    """Mark an async method as a model tool; its schema is built from its signature and docstring."""
    func.__tool__ = True  # type: ignore[attr-defined]
    return func


def tool_schema(func: Callable[..., Any]) -> dict[str, Any]:
    """The Anthropic tool definition (name, description, input_schema) of a typed function.

    The description is the docstring's text before ``Args:``; each parameter's
    description comes from its ``Args:`` entry; ``Literal`` becomes an enum and
    parameters with defaults are optional.
    """
    hints = typing.get_type_hints(func)
    doc = inspect.getdoc(func) or ""
    summary, arg_docs = _parse_docstring(doc)
    props: dict[str, Any] = {}
    required: list[str] = []
    for name, param in inspect.signature(func).parameters.items():
        if name == "self":
            continue
        prop = _json_type(hints[name])
        if name in arg_docs:
            prop["description"] = arg_docs[name]
        props[name] = prop
        if param.default is inspect.Parameter.empty:
            required.append(name)
    return {
        "name": func.__name__,
        "description": summary,
        "input_schema": {"type": "object", "properties": props, "required": required},
    }


def _json_type(hint: Any) -> dict[str, Any]:
    origin = typing.get_origin(hint)
    if origin is Literal:
        values = list(typing.get_args(hint))
        return {"type": _JSON_TYPES[type(values[0])], "enum": values}
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _json_type(args[0])
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    raise TypeError(f"unsupported tool parameter type {hint!r}")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    head, _, rest = doc.partition("\nArgs:\n")
    args: dict[str, str] = {}
    current = None
    for line in rest.splitlines():
        if line and not line.startswith(" "):
            break  # next section ("Returns:")
        m = re.match(r"^\s{2,6}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
        if m:
            current = m.group(1)
            args[current] = m.group(2).strip()
        elif current and line.strip():
            args[current] += " " + line.strip()
    return " ".join(head.split()), args


def parse_local(value: str, tz: ZoneInfo) -> datetime:
    """An ISO date-time; naive values are taken as wall-clock time in ``tz``."""
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError as e:
        raise ToolInputError(f"{value!r} is not an ISO date-time like 2026-12-01T14:00") from e
    return dt.replace(tzinfo=tz) if dt.tzinfo is None else dt.astimezone(tz)


def _overlapping(spans: Spans, start: datetime, end: datetime) -> Spans:
    return [(s, e) for s, e in spans if s < end and e > start]


def _fmt(dt: datetime) -> str:
    return dt.strftime("%A %Y-%m-%d %H:%M")


class BookingTools:
    """The tool handlers of one call, holding the booking agreed so far.

    With ``prefetch`` the person's busy intervals for the whole booking window are fetched once,
    as soon as the tools exist (the call is still ringing), so ``check_availability`` answers from
    that snapshot instead of a Graph round trip in the middle of the conversation.
    ``confirm_booking`` never trusts the snapshot: it checks the calendar live before recording
    a booking. That live check is started as soon as ``check_availability`` finds a slot free,
    so it runs while the model writes its next answer; a confirm of the same slot within
    ``LIVE_CHECK_MAX_AGE`` seconds uses it, anything else checks afresh.

    Args:
        request: the errand (window in ``person_tz``).
        calendar: the person's free/busy source.
        prefetch: fetch the window's busy intervals now (needs a running event loop).
        monotonic: clock for the age of a live check.
        clock: aware-UTC wall clock ("not in the past", ``min_lead``).
        min_lead: how soon after now a booking may start at the earliest.
        live_ask: offer ``ask_person`` (the person can be asked over chat during the call).
    """

    def __init__(
        self,
        request: CallRequest,
        calendar: FreeBusy,
        *,
        prefetch: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = utcnow,
        min_lead: timedelta = DEFAULT_MIN_LEAD,
        live_ask: bool = False,
    ) -> None:
        self.request = request
        self._clock = clock
        self._min_lead = min_lead
        self.calendar = calendar
        self.business_tz = ZoneInfo(request.business_tz)
        self.person_tz = ZoneInfo(request.person_tz)
        self.booking: Booking | None = None
        self._monotonic = monotonic
        w = request.window
        self.snapshot_span = (
            datetime.combine(w.start_date, tod(0), self.person_tz),
            datetime.combine(w.end_date + timedelta(days=1), tod(0), self.person_tz),
        )
        self._snapshot: asyncio.Task[Spans] | None = None
        self._live: dict[tuple[datetime, datetime], tuple[float, asyncio.Task[Spans]]] = {}
        self._handlers: dict[str, Callable[..., Awaitable[ToolResult]]] = {
            name: fn
            for name, fn in inspect.getmembers(self, inspect.ismethod)
            if getattr(fn, "__tool__", False)
        }
        if not live_ask:
            del self._handlers["ask_person"]
        if prefetch:
            self._snapshot = self._spawn(self.calendar.busy(*self.snapshot_span), "calendar snapshot")

    @staticmethod
    def _spawn(coro: Awaitable[Spans], name: str) -> asyncio.Task[Spans]:
        task: asyncio.Task[Spans] = asyncio.ensure_future(coro)
        task.set_name(name)
        # Its error is handled where the result is used; mark it retrieved so an unused failed
        # prefetch is not reported as "exception never retrieved".
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    async def aclose(self) -> None:
        """Cancel and await the calendar fetches still running (the call is over)."""
        tasks = [t for _, t in self._live.values()]
        if self._snapshot is not None:
            tasks.append(self._snapshot)
        self._live.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def schemas(self) -> list[dict[str, Any]]:
        """Tool definitions for the Messages API, in a stable order (cache-friendly)."""
        return [tool_schema(self._handlers[n]) for n in sorted(self._handlers)]

    async def run(self, name: str, args: dict[str, Any]) -> ToolResult:
        """Run one tool call; any failure becomes an ``is_error`` result, never an exception."""
        handler = self._handlers.get(name)
        if handler is None:
            return ToolResult(f"Unknown tool {name!r}.", is_error=True)
        try:
            inspect.signature(handler).bind(**args)
            return await handler(**args)
        except TypeError as e:
            return ToolResult(f"Bad arguments for {name}: {e}", is_error=True)
        except ToolInputError as e:  # our own words about the arguments: safe to read out
            return ToolResult(f"{name} failed: {e}", is_error=True)
        except Exception as e:  # a tool failure must not end the call: the model hears why
            # Provider text can name the mailbox or tenant: it goes to the (redacted) log only.
            log.warning("tool %s failed: %r", name, e)
            return ToolResult(f"{name} failed: {user_message(e)}.", is_error=True)

    # -- window maths -------------------------------------------------------------------------------

    def window_problem(self, start: datetime, end: datetime) -> str | None:
        """Why ``start``–``end`` cannot be booked, or None.

        Outside the person's window (in their zone), shorter than the errand's duration or longer
        than ``MAX_DURATION_FACTOR`` times it, in the past, or starting within ``min_lead``.
        """
        w = self.request.window
        s, e = start.astimezone(self.person_tz), end.astimezone(self.person_tz)
        where = f"(that is {_fmt(s)}–{e:%H:%M} in the person's time zone {self.request.person_tz})"
        if e <= s:
            return "The end must be after the start."
        if not w.start_date <= s.date() <= w.end_date:
            return f"Outside the acceptable dates {w.start_date}–{w.end_date} {where}."
        if s.time() < w.earliest or e.time() > w.latest or e.date() != s.date():
            return f"Outside the acceptable hours {w.earliest:%H:%M}–{w.latest:%H:%M} {where}."
        if e - s < timedelta(minutes=w.duration_minutes):
            return f"Too short: the appointment needs {w.duration_minutes} minutes."
        longest = int(w.duration_minutes * MAX_DURATION_FACTOR)
        if e - s > timedelta(minutes=longest):
            return f"Too long: the appointment takes {w.duration_minutes} minutes (at most {longest})."
        now = self._clock()
        if s <= now:
            return "That time is in the past."
        if s < now + self._min_lead:
            lead = int(self._min_lead.total_seconds() // 60)
            return f"Too soon: the appointment must start at least {lead} minutes from now."
        return None

    async def _conflicts(self, start: datetime, end: datetime) -> Spans:
        """Busy spans overlapping the slot, from the snapshot when it covers the slot."""
        lo, hi = self.snapshot_span
        task = self._snapshot
        if task is not None and lo <= start and end <= hi:
            try:
                spans = await asyncio.shield(task)  # a barge-in must not cancel the shared fetch
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("calendar snapshot failed (%s); asking the calendar live", e)
                self._snapshot = None
            else:
                return _overlapping(spans, start, end)
        return await self._conflicts_live(start, end)

    async def _conflicts_live(self, start: datetime, end: datetime) -> Spans:
        return _overlapping(await self.calendar.busy(start, end), start, end)

    def _start_live_check(self, start: datetime, end: datetime) -> None:
        old = self._live.pop((start, end), None)
        if old is not None:
            old[1].cancel()
        task = self._spawn(self.calendar.busy(start, end), "live check")
        self._live[(start, end)] = (self._monotonic(), task)

    async def _live_conflicts_for_booking(self, start: datetime, end: datetime) -> Spans:
        """A live answer for the slot: the check begun by ``check_availability`` if recent, else a new one."""
        started = self._live.pop((start, end), None)
        if started is not None:
            at, task = started
            if self._monotonic() - at <= LIVE_CHECK_MAX_AGE:
                return _overlapping(await task, start, end)
            else:
                task.cancel()
        return await self._conflicts_live(start, end)

    # -- tools --------------------------------------------------------------------------------------

    @tool
    async def check_availability(self, start: str, end: str) -> ToolResult:
        """Check whether one proposed slot fits the person: inside their window and free in their
        calendar. Answers only FITS or DOES NOT FIT; it never describes the person's calendar.

        Args:
            start: slot start, ISO local time in the business's time zone, e.g. 2026-12-01T14:00.
            end: slot end, ISO local time in the business's time zone.
        """
        s, e = parse_local(start, self.business_tz), parse_local(end, self.business_tz)
        head = f"Slot {_fmt(s)}–{e:%H:%M} ({self.request.business_tz}):"
        problem = self.window_problem(s, e)
        if problem:  # outside the errand: the calendar is not even asked
            return ToolResult(f"{head} verdict: DOES NOT FIT. {problem}")
        if await self._conflicts(s, e):
            # Only the verdict: never the busy spans or anything else in the person's calendar.
            busy = "The person is not free then; ask for another time."
            return ToolResult(f"{head} verdict: DOES NOT FIT. {busy}")
        self._start_live_check(s, e)  # confirm_booking's live check, overlapped with the model
        return ToolResult(f"{head} verdict: FITS.")

    @tool
    async def confirm_booking(self, start: str, end: str, service: str, notes: str = "") -> ToolResult:
        """Record the slot the business agreed to. Only call this when the callee has offered the slot;
        it refuses slots outside the person's window or busy in their calendar.

        Args:
            start: appointment start, ISO local time in the business's time zone.
            end: appointment end, ISO local time in the business's time zone.
            service: the service booked, e.g. haircut.
            notes: anything agreed worth remembering (price, staff name).
        """
        if self.booking is not None:
            return ToolResult(
                f"REFUSED: a booking is already confirmed in this call ({self.booked_words()}). "
                "Only one booking per call."
            )
        s, e = parse_local(start, self.business_tz), parse_local(end, self.business_tz)
        problem = self.window_problem(s, e)
        if problem:
            return ToolResult(f"REFUSED: {problem} Ask for another time.")
        busy = await self._live_conflicts_for_booking(s, e)  # never the snapshot: correctness first
        if busy:
            return ToolResult("REFUSED: the person is busy then. Ask for another time.")
        # The service is the errand's, not the model's words; notes are callee-influenced: bounded.
        self.booking = Booking(
            start=s, end=e, service=self.request.service, notes=text.bounded(notes, text.NOTES)
        )
        return ToolResult(
            f"CONFIRMED: {self.booked_words()}. "
            "Confirm the details with the callee, then end the call as booked."
        )

    def booked_words(self) -> str:
        """The confirmed booking in words ("haircut on Tuesday 2026-12-01 16:00–16:30 (America/…)")."""
        b = self.booking
        assert b is not None, "booked_words without a booking"
        s, e = b.start.astimezone(self.business_tz), b.end.astimezone(self.business_tz)
        return f"{b.service} on {_fmt(s)}–{e:%H:%M} ({self.request.business_tz})"

    def keep_booking(self, outcome: CallOutcome) -> CallOutcome:
        """``outcome``, turned into BOOKED when a slot was confirmed earlier in the call.

        A confirmed booking is a promise made to the business: whatever ends the call afterwards
        (declined, needs_user, an error, a cap) must not drop it, and the person must hear of both.
        """
        if self.booking is None or outcome.kind is OutcomeKind.BOOKED:
            return outcome
        after = f" After that the call ended as {outcome.kind.value.replace('_', ' ')}"
        after += f": {outcome.summary}" if outcome.summary else "."
        if outcome.question:
            after += f' They also asked: "{outcome.question}"'
        return CallOutcome(
            kind=OutcomeKind.BOOKED,
            summary=text.bounded(f"Booked {self.booked_words()}.{after}", text.SUMMARY),
            booking=self.booking,
        )

    @tool
    async def send_dtmf(self, digits: str) -> ToolResult:
        """Press keys on a phone menu.

        Args:
            digits: the keys to press, 0-9, * and #.
        """
        if not re.fullmatch(r"[0-9*#]{1,20}", digits):
            raise ToolInputError("digits must be 1-20 characters from 0-9, * and #")
        return ToolResult(f"Pressed {digits}.", action=SendDigits(digits))

    @tool
    async def wait_on_hold(self) -> ToolResult:
        """The callee asked you to hold (or music or silence follows "please hold"): after saying
        "Sure, I'll hold.", call this and say nothing more. The line is kept silently until they
        speak again; their next words come to you as usual.
        """
        return ToolResult("Holding silently until they speak again.", action=Hold())

    @tool
    async def ask_person(self, question: str, options: str = "") -> ToolResult:
        """The callee asked something only the person can decide (an extra service, a preference,
        a detail you do not know): ask the person over chat while the callee waits on the line.
        Call it with no words first; the assistant tells the callee it is checking. The result
        is the person's own answer (or that none came in time).

        Args:
            question: the callee's question, in their words.
            options: the clear answer choices, separated by "|" (e.g. "30 minutes|60 minutes"),
                or empty when the answer is open.
        """
        if not question.strip():
            raise ToolInputError("ask_person needs the callee's question")
        choices = tuple(c for c in (text.bounded(o, text.NAME).strip() for o in options.split("|")) if c)
        return ToolResult(
            "Asking the person.", action=AskPerson(text.bounded(question, text.QUESTION), choices[:4])
        )

    @tool
    async def end_call(
        self,
        outcome: Literal["booked", "declined", "needs_user", "wrong_number", "opted_out", "failed"],
        summary: str,
        question: str = "",
    ) -> ToolResult:
        """Hang up after saying goodbye, reporting how the errand went.

        Args:
            outcome: booked (only after confirm_booking succeeded), declined (no fitting slot or the
                business does not offer it), needs_user (a decision only the person can make),
                wrong_number, opted_out (they asked not to be called again), or failed.
            summary: one or two sentences for the person about what happened; for opted_out, the
                callee's own words asking not to be called, quoted.
            question: for needs_user, the exact question to put to the person.
        """
        kind = OutcomeKind(outcome)
        if kind is OutcomeKind.OPTED_OUT and not summary.strip():
            raise ToolInputError("opted_out requires the callee's words in the summary")
        if kind is OutcomeKind.BOOKED and self.booking is None:
            raise ToolInputError(
                "nothing is booked yet: call confirm_booking first, or choose another outcome"
            )
        if kind is OutcomeKind.NEEDS_USER and not question.strip():
            raise ToolInputError("needs_user requires the question for the person")
        result = CallOutcome(
            kind=kind,
            summary=text.bounded(summary, text.SUMMARY),
            booking=self.booking if kind is OutcomeKind.BOOKED else None,
            question=text.bounded(question, text.QUESTION) or None,
        )
        return ToolResult("Call ending.", action=Hangup(self.keep_booking(result)))
