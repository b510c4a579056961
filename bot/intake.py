"""Chat text → a validated ``CallRequest``, asking back for whatever is missing.

Two ways in: free text read by Claude through one forced tool (``record_errand``),
and the deterministic ``/call +1… Name | service | when`` form parsed here
without any model. Either way the fields land in an ``IntakeDraft`` kept per
chat thread, so a missing number or window is asked back and the next message
in that thread fills the gap instead of starting over. Phone numbers are
checked here because this is the last point where a person can be told why
an errand is refused (emergency, short code, premium rate, a country or number
type that is not called, block list, do-not-call list).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, time
from typing import Any, Protocol, cast

import anthropic
from anthropic.types import ToolChoiceToolParam, ToolParam

from agent.llm import to_provider_error
from bot import render
from bot.phone import DestinationPolicy, check_phone, find_phone
from bot.when import (
    DEFAULT_DAY,
    DateRange,
    DayTimes,
    local_today,
    parse_duration,
    resolve_dates,
    resolve_times,
)
from storage import text as bounds
from storage.errors import IntakeError
from storage.models import BookingWindow, CallRequest, ChatOrigin, utcnow

log = logging.getLogger(__name__)


@dataclass
class IntakeDraft:
    """A request being assembled in one chat thread; fields fill in over several messages."""

    id: str
    key: str
    origin: ChatOrigin
    business_name: str = ""
    phone: str = ""
    business_tz: str | None = None
    service: str = ""
    dates: DateRange | None = None
    times: DayTimes | None = None
    duration_minutes: int | None = None
    notes: str = ""
    editing: bool = False

    def to_data(self) -> dict[str, Any]:
        """The fields as JSON, for ``storage.drafts`` (``id`` and ``key`` are the store's)."""
        return {
            "origin": {**asdict(self.origin), "platform": str(self.origin.platform)},
            "business_name": self.business_name,
            "phone": self.phone,
            "business_tz": self.business_tz,
            "service": self.service,
            "dates": [self.dates.start.isoformat(), self.dates.end.isoformat()] if self.dates else None,
            "times": [self.times.earliest.isoformat(), self.times.latest.isoformat()] if self.times else None,
            "duration_minutes": self.duration_minutes,
            "notes": self.notes,
            "editing": self.editing,
        }

    @classmethod
    def from_data(cls, draft_id: str, key: str, data: dict[str, Any]) -> IntakeDraft:
        """Inverse of :meth:`to_data`."""
        dates, times = data.get("dates"), data.get("times")
        return cls(
            id=draft_id,
            key=key,
            origin=ChatOrigin.from_dict(data["origin"]),
            business_name=data.get("business_name") or "",
            phone=data.get("phone") or "",
            business_tz=data.get("business_tz"),
            service=data.get("service") or "",
            dates=DateRange(date.fromisoformat(dates[0]), date.fromisoformat(dates[1])) if dates else None,
            times=DayTimes(time.fromisoformat(times[0]), time.fromisoformat(times[1])) if times else None,
            duration_minutes=data.get("duration_minutes"),
            notes=data.get("notes") or "",
            editing=bool(data.get("editing")),
        )

    def missing(self) -> list[str]:
        """What still has to be asked, in the order it is asked."""
        out = []
        if not self.phone:
            out.append("phone")
        if not self.business_name:
            out.append("business")
        if not self.service:
            out.append("service")
        if not self.dates:
            out.append("window")
        return out

    def to_request(self, *, person_name: str, person_tz: str) -> CallRequest:
        assert self.dates is not None, "to_request on an incomplete draft"
        times = self.times or DayTimes(*DEFAULT_DAY)
        return CallRequest(
            business_name=self.business_name,
            phone=self.phone,
            business_tz=self.business_tz or person_tz,
            service=self.service,
            person_name=person_name,
            person_tz=person_tz,
            window=BookingWindow(
                start_date=self.dates.start,
                end_date=self.dates.end,
                earliest=times.earliest,
                latest=times.latest,
                duration_minutes=self.duration_minutes or 30,
            ),
            origin=self.origin,
            notes=self.notes,
        )


#: The one tool the intake model must call; its input is the extracted errand.
RECORD_ERRAND_TOOL: dict[str, Any] = {
    "name": "record_errand",
    "description": (
        "Record the phone errand the person asked for. Fill only what the person actually said; "
        "leave a field out rather than guess. Never invent a phone number."
    ),
    "input_schema": {
        "type": "object",
        "properties": {
            "business_name": {"type": "string", "description": "Name of the business to phone."},
            "phone": {"type": "string", "description": "The business's phone number exactly as written."},
            "service": {"type": "string", "description": "What to book, e.g. 'haircut'."},
            "when": {
                "type": "string",
                "description": "The person's words for which days, e.g. 'next week', 'Friday', 'March 14'.",
            },
            "times_of_day": {
                "type": "string",
                "description": "The person's words for times of day, e.g. 'afternoons', 'after 3pm'.",
            },
            "duration_minutes": {"type": "integer", "description": "Length of the appointment."},
            "notes": {"type": "string", "description": "Anything else for the call, e.g. 'ask for Sam'."},
        },
        "required": [],
    },
}


class NumberList(Protocol):
    """The do-not-call list as intake needs it (``storage.numbers.DoNotCall`` provides it)."""

    async def contains(self, e164: str) -> bool: ...


class Extractor(Protocol):
    """Reads free text into ``record_errand`` fields (Claude in production)."""

    async def extract(self, text: str, *, context: dict[str, Any], today: str) -> dict[str, Any]: ...


class ClaudeExtractor:
    """``record_errand`` extraction with Claude, the tool forced through ``tool_choice``.

    One short non-streaming ``messages.create``: nothing is shown until the whole
    errand is read, so streaming would buy nothing here.
    """

    def __init__(self, client: anthropic.AsyncAnthropic, *, model: str, max_tokens: int = 512) -> None:
        self._client = client
        self._model = model
        self._max_tokens = max_tokens

    async def extract(self, text: str, *, context: dict[str, Any], today: str) -> dict[str, Any]:
        system = (
            "You turn a chat message into a phone errand for an assistant that will phone a business. "
            f"Today is {today}. Call record_errand with only what the person said."
        )
        if context:
            system += " This message follows up on a request so far: " + json.dumps(context)
        try:
            message = await self._client.messages.create(
                model=self._model,
                max_tokens=self._max_tokens,
                system=system,
                tools=[cast(ToolParam, RECORD_ERRAND_TOOL)],
                tool_choice=ToolChoiceToolParam(type="tool", name="record_errand"),
                messages=[{"role": "user", "content": text}],
            )
        except (anthropic.APIStatusError, anthropic.APIConnectionError) as e:
            raise to_provider_error(e) from e
        for block in message.content:
            if block.type == "tool_use" and block.name == "record_errand" and isinstance(block.input, dict):
                return dict(block.input)
        return {}


@dataclass(frozen=True)
class IntakeReply:
    """What to say back: ask for more, refuse, or show the finished request for confirmation."""

    kind: str  # "ask" | "refuse" | "ready"
    text: str
    draft: IntakeDraft | None = None
    request: CallRequest | None = None


_CALL_ARGS = re.compile(r"^\s*(\+?\d[\d ().-]*\d|\+?\d+)(?:\s+|$)(.*)$", re.S)


def parse_call_args(args: str) -> dict[str, Any]:
    """The deterministic form ``+14155550100 Joe's Barbershop | haircut | next week afternoons | notes``.

    Returns ``record_errand``-shaped fields; dates and times are resolved later.
    """
    m = _CALL_ARGS.match(args)
    phone, rest = (m.group(1), m.group(2)) if m else ("", args)
    parts = [p.strip() for p in rest.split("|")]
    fields: dict[str, Any] = {"phone": phone}
    keys = ("business_name", "service", "when", "notes")
    for k, v in zip(keys, parts, strict=False):
        if v:
            fields[k] = v
    if "when" in fields:
        fields["times_of_day"] = fields["when"]
    return fields


class Intake:
    """Turns messages into a draft and the draft into a confirmed-ready request.

    It keeps no drafts itself: the chat flow loads a draft from ``storage.drafts``, hands it
    here with the new message and stores what comes back.

    Args:
        extractor: reads free text (Claude); ``None`` means only the deterministic form
            and simple gap-filling answers work.
        person_name / person_tz / region: the person the errands are for; ``region`` is the
            default region for numbers written without a country code.
        blocked_numbers: numbers never to call.
        destinations: countries and number types that may be called; ``None`` allows only
            numbers in ``region``.
        do_not_call: the do-not-call list, checked by :meth:`screen` (it is async).
        clock: aware UTC ``now``; relative dates resolve against it in ``person_tz``.
    """

    def __init__(
        self,
        *,
        extractor: Extractor | None,
        person_name: str,
        person_tz: str,
        region: str,
        blocked_numbers: Iterable[str] = (),
        destinations: DestinationPolicy | None = None,
        do_not_call: NumberList | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.extractor = extractor
        self.person_name = person_name
        self.person_tz = person_tz
        self.region = region
        self.blocked = tuple(blocked_numbers)
        self.destinations = destinations or DestinationPolicy.home(region)
        self.do_not_call = do_not_call
        self.clock = clock

    # -- entry points -------------------------------------------------------------
    async def from_text(self, key: str, origin: ChatOrigin, text: str) -> IntakeReply:
        """A new errand in free words (read by the model, gaps filled deterministically)."""
        return await self._update(IntakeDraft(id="", key=key, origin=origin), text)

    def from_command(self, key: str, origin: ChatOrigin, args: str) -> IntakeReply:
        """A new errand in the deterministic ``/call`` form (no model involved)."""
        return self._apply(IntakeDraft(id="", key=key, origin=origin), parse_call_args(args), text="")

    async def follow_up(self, draft: IntakeDraft, origin: ChatOrigin, text: str) -> IntakeReply:
        """A message continuing ``draft`` (changed in place and returned in the reply)."""
        draft.origin = (
            replace(draft.origin, message_id=origin.message_id) if origin.message_id else draft.origin
        )
        return await self._update(draft, text)

    async def screen(self, reply: IntakeReply) -> IntakeReply:
        """``reply``, or a refusal (without the draft) when its number is on the do-not-call list.

        Kept apart from the parsing because the list lives in the database (async) and may
        change at any moment (an opt-out on another call, ``concierge numbers block``).
        """
        draft = reply.draft
        if self.do_not_call is None or draft is None or not draft.phone:
            return reply
        if not await self.do_not_call.contains(draft.phone):
            return reply
        return IntakeReply("refuse", render.refuse_do_not_call(draft.phone))

    async def _update(self, draft: IntakeDraft, text: str) -> IntakeReply:
        text = text[: bounds.INTAKE_TEXT]  # a chat message is read (and sent to the model) bounded
        fields: dict[str, Any] = {}
        quick = self._quick_answer(draft, text)
        if quick is not None:
            fields = quick
        elif self.extractor is not None:
            fields = await self.extractor.extract(
                text, context=self._context(draft), today=self._today_words()
            )
        elif not draft.missing() or draft.editing:
            fields = {}
        else:
            fields = self._guess_for_missing(draft, text)
        return self._apply(draft, fields, text=text)

    def _quick_answer(self, draft: IntakeDraft, text: str) -> dict[str, Any] | None:
        """A bare number or bare window answering exactly what was asked needs no model."""
        missing = draft.missing()
        if missing == ["phone"] and (p := find_phone(text, self.region)) and len(text.strip()) <= len(p) + 3:
            return {"phone": p}
        if missing == ["window"] and resolve_dates(text, self._today()) and len(text) < 60:
            return {"when": text, "times_of_day": text}
        return None

    def _guess_for_missing(self, draft: IntakeDraft, text: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "phone" in draft.missing() and (p := find_phone(text, self.region)):
            out["phone"] = p
            text = text.replace(p, " ")
        out["when"] = out["times_of_day"] = text
        rest = [m for m in draft.missing() if m in ("business", "service")]
        if len(rest) == 1 and text.strip() and not resolve_dates(text, self._today()):
            out["business_name" if rest[0] == "business" else "service"] = text.strip(" ,.")
        return out

    def _apply(self, draft: IntakeDraft, fields: dict[str, Any], *, text: str) -> IntakeReply:
        today = self._today()
        draft.editing = False
        for k, limit in (("business_name", bounds.NAME), ("service", bounds.NAME), ("notes", bounds.NOTES)):
            v = bounds.bounded(str(fields.get(k) or ""), limit)
            if v:
                setattr(draft, k, v)
        phone = str(fields.get("phone") or "").strip() or (find_phone(text, self.region) if text else None)
        if phone:
            try:
                checked = check_phone(
                    phone, self.region, self.blocked, prefer_tz=self.person_tz, policy=self.destinations
                )
            except IntakeError as e:
                return IntakeReply("refuse", str(e))
            draft.phone, draft.business_tz = checked.e164, checked.tz
        when = " ".join(str(fields.get(k) or "") for k in ("when", "times_of_day")).strip()
        for source in (when, text):
            if source and (dates := resolve_dates(source, today)):
                draft.dates = dates
                break
        for source in (str(fields.get("times_of_day") or ""), when, text):
            if source and (times := resolve_times(source)):
                draft.times = times
                break
        dur = fields.get("duration_minutes")
        if isinstance(dur, int) and 5 <= dur <= 480:
            draft.duration_minutes = dur
        elif text and (d := parse_duration(text)):
            draft.duration_minutes = d
        missing = draft.missing()
        if missing:
            return IntakeReply("ask", render.ask_missing(missing, draft_summary(draft)), draft=draft)
        request = draft.to_request(person_name=self.person_name, person_tz=self.person_tz)
        return IntakeReply("ready", render.request_summary(request), draft=draft, request=request)

    def _today(self) -> Any:
        return local_today(self.clock(), self.person_tz)

    def _today_words(self) -> str:
        d = self._today()
        return f"{d.strftime('%A')} {d.isoformat()} (time zone {self.person_tz})"

    @staticmethod
    def _context(draft: IntakeDraft) -> dict[str, Any]:
        return {k: v for k, v in draft_summary(draft).items() if v}


def draft_summary(draft: IntakeDraft) -> dict[str, Any]:
    """The fields gathered so far, JSON-able (shown to the model and the person)."""
    return {
        "business_name": draft.business_name,
        "phone": draft.phone,
        "service": draft.service,
        "dates": f"{draft.dates.start.isoformat()}..{draft.dates.end.isoformat()}" if draft.dates else "",
        "times": f"{draft.times.earliest:%H:%M}-{draft.times.latest:%H:%M}" if draft.times else "",
        "notes": draft.notes,
    }
