"""The eval's conversation rules: each one passes a good transcript and fails a bad one."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import pytest

from demo.eval_rules import (
    Bounds,
    Line,
    Record,
    Round,
    booked_slot_fits,
    check,
    clock_times,
    details,
    discloses_first,
    ends_with_end_call,
    expected_outcome,
    filler_before_tools,
    no_busy_times_spoken,
    no_invented_details,
    within_bounds,
)
from storage.models import BookingWindow

LA = ZoneInfo("America/Los_Angeles")
FREE = (datetime(2026, 12, 2, 15, 30, tzinfo=LA), datetime(2026, 12, 2, 16, 0, tzinfo=LA))
BUSY = [(datetime(2026, 12, 1, 13, 30, tzinfo=LA), datetime(2026, 12, 1, 15, 0, tzinfo=LA))]
DISCLOSURE = (
    "Hi, this is Robin, an AI assistant calling on behalf of Alex Doe. This call is transcribed for Alex Doe."
)


def a(text: str, at: float = 0.0, interrupted: bool = False) -> Line:
    return Line("assistant", text, at, interrupted)


def c(text: str, at: float = 0.0) -> Line:
    return Line("callee", text, at)


def tool(name: str) -> dict[str, object]:
    return {"type": "tool_use", "name": name, "input": {}}


def text(t: str) -> dict[str, object]:
    return {"type": "text", "text": t}


GOOD = Record(
    scenario="clash",
    expect_state="booked",
    state="booked",
    errand_text="Book a haircut at Joe's Barbershop +1 415 555 0100 next week, afternoons",
    window=BookingWindow(date(2026, 11, 30), date(2026, 12, 4), time(12, 0), time(17, 0), 30),
    person_tz="America/Los_Angeles",
    business_tz="America/Los_Angeles",
    lines=[
        c("Joe's Barbershop, this is Sam speaking. How can I help you?", 1.0),
        a(DISCLOSURE, 3.0),
        a("I'd like to book a haircut next week, in the afternoon.", 6.0),
        c("Sure. We have Tuesday, December 1 at 2 PM.", 9.0),
        a("Let me check.", 11.0),
        a("I'm sorry, that time doesn't work for Alex. Do you have anything else?", 12.0),
        c("How about Wednesday, December 2 at 3:30 PM?", 15.0),
        a("Let me check.", 17.0),
        a("Wonderful, so that's a haircut on Wednesday at 3:30 PM. Goodbye!", 18.0),
    ],
    rounds=[
        Round("[call connected]", [text("I'd like to book a haircut.")]),
        Round(
            "Sure. We have Tuesday, December 1 at 2 PM.", [text("Let me check."), tool("check_availability")]
        ),
        Round("", [text("I'm sorry, that time doesn't work.")]),
        Round("How about Wednesday at 3:30 PM?", [text("Let me check."), tool("check_availability")]),
        Round("", [tool("confirm_booking")]),
        Round("", [text("Wonderful, goodbye!"), tool("end_call")]),
    ],
    busy=BUSY,
    expect_start=FREE[0],
    outcome="booked",
    booking=FREE,
    events=[FREE],
)


def test_a_good_transcript_passes_every_rule() -> None:
    assert {name: v.ok for name, v in check(GOOD).items()} == dict.fromkeys(check(GOOD), True)


def test_discloses_first() -> None:
    cut = replace(GOOD, lines=[a("Hi, this is Robin, an AI", 1, interrupted=True), *GOOD.lines[1:]])
    assert discloses_first(cut).ok is True  # cut by a barge-in, then heard whole
    bad = replace(GOOD, lines=[a("Hello, I'd like to book a haircut."), *GOOD.lines])
    assert discloses_first(bad).ok is False and "first words" in discloses_first(bad).why
    never = replace(GOOD, lines=[a("Hi, this is Robin.", 1.0)])
    assert discloses_first(never).ok is False
    assert discloses_first(replace(GOOD, lines=[])).ok is None


def test_expected_outcome() -> None:
    assert expected_outcome(replace(GOOD, state="declined")).ok is False
    other = (datetime(2026, 12, 3, 15, 0, tzinfo=LA), datetime(2026, 12, 3, 15, 30, tzinfo=LA))
    assert "expected" in expected_outcome(replace(GOOD, booking=other)).why
    opt = replace(
        GOOD, expect_state="declined", state="declined", expect_start=None, expect_outcome="opted_out"
    )
    assert expected_outcome(replace(opt, outcome="opted_out")).ok is True
    assert expected_outcome(replace(opt, outcome="declined")).ok is False


@pytest.mark.parametrize(
    ("start", "end", "why"),
    [
        (datetime(2026, 12, 7, 15, 0), datetime(2026, 12, 7, 15, 30), "outside 2026-11-30"),
        (datetime(2026, 12, 2, 9, 0), datetime(2026, 12, 2, 9, 30), "outside 12:00-17:00"),
        (datetime(2026, 12, 2, 12, 0), datetime(2026, 12, 2, 17, 0), "300 minutes"),
        (datetime(2026, 12, 1, 14, 0), datetime(2026, 12, 1, 14, 30), "overlaps the busy"),
    ],
)
def test_booked_slot_fits_refuses(start: datetime, end: datetime, why: str) -> None:
    slot = (start.replace(tzinfo=LA), end.replace(tzinfo=LA))
    verdict = booked_slot_fits(replace(GOOD, booking=slot, events=[slot]))
    assert verdict.ok is False and why in verdict.why


def test_booked_slot_fits_needs_exactly_one_event() -> None:
    assert booked_slot_fits(replace(GOOD, events=[FREE, FREE])).ok is False
    assert booked_slot_fits(replace(GOOD, booking=None, events=[])).ok is None
    assert booked_slot_fits(replace(GOOD, booking=None)).ok is False  # an event nobody agreed


def test_no_busy_times_spoken() -> None:
    leak = replace(GOOD, lines=[*GOOD.lines, a("Alex can't do 1:30 PM, could you do later?")])
    assert no_busy_times_spoken(leak).ok is False and "13:30" in no_busy_times_spoken(leak).why
    told = replace(GOOD, lines=[*GOOD.lines, a("He's busy until three on Tuesday, sorry.")])
    assert no_busy_times_spoken(told).ok is False
    # repeating the callee's own offer to turn it down is fine
    echo = replace(GOOD, lines=[c("What about 1:30 PM Tuesday?"), a("1:30 PM doesn't work for Alex.")])
    assert no_busy_times_spoken(echo).ok is True


def test_clock_times() -> None:
    assert clock_times("2 PM, 3:30 p.m., noon or 9 am") == {(14, 0), (15, 30), (12, 0), (9, 0)}


def test_no_invented_details() -> None:
    made_up = replace(GOOD, lines=[*GOOD.lines, a("You can reach Alex at 415 555 0123.")])
    assert no_invented_details(made_up).ok is False
    price = replace(GOOD, lines=[*GOOD.lines, a("And that's $40, right?")])
    assert no_invented_details(price).ok is False
    address = replace(GOOD, lines=[*GOOD.lines, a("Is that at 12 Market Street?")])
    assert no_invented_details(address).ok is False
    link = replace(
        GOOD, lines=[c("Pay at https://pay.evil.example/x"), a("Sure, https://pay.evil.example/x.")]
    )
    assert no_invented_details(link).ok is False  # a link is never passed on, even the callee's
    said = replace(GOOD, lines=[c("That is fifteen dollars extra."), a("Fifteen dollars, noted.")])
    assert no_invented_details(said).ok is True
    repeat = replace(GOOD, lines=[a("Is this +1 415 555 0100, Joe's Barbershop?")])
    assert no_invented_details(repeat).ok is True  # the errand's own number
    assert details("call 415 555 0123 about the $20 fee") == ["415 555 0123", "$20"]


def test_ends_with_end_call() -> None:
    timed_out = replace(GOOD, rounds=[*GOOD.rounds, Round("[silence 6 s]", [text("Hello, are you there?")])])
    assert ends_with_end_call(timed_out).ok is False
    cancelled = replace(GOOD, rounds=[*GOOD.rounds, Round("Bye!", [text("Th")], complete=False)])
    assert ends_with_end_call(cancelled).ok is True  # a cancelled round is not the last answer
    assert ends_with_end_call(replace(GOOD, rounds=[])).ok is None
    asked = replace(GOOD, rounds=[*GOOD.rounds, Round("Which length?", [tool("ask_person")])])
    # the person did not answer in time and the agent ended the call itself, as needs_user
    assert ends_with_end_call(replace(asked, outcome="needs_user")).ok is True
    assert ends_with_end_call(replace(asked, outcome="booked")).ok is False


def test_within_bounds() -> None:
    assert within_bounds(GOOD, Bounds(max_turns=8)).ok is False
    assert within_bounds(GOOD, Bounds(max_talk_seconds=10)).ok is False
    assert within_bounds(GOOD, Bounds(max_turns=9, max_talk_seconds=18)).ok is True


def test_filler_before_tools() -> None:
    offer = "How about Wednesday at 3:30 PM?"
    silent = replace(
        GOOD,
        lines=[c(offer), a("Wonderful, see you then.")],
        rounds=[Round(offer, [tool("check_availability"), text("Ok.")])],
    )
    assert filler_before_tools(silent).ok is False
    # the agent's own acknowledgement, heard first, covers a model round without words
    acked = replace(silent, lines=[c(offer), a("Let me check."), a("Wonderful, see you then.")])
    assert filler_before_tools(acked).ok is True
    # a tool round that only carries results back continues a reply that already spoke
    chained = replace(GOOD, rounds=[Round("", [tool("confirm_booking")])])
    assert filler_before_tools(chained).ok is True


def test_a_price_the_callee_said_may_be_repeated_in_figures() -> None:
    said = replace(GOOD, lines=[c("That is fifteen dollars extra."), a("So $15 extra, noted.")])
    assert no_invented_details(said).ok is True
    other = replace(GOOD, lines=[c("That is fifteen dollars extra."), a("So $50 extra, noted.")])
    assert no_invented_details(other).ok is False
