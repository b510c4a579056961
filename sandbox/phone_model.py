"""A small rule-following stand-in for Claude on a booking call (sandbox only).

It reads the ``ERRAND_JSON:`` line of the system prompt and the conversation
so far, and answers the way the real prompt asks Claude to: introduce itself as
an AI assistant, state the errand, test offered slots with
``check_availability``, book with ``confirm_booking``, press menu keys, hold,
honour a request not to be called again (``opted_out``), and end the call
with the right outcome. It is deterministic and deliberately
simple — just enough to drive end-to-end tests and the demo through the real
SDK and wire protocol.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta
from typing import Any

Block = dict[str, Any]

_KEYS_NOTE = "[the callee's phone sent"
#: Said before looking an offered slot up (the prompt's rule: never silent during a lookup).
ACK = "Let me check."

_MONTHS = {
    m: i + 1
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
    )
}
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_MONTH_RE = re.compile(
    r"\b(jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?\s+(\d{1,2})(?:st|nd|rd|th)?\b", re.I
)
_NUMERIC_DATE_RE = re.compile(r"\b(\d{1,2})/(\d{1,2})(?:/(\d{2,4}))?\b")
_TIME_RE = re.compile(r"\b(\d{1,2})(?::(\d{2}))?\s*(a\.?\s?m\.?|p\.?\s?m\.?)(?![a-z])", re.I)
_CLOCK_RE = re.compile(r"\b(?:at\s+)?(\d{1,2}):(\d{2})\b", re.I)
_AT_HOUR_RE = re.compile(r"\bat\s+(\d{1,2})\b(?!\s*(?:/|st|nd|rd|th))", re.I)

_HOLD = re.compile(
    r"\b(please hold|hold on|one moment|just a moment|one sec|bear with me|let me check)\b", re.I
)
_WRONG = re.compile(r"wrong number|no business by that name|nobody by that name|no one by that name", re.I)
_NOT_OFFERED = re.compile(r"(we )?(don't|do not) (do|offer|provide) (that|those|this)|we only do", re.I)
_FULL = re.compile(
    r"fully booked|no availability|nothing available|booked up|no openings|no free slots", re.I
)
_NAME = re.compile(
    r"\b(your name|name for the (booking|appointment)|spell|whose name|who is it for|name,? please)", re.I
)
_NEEDS_USER = re.compile(
    r"insurance|would (he|she|they) (also )?like|(does|do) (he|she|they) (also )?want|prefer"
    r"|which (stylist|barber|one|doctor)|what (kind|type|style)"
    r"|deposit|credit card|card number|first (time|visit)|new (client|patient)|member",
    re.I,
)
_OPT_OUT = re.compile(
    r"\b(don't|do not|never) (call|ring|phone) (this number|us|here|me)|stop calling"
    r"|(take|remove) (us|this number|me) (off|from)|no more calls",
    re.I,
)
_CALENDAR_ASK = re.compile(
    r"(read|tell|give|show) me (his|her|their|the) (calendar|schedule|diary)"
    r"|when is \w+ (free|available|busy)|what (does|is) \w+'?s? (calendar|schedule)",
    re.I,
)
_DONE = re.compile(r"all set|see (you|him|her|them) then|you're booked|booked you in", re.I)


def respond(body: dict[str, Any]) -> list[Block]:
    """Content blocks for one Messages API request (see the module docstring)."""
    system = body.get("system") or ""
    if isinstance(system, list):
        system = "\n".join(b.get("text", "") for b in system)
    errand = _errand(system)
    messages = body.get("messages") or []
    if not messages:
        return [_text("Hello?")]
    last = messages[-1]
    content = (
        last["content"] if isinstance(last["content"], list) else [{"type": "text", "text": last["content"]}]
    )
    results = [b for b in content if b.get("type") == "tool_result"]
    texts = [b.get("text", "") for b in content if b.get("type") == "text"]
    # A key the callee pressed gets no answer, so the words said after it share its user message:
    # answer the words.
    spoken = [t for t in texts if not t.startswith(_KEYS_NOTE)]
    said = " ".join(spoken or texts).strip()
    if results and not said:  # words after the tool results are newer: answer those
        return _after_tools(errand, messages, results)
    tools = {t.get("name") for t in body.get("tools") or []}
    return _answer(errand, system, messages, said, live_ask="ask_person" in tools)


# -- reading the request ------------------------------------------------------------------------------


def _errand(system: str) -> dict[str, Any]:
    m = re.search(r"^ERRAND_JSON: (\{.*\})\s*$", system, re.M)
    if not m:
        raise ValueError("sandbox phone model: the system prompt has no ERRAND_JSON line")
    errand: dict[str, Any] = json.loads(m.group(1))
    return errand


def _tool_uses(messages: list[dict[str, Any]]) -> dict[str, Block]:
    uses: dict[str, Block] = {}
    for m in messages:
        if m["role"] == "assistant" and isinstance(m["content"], list):
            uses.update({b["id"]: b for b in m["content"] if b.get("type") == "tool_use"})
    return uses


def _result_text(result: Block) -> str:
    c = result.get("content", "")
    text = c if isinstance(c, str) else " ".join(b.get("text", "") for b in c)
    if text.startswith('"'):  # a framework that JSON-encodes every result (Pipecat): read the string
        try:
            decoded = json.loads(text)
        except ValueError:
            return text
        return decoded if isinstance(decoded, str) else text
    return text


def _booked(messages: list[dict[str, Any]]) -> bool:
    return any(
        b.get("type") == "tool_result" and _result_text(b).startswith("CONFIRMED")
        for m in messages
        if m["role"] == "user" and isinstance(m["content"], list)
        for b in m["content"]
    )


# -- answers ------------------------------------------------------------------------------------------


def _after_tools(errand: dict[str, Any], messages: list[dict[str, Any]], results: list[Block]) -> list[Block]:
    uses = _tool_uses(messages)
    for result in results:
        use = uses.get(result.get("tool_use_id", ""), {})
        name, text = use.get("name"), _result_text(result)
        args = use.get("input", {})
        if result.get("is_error") and name != "end_call":
            return [_text("Sorry, could you say that time again?")]
        if name == "check_availability":
            if "verdict: FITS" in text:
                return [_tool("confirm_booking", {**args, "service": errand["service"]})]
            return [
                _text(f"I'm sorry, that time doesn't work for {_first(errand)}. Do you have anything else?")
            ]
        if name == "ask_person":
            answer = re.search(r"ANSWER FROM [^“]*“(.*)”", text)
            if answer is None:
                return []  # no answer in time: the agent has ended the call itself
            return [_text(f"Thanks for waiting. {_first(errand)}'s answer is: {answer.group(1)}.")]
        if name == "confirm_booking":
            if text.startswith("CONFIRMED"):
                when = _spoken_time(args["start"])
                summary = f"Booked a {errand['service']} at {errand['business']} on {when}."
                return [
                    _text(
                        f"Wonderful, so that's a {errand['service']} on {when} for {errand['person_name']}. "
                        "Thank you so much, goodbye!"
                    ),
                    _tool("end_call", {"outcome": "booked", "summary": summary}),
                ]
            return [_text(f"Ah, that one doesn't work for {_first(errand)}, I'm afraid. Any other time?")]
    return []  # after send_dtmf / end_call: nothing to add, listen


def _answer(
    errand: dict[str, Any], system: str, messages: list[dict[str, Any]], said: str, *, live_ask: bool = False
) -> list[Block]:
    person, service = errand["person_name"], errand["service"]
    if said.startswith("[call connected"):
        ask = f"I'd like to book a {service}, {_window_words(errand)}. Do you have anything available?"
        if "Your opening words are said for you" in system:  # the agent speaks the disclosure itself
            return [_text(ask)]
        name = re.search(r"You are (.+?), an AI assistant", system)
        me = f"this is {name.group(1)}, " if name else ""
        return [_text(f"Hi, {me}an AI assistant calling on behalf of {person}. {ask}")]
    if said.startswith("[silence"):
        prompts = sum(
            1
            for m in messages
            if m["role"] == "user" and "[silence" in json.dumps(m["content"], ensure_ascii=False)
        )
        if prompts >= 3:
            return [
                _text("I'll try again later. Goodbye."),
                _tool("end_call", {"outcome": "failed", "summary": "The line went silent."}),
            ]
        return [_text("Hello, are you still there?")]
    if said.startswith(_KEYS_NOTE):
        return []
    menu = _menu_choice(said)
    if menu:
        return [_tool("send_dtmf", {"digits": menu})]
    if _OPT_OUT.search(said):  # before the other answers: an opt-out is honoured at once
        return [
            _text("I'm sorry to have bothered you. We won't call this number again. Goodbye!"),
            _tool("end_call", {"outcome": "opted_out", "summary": f"“{said.strip()}”"}),
        ]
    if _WRONG.search(said):
        return [
            _text("Oh, I'm sorry for the trouble. Goodbye!"),
            _tool("end_call", {"outcome": "wrong_number", "summary": f"Wrong number: {said}"}),
        ]
    if _NOT_OFFERED.search(said):
        return [
            _text("I see, thank you anyway. Goodbye!"),
            _tool("end_call", {"outcome": "declined", "summary": f"They don't offer it: {said}"}),
        ]
    if _FULL.search(said):
        return [
            _text("I understand, thank you anyway. Goodbye!"),
            _tool("end_call", {"outcome": "declined", "summary": f"No availability: {said}"}),
        ]
    if _CALENDAR_ASK.search(said):  # the calendar stays private: only offered times are checked
        return [
            _text(
                f"I'm sorry, I can't share {_first(errand)}'s calendar. "
                "If you tell me a time you have, I can check whether it works."
            )
        ]
    slot = _offered_slot(errand, messages, said)
    if slot is not None:
        end = slot + timedelta(minutes=int(errand["window"]["duration_minutes"]))
        # The prompt asks for a few words before a lookup, so the line is not silent, unless the
        # agent says an acknowledgement for the model (agent.prompts.ACK_SAID).
        ack = [] if "is said for you at once" in system else [_text(ACK)]
        return [
            *ack,
            _tool(
                "check_availability",
                {"start": slot.isoformat(timespec="minutes"), "end": end.isoformat(timespec="minutes")},
            ),
        ]
    if _NAME.search(said):
        return [_text(f"It's for {person}. That's spelled {_spell(person)}.")]
    if _HOLD.search(said):
        return [_text("Sure, I'll hold."), _tool("wait_on_hold", {})]
    if _DONE.search(said) and _booked(messages):
        return [_text("Thank you, goodbye!")]
    if "?" in said and _NEEDS_USER.search(said):
        question = next((q.strip() for q in re.findall(r"[^.?!]*\?", said) if _NEEDS_USER.search(q)), said)
        if live_ask:  # ask the person while the callee holds (the agent says it is checking)
            return [_tool("ask_person", {"question": question, "options": "|".join(_choices(question))})]
        return [
            _text(f"Good question. I'll check with {_first(errand)} and call you back. Thank you!"),
            _tool(
                "end_call",
                {
                    "outcome": "needs_user",
                    "summary": "They asked something only the person knows.",
                    "question": question,
                },
            ),
        ]
    return [_text(f"I'm calling to book a {service} for {person}, {_window_words(errand)}. Is there a time?")]


def _choices(question: str) -> list[str]:
    """The answers a question offers ("the 30 or 60 minute cut?" → "30 minute", "60 minute")."""
    m = re.search(r"\b(\w+) or (\w+)((?:[ -]\w+)?)", question)
    if m is None:
        return []
    tail = m.group(3).replace("-", " ")
    word = tail.strip().lower()
    tail = " minutes" if word == "minute" else "" if word in ("one", "cut") else tail
    return [f"{m.group(1)}{tail}", f"{m.group(2)}{tail}"]


def _menu_choice(said: str) -> str | None:
    options = re.findall(r"for ([^,.]+?),? press (\d|star|pound)", said, re.I)
    options += [
        (what, key) for key, what in re.findall(r"press (\d|star|pound) (?:for|to) ([^,.]+)", said, re.I)
    ]
    if not options:
        return None
    keys = {"star": "*", "pound": "#"}
    for what, key in options:
        if re.search(r"appointment|book|schedul|reserv", what, re.I):
            return keys.get(key.lower(), key)
    return keys.get(options[0][1].lower(), options[0][1])


# -- dates and times ----------------------------------------------------------------------------------


def _offered_slot(errand: dict[str, Any], messages: list[dict[str, Any]], said: str) -> datetime | None:
    """The first date-time the callee offered in ``said`` (business-local, naive)."""
    hm, rest = _find_time(said)
    if hm is None:
        return None
    day = _find_date(errand, rest)
    if day is None:  # "how about 3 pm?" — the day from earlier in the call, or the window's first
        for m in reversed(messages[:-1]):
            if m["role"] == "user" and isinstance(m["content"], list):
                text = " ".join(b.get("text", "") for b in m["content"] if b.get("type") == "text")
                if (day := _find_date(errand, _find_time(text)[1])) is not None:
                    break
    if day is None:
        day = date.fromisoformat(errand["window"]["start_date"])
    return datetime(day.year, day.month, day.day, hm[0], hm[1])


def _find_time(text: str) -> tuple[tuple[int, int] | None, str]:
    """(hour, minute) of the first time in ``text`` and the text with it removed."""
    if m := _TIME_RE.search(text):
        hour, minute = int(m.group(1)) % 12, int(m.group(2) or 0)
        if m.group(3).lower().startswith("p"):
            hour += 12
        return (hour, minute), text[: m.start()] + text[m.end() :]
    if m := re.search(r"\bnoon\b", text, re.I):
        return (12, 0), text[: m.start()] + text[m.end() :]
    for pattern in (_CLOCK_RE, _AT_HOUR_RE):
        if m := pattern.search(text):
            hour = int(m.group(1))
            minute = int(m.group(2)) if pattern is _CLOCK_RE else 0
            if 1 <= hour <= 7:
                hour += 12  # "at 3" on a business line means the afternoon
            if hour < 24 and minute < 60:
                return (hour, minute), text[: m.start()] + text[m.end() :]
    return None, text


def _find_date(errand: dict[str, Any], text: str) -> date | None:
    window = errand["window"]
    first = date.fromisoformat(window["start_date"])
    today = date.fromisoformat(errand["today"])
    if m := _MONTH_RE.search(text):
        return _in_year(first, _MONTHS[m.group(1).lower()[:3]], int(m.group(2)))
    if m := _NUMERIC_DATE_RE.search(text):
        return _in_year(first, int(m.group(1)), int(m.group(2)))
    if re.search(r"\btomorrow\b", text, re.I):
        return today + timedelta(days=1)
    if re.search(r"\btoday\b", text, re.I):
        return today
    for i, name in enumerate(_WEEKDAYS):
        if re.search(rf"\b{name}\b", text, re.I):
            start = max(first, today + timedelta(days=1))
            return start + timedelta(days=(i - start.weekday()) % 7)
    return None


def _in_year(first: date, month: int, day: int) -> date | None:
    try:
        candidate = date(first.year, month, day)
    except ValueError:
        return None
    return candidate if candidate >= first - timedelta(days=180) else candidate.replace(year=first.year + 1)


def _spoken_time(iso: str) -> str:
    dt = datetime.fromisoformat(iso)
    clock = dt.strftime("%I:%M %p").lstrip("0")
    return f"{dt:%A, %B} {dt.day} at {clock}"


def _window_words(errand: dict[str, Any]) -> str:
    w = errand["window"]
    a, b = date.fromisoformat(w["start_date"]), date.fromisoformat(w["end_date"])
    days = f"on {a:%A, %B} {a.day}" if a == b else f"between {a:%B} {a.day} and {b:%B} {b.day}"
    return f"{days}, sometime from {w['earliest']} to {w['latest']}"


def _first(errand: dict[str, Any]) -> str:
    return str(errand["person_name"]).split()[0]


def _spell(name: str) -> str:
    return ", ".join("-".join(word.upper()) for word in name.split())


def _text(text: str) -> Block:
    return {"type": "text", "text": text}


def _tool(name: str, args: dict[str, Any]) -> Block:
    return {"type": "tool_use", "name": name, "input": args}
