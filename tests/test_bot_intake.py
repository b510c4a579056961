"""Intake: phone vetting, the deterministic /call form, drafts asked back and filled in."""

import json
from datetime import UTC, date, datetime, time
from typing import Any

import pytest

from bot.intake import Intake, IntakeDraft, parse_call_args
from bot.phone import DestinationPolicy, check_phone, find_phone
from sandbox.intake_model import extract, respond
from storage.errors import IntakeError
from storage.models import ChatOrigin, Platform

NOW = datetime(2025, 3, 12, 18, 0, tzinfo=UTC)  # Wed 11:00 in Los Angeles
ORIGIN = ChatOrigin(Platform.TELEGRAM, chat_id="42", user_id="7")


class RegexExtractor:
    """The sandbox intake model without the HTTP hop (the HTTP path is tested in test_bot_telegram)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def extract(self, text: str, *, context: dict[str, Any], today: str) -> dict[str, Any]:
        self.calls.append((text, context))
        return extract(text)


def make_intake(extractor: Any = None, **kw: Any) -> Intake:
    return Intake(
        extractor=extractor,
        person_name="Alex",
        person_tz="America/Los_Angeles",
        region="US",
        clock=lambda: NOW,
        **kw,
    )


def test_check_phone_e164_and_business_zone() -> None:
    assert check_phone("(415) 555-0100", "US").e164 == "+14155550100"
    assert check_phone("(415) 555-0100", "US").tz == "America/Los_Angeles"
    abroad = DestinationPolicy(countries=frozenset({"US", "FR"}), home_region="US")
    assert check_phone("+33 1 42 68 53 00", "US", policy=abroad).tz == "Europe/Paris"
    assert check_phone("+1 800 555 0100", "US", prefer_tz="America/Chicago").tz == "America/Chicago"


@pytest.mark.parametrize(
    ("raw", "region", "word"),
    [
        ("911", "US", "emergency"),
        ("112", "DE", "emergency"),
        ("999", "GB", "emergency"),
        ("000", "AU", "emergency"),
        ("999", "US", "emergency"),
        ("12345", "US", "short"),
        ("+1 900 555 0199", "US", "premium"),
        ("+44 909 876 5432", "GB", "premium"),
        ("12", "US", "short"),
        ("+1 415 555 01", "US", "doesn't look"),
        ("call me", "US", "couldn.t find"),
    ],
)
def test_check_phone_refuses(raw: str, region: str, word: str) -> None:
    with pytest.raises(IntakeError, match=word):
        check_phone(raw, region)


def test_check_phone_block_list_compares_normalised() -> None:
    with pytest.raises(IntakeError, match="block list"):
        check_phone("415 555 0100", "US", blocked=["+1 (415) 555-0100"])


#: The usual toll-fraud destinations, and what the refusal names.
FRAUD = [
    ("+881612345678", "satellite"),  # Global Mobile Satellite System
    ("+870773111632", "satellite"),  # Inmarsat
    ("+447012345678", "United Kingdom"),  # UK 070 "personal" number, billed like premium rate
    ("+5372345678", "Cuba"),
    ("+252612345678", "Somalia"),
    ("+18762345678", "Jamaica"),  # +1 but not the US
    ("+18092345678", "Dominican Republic"),
]


@pytest.mark.parametrize(("number", "named"), FRAUD)
def test_fraud_destinations_are_refused_by_default_with_a_clear_reply(number: str, named: str) -> None:
    reply = make_intake().from_command("k", ORIGIN, f"{number} Joe's | haircut | next week afternoons")
    assert reply.kind == "refuse" and reply.draft is None
    assert number in reply.text and named in reply.text


def test_uk_personal_number_is_refused_by_type_even_when_the_uk_is_allowed() -> None:
    intake = make_intake(destinations=DestinationPolicy(frozenset({"US", "GB"}), home_region="US"))
    reply = intake.from_command("k", ORIGIN, "+447012345678 Joe's | haircut | next week afternoons")
    assert reply.kind == "refuse" and "personal" in reply.text
    ok = intake.from_command("k", ORIGIN, "+44 20 7946 0000 Joe's | haircut | next week afternoons")
    assert ok.kind == "ready" and ok.request is not None and ok.request.business_tz == "Europe/London"


def test_toll_free_only_in_the_persons_own_country() -> None:
    both = DestinationPolicy(frozenset({"US", "GB"}), home_region="US")
    assert check_phone("+1 800 234 5678", "US", policy=both).e164 == "+18002345678"
    with pytest.raises(IntakeError, match="toll-free number outside United States"):
        check_phone("+44 800 123 4567", "US", policy=both)
    british = DestinationPolicy(frozenset({"US", "GB"}), home_region="GB")
    assert check_phone("+44 800 123 4567", "GB", policy=british).e164 == "+448001234567"


class ListedNumbers:
    """A do-not-call list held in memory (the SQLite one is tested in test_storage_numbers)."""

    def __init__(self, *numbers: str) -> None:
        self.numbers = set(numbers)

    async def contains(self, e164: str) -> bool:
        return e164 in self.numbers


async def test_number_on_the_do_not_call_list_is_refused_once_known() -> None:
    intake = make_intake(do_not_call=ListedNumbers("+14155550100"))
    reply = await intake.screen(intake.from_command("k", ORIGIN, "415 555 0100 Joe's | haircut | next week"))
    assert reply.kind == "refuse" and "do-not-call" in reply.text and "+14155550100" in reply.text
    assert reply.draft is None  # the chat flow drops the thread's draft on a refusal
    other = await intake.screen(intake.from_command("k", ORIGIN, "415 555 0101 Joe's | haircut | next week"))
    assert other.kind == "ready"
    # refused as soon as the number is known, before the rest is asked for
    early = await intake.screen(intake.from_command("k2", ORIGIN, "+1 415 555 0100"))
    assert early.kind == "refuse" and early.draft is None
    # asked back before any number: nothing to screen yet
    first = await intake.screen(intake.from_command("k3", ORIGIN, "Joe's | haircut | next week"))
    assert first.kind == "ask"


def test_find_phone_in_text() -> None:
    assert find_phone("their number is 415-555-0100, thanks", "US") == "415-555-0100"
    assert find_phone("no number here", "US") is None


def test_parse_call_args() -> None:
    assert parse_call_args(
        "+14155550100 Joe's Barbershop | haircut | next week afternoons | ask for Sam"
    ) == {
        "phone": "+14155550100",
        "business_name": "Joe's Barbershop",
        "service": "haircut",
        "when": "next week afternoons",
        "times_of_day": "next week afternoons",
        "notes": "ask for Sam",
    }
    assert parse_call_args("+1 415 555 0100 Joe's | trim")["phone"] == "+1 415 555 0100"
    assert parse_call_args("Joe's | trim | friday") == {
        "phone": "",
        "business_name": "Joe's",
        "service": "trim",
        "when": "friday",
        "times_of_day": "friday",
    }


def test_deterministic_form_is_ready() -> None:
    intake = make_intake()
    reply = intake.from_command("k", ORIGIN, "+14155550100 Joe's Barbershop | haircut | next week afternoons")
    assert reply.kind == "ready" and reply.request is not None
    r = reply.request
    assert (r.phone, r.business_name, r.service, r.business_tz) == (
        "+14155550100",
        "Joe's Barbershop",
        "haircut",
        "America/Los_Angeles",
    )
    assert (r.window.start_date, r.window.end_date) == (date(2025, 3, 17), date(2025, 3, 23))
    assert (r.window.earliest, r.window.latest) == (time(12), time(17))
    assert r.origin == ORIGIN and r.person_tz == "America/Los_Angeles"


async def test_missing_number_is_asked_back_and_filled_without_the_model() -> None:
    model = RegexExtractor()
    intake = make_intake(model)
    first = await intake.from_text("k", ORIGIN, "book me a haircut at Joe's Barbershop next week afternoons")
    assert first.kind == "ask" and "phone number" in first.text and "Joe's Barbershop" in first.text
    assert first.draft is not None
    second = await intake.follow_up(first.draft, ORIGIN, "+1 415 555 0100")
    assert second.kind == "ready" and second.request is not None
    assert second.request.phone == "+14155550100" and second.request.service == "haircut"
    assert len(model.calls) == 1  # the bare number needed no model


async def test_missing_window_then_edit_through_the_model_with_context() -> None:
    model = RegexExtractor()
    intake = make_intake(model)
    first = await intake.from_text("k", ORIGIN, "book me a haircut at Joe's Barbershop, +1 415 555 0100")
    assert first.kind == "ask" and "when it could be" in first.text
    assert first.draft is not None
    ready = await intake.follow_up(first.draft, ORIGIN, "tomorrow afternoon please")
    assert ready.request is not None and ready.draft is not None
    assert ready.request.window.start_date == date(2025, 3, 13)
    ready.draft.editing = True
    edited = await intake.follow_up(ready.draft, ORIGIN, "actually make it Friday morning, ask for Sam")
    assert edited.request is not None
    assert edited.request.window.start_date == date(2025, 3, 14)
    assert edited.request.window.earliest == time(9) and edited.request.notes == "ask for Sam"
    assert model.calls[-1][1]["phone"] == "+14155550100"  # the model saw the request so far


async def test_emergency_number_is_refused_and_the_draft_dropped() -> None:
    intake = make_intake(RegexExtractor())
    reply = await intake.from_text("k", ORIGIN, "call 911 and book a table at Luigi tomorrow evening")
    assert reply.kind == "refuse" and "emergency" in reply.text
    assert reply.draft is None  # nothing to keep


def test_a_draft_round_trips_through_its_stored_form() -> None:
    reply = make_intake().from_command("k", ORIGIN, "+14155550100 Joe's | trim | next week mornings | Sam")
    assert reply.draft is not None
    reply.draft.duration_minutes, reply.draft.editing = 45, True
    data = json.loads(json.dumps(reply.draft.to_data()))
    again = IntakeDraft.from_data("abc-2", "k", data)
    assert (again.id, again.key) == ("abc-2", "k")
    assert again.to_data() == reply.draft.to_data() and again.origin == ORIGIN
    assert IntakeDraft.from_data("x-1", "k", {"origin": data["origin"]}).missing() == [
        "phone", "business", "service", "window",
    ]  # fmt: skip


def test_sandbox_intake_model_answers_one_tool_use_block() -> None:
    body = {
        "tools": [{"name": "record_errand"}],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "book a trim at Joe's Barbershop on Friday"}],
            }
        ],
    }
    (block,) = respond(body)
    assert block["type"] == "tool_use" and block["name"] == "record_errand"
    assert block["input"] == {"service": "trim", "business_name": "Joe's Barbershop", "when": "on Friday"}
