"""Tool schemas from typed handlers, and the booking rules (window in the person's zone, calendar)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from agent.base import Hangup, SendDigits
from agent.prompts import build_system_prompt
from agent.tools import BookingTools
from storage.models import BookingWindow, CallRequest, ChatOrigin, OutcomeKind, Platform

LA = ZoneInfo("America/Los_Angeles")
LONDON = ZoneInfo("Europe/London")
#: The tests run on 25 November 2026 (the window is a week ahead).
NOW = datetime(2026, 11, 25, 17, 0, tzinfo=UTC)


class Calendar:
    def __init__(self, busy: list[tuple[datetime, datetime]]) -> None:
        self.spans = busy

    async def busy(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        return self.spans


def request(person_tz: str = "Europe/London") -> CallRequest:
    return CallRequest(
        business_name="Joe's Barbershop",
        phone="+14155550100",
        business_tz="America/Los_Angeles",
        service="haircut",
        person_name="Alex Doe",
        person_tz=person_tz,
        window=BookingWindow(date(2026, 12, 1), date(2026, 12, 2), time(17, 0), time(20, 0), 30),
        origin=ChatOrigin(Platform.SLACK, "C1", "U1"),
    )


def test_schemas_come_from_signatures_and_docstrings() -> None:
    tools = {t["name"]: t for t in BookingTools(request(), Calendar([]), clock=lambda: NOW).schemas()}
    assert sorted(tools) == ["check_availability", "confirm_booking", "end_call", "send_dtmf", "wait_on_hold"]
    assert tools["wait_on_hold"]["input_schema"] == {"type": "object", "properties": {}, "required": []}
    end = tools["end_call"]
    assert end["description"].startswith("Hang up after saying goodbye")
    props = end["input_schema"]["properties"]
    assert props["outcome"]["enum"] == [
        "booked", "declined", "needs_user", "wrong_number", "opted_out", "failed"
    ]  # fmt: skip
    assert props["summary"]["type"] == "string"
    assert props["summary"]["description"].startswith("one or two sentences for the person about what")
    assert end["input_schema"]["required"] == ["outcome", "summary"]
    assert "opted_out (they asked not" in props["outcome"]["description"]  # continuation lines joined
    assert tools["confirm_booking"]["input_schema"]["required"] == ["start", "end", "service"]


async def test_window_is_checked_in_the_persons_zone() -> None:
    tools = BookingTools(request(), Calendar([]), clock=lambda: NOW)
    # 09:00 in Los Angeles = 17:00 in London: inside the 17:00-20:00 window.
    ok = await tools.run(
        "confirm_booking", {"start": "2026-12-01T09:00", "end": "2026-12-01T09:30", "service": "haircut"}
    )
    assert ok.content.startswith("CONFIRMED") and not ok.is_error
    assert tools.booking is not None and tools.booking.start == datetime(2026, 12, 1, 17, 0, tzinfo=LONDON)
    tools = BookingTools(request(), Calendar([]), clock=lambda: NOW)
    # 14:00 in Los Angeles = 22:00 in London: too late, although it looks fine locally.
    late = await tools.run(
        "confirm_booking", {"start": "2026-12-01T14:00", "end": "2026-12-01T14:30", "service": "x"}
    )
    assert late.content.startswith("REFUSED: Outside the acceptable hours")
    assert "22:00" in late.content
    gone = await tools.run("check_availability", {"start": "2026-12-03T09:00", "end": "2026-12-03T09:30"})
    assert "verdict: DOES NOT FIT" in gone.content and "acceptable dates" in gone.content


async def test_busy_slot_is_refused_and_check_reports_it() -> None:
    busy = [(datetime(2026, 12, 1, 9, 0, tzinfo=LA), datetime(2026, 12, 1, 10, 0, tzinfo=LA))]
    tools = BookingTools(request(), Calendar(busy), clock=lambda: NOW)
    check = await tools.run("check_availability", {"start": "2026-12-01T09:30", "end": "2026-12-01T10:00"})
    assert "verdict: DOES NOT FIT" in check.content and "not free" in check.content
    assert "09:00" not in check.content  # never the busy span itself
    refused = await tools.run(
        "confirm_booking", {"start": "2026-12-01T09:30", "end": "2026-12-01T10:00", "service": "x"}
    )
    assert refused.content.startswith("REFUSED: the person is busy") and tools.booking is None


async def test_bad_calls_become_error_results_not_exceptions() -> None:
    tools = BookingTools(request(), Calendar([]), clock=lambda: NOW)
    assert (await tools.run("check_availability", {"start": "tuesday", "end": "x"})).is_error
    assert (await tools.run("check_availability", {"start": "2026-12-01T09:00"})).is_error  # missing arg
    assert (await tools.run("teleport", {})).is_error
    assert (await tools.run("send_dtmf", {"digits": "12; rm -rf"})).is_error
    booked_too_early = await tools.run("end_call", {"outcome": "booked", "summary": "done"})
    assert booked_too_early.is_error and "confirm_booking first" in booked_too_early.content
    wordless_opt_out = await tools.run("end_call", {"outcome": "opted_out", "summary": " "})
    assert wordless_opt_out.is_error and "callee's words" in wordless_opt_out.content


async def test_actions() -> None:
    tools = BookingTools(request(), Calendar([]), clock=lambda: NOW)
    assert (await tools.run("send_dtmf", {"digits": "2#"})).action == SendDigits("2#")
    ask = await tools.run("end_call", {"outcome": "needs_user", "summary": "s", "question": "Sam or anyone?"})
    assert isinstance(ask.action, Hangup)
    assert (
        ask.action.outcome.kind is OutcomeKind.NEEDS_USER and ask.action.outcome.question == "Sam or anyone?"
    )
    words = "“Please don't call this number again.”"
    stop = await tools.run("end_call", {"outcome": "opted_out", "summary": words})
    assert isinstance(stop.action, Hangup)
    assert stop.action.outcome.kind is OutcomeKind.OPTED_OUT and stop.action.outcome.summary == words
    assert not OutcomeKind.OPTED_OUT.retryable


def test_prompt_states_the_errand_and_ends_with_errand_json() -> None:
    prompt = build_system_prompt(request(), assistant_name="Robin", today=date(2026, 11, 25))
    assert "You are Robin, an AI assistant" in prompt and "on behalf of Alex Doe" in prompt
    assert "check_availability" in prompt and "confirm_booking" in prompt and "send_dtmf" in prompt
    last = prompt.splitlines()[-1]
    assert last.startswith("ERRAND_JSON: {")
    import json

    facts = json.loads(last.removeprefix("ERRAND_JSON: "))
    assert facts["window"] == {
        "start_date": "2026-12-01",
        "end_date": "2026-12-02",
        "earliest": "17:00",
        "latest": "20:00",
        "duration_minutes": 30,
        "tz": "Europe/London",
    }
    assert facts["business_tz"] == "America/Los_Angeles" and facts["today"] == "2026-11-25"
    assert "Careful: the person is in Europe/London" in prompt
