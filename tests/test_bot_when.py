"""Pure date/time resolution of the person's words (bot.when)."""

from datetime import UTC, date, datetime, time

import pytest

from bot.when import DateRange, DayTimes, local_today, parse_duration, resolve_dates, resolve_times

WED = date(2025, 3, 12)  # a Wednesday


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("next week", DateRange(date(2025, 3, 17), date(2025, 3, 23))),
        ("this week", DateRange(WED, date(2025, 3, 16))),
        ("tomorrow afternoon", DateRange(date(2025, 3, 13), date(2025, 3, 13))),
        ("today", DateRange(WED, WED)),
        ("day after tomorrow", DateRange(date(2025, 3, 14), date(2025, 3, 14))),
        ("Friday morning", DateRange(date(2025, 3, 14), date(2025, 3, 14))),
        ("on wednesday", DateRange(WED, WED)),
        ("next Friday", DateRange(date(2025, 3, 21), date(2025, 3, 21))),
        ("Monday or Tuesday", DateRange(date(2025, 3, 17), date(2025, 3, 18))),
        ("this weekend", DateRange(date(2025, 3, 15), date(2025, 3, 16))),
        ("next weekend", DateRange(date(2025, 3, 22), date(2025, 3, 23))),
        ("2025-03-20", DateRange(date(2025, 3, 20), date(2025, 3, 20))),
        ("March 20th", DateRange(date(2025, 3, 20), date(2025, 3, 20))),
        ("20 march", DateRange(date(2025, 3, 20), date(2025, 3, 20))),
        ("March 1", DateRange(date(2026, 3, 1), date(2026, 3, 1))),
        ("in 3 days", DateRange(date(2025, 3, 15), date(2025, 3, 15))),
        ("within 5 days", DateRange(WED, date(2025, 3, 17))),
        ("next month", DateRange(date(2025, 4, 1), date(2025, 4, 30))),
        ("asap", DateRange(WED, date(2025, 3, 19))),
        ("afternoons", None),
        ("2024-01-01", None),
    ],
)
def test_resolve_dates(text: str, expected: DateRange | None) -> None:
    assert resolve_dates(text, WED) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("afternoons", DayTimes(time(12), time(17))),
        ("Friday morning", DayTimes(time(9), time(12))),
        ("morning or afternoon", DayTimes(time(9), time(17))),
        ("after 3pm", DayTimes(time(15), time(18))),
        ("after 6pm", DayTimes(time(18), time(19))),
        ("before noon", DayTimes(time(9), time(12))),
        ("between 2 and 5pm", DayTimes(time(14), time(17))),
        ("2-5pm", DayTimes(time(14), time(17))),
        ("10am to 1pm", DayTimes(time(10), time(13))),
        ("9:30 - 11:00", DayTimes(time(9, 30), time(11))),
        ("any time", DayTimes(time(9), time(18))),
        ("next week", None),
    ],
)
def test_resolve_times(text: str, expected: DayTimes | None) -> None:
    assert resolve_times(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45 min", 45),
        ("1 hour", 60),
        ("an hour", 60),
        ("90 minutes", 90),
        ("hour and a half", 90),
        ("half an hour", 30),
        ("next week", None),
        ("2h", 120),
    ],
)
def test_parse_duration(text: str, expected: int | None) -> None:
    assert parse_duration(text) == expected


def test_local_today_uses_the_person_zone() -> None:
    now = datetime(2025, 3, 13, 3, 0, tzinfo=UTC)  # still the 12th in California
    assert local_today(now, "America/Los_Angeles") == date(2025, 3, 12)
    assert local_today(now, "Europe/Berlin") == date(2025, 3, 13)
