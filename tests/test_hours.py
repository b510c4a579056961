"""Business-hours maths, especially around DST changes, holidays and midnight."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from concierge.hours import WeeklyHours, parse_weekly

NY = ZoneInfo("America/New_York")
LON = ZoneInfo("Europe/London")


def local(zone: ZoneInfo, y: int, mo: int, d: int, h: int, mi: int, fold: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=zone, fold=fold)


def closes_at(h: WeeklyHours, now: datetime, end: datetime) -> bool:
    """Open from ``now`` up to (not including) ``end``, checked minute by minute."""
    minutes = int((end - now).total_seconds() // 60)
    still_open = all(h.is_open(now + timedelta(minutes=i)) for i in range(minutes))
    return still_open and h.is_open(end - timedelta(seconds=1)) and not h.is_open(end)


def test_basic_week_open_and_closed() -> None:
    h = parse_weekly("Mon-Fri 09:00-17:00; SAT 10:00-14:00", "America/New_York")
    # 2026-06-01 is a Monday.
    assert h.is_open(local(NY, 2026, 6, 1, 9, 0))
    assert h.is_open(local(NY, 2026, 6, 1, 16, 59))
    assert not h.is_open(local(NY, 2026, 6, 1, 17, 0))  # end is exclusive
    assert not h.is_open(local(NY, 2026, 6, 1, 8, 59))
    assert h.is_open(local(NY, 2026, 6, 6, 13, 0))  # Saturday
    assert not h.is_open(local(NY, 2026, 6, 7, 12, 0))  # Sunday
    # The same instant given in UTC gets the same answer.
    assert h.is_open(datetime(2026, 6, 1, 13, 0, tzinfo=UTC))  # 09:00 EDT


def test_next_open_returns_now_when_open_and_answers_in_utc() -> None:
    h = parse_weekly("mon-fri 09:00-17:00", "America/New_York")
    now = datetime(2026, 6, 1, 14, 0, tzinfo=UTC)
    assert h.next_open(now) == now
    later = h.next_open(datetime(2026, 6, 1, 22, 0, tzinfo=UTC))  # Mon 18:00 EDT
    assert later == datetime(2026, 6, 2, 13, 0, tzinfo=UTC)
    assert later.tzinfo == UTC
    assert h.next_open(local(NY, 2026, 6, 1, 22, 0)).tzinfo == UTC


def test_next_open_skips_weekend_and_holidays() -> None:
    h = parse_weekly("mon-fri 09:00-17:00; closed 2026-12-25, 2026-12-28", "America/New_York")
    # Thu 2026-12-24 18:00: Fri 25th is a holiday, weekend, Mon 28th holiday -> Tue 29th.
    nxt = h.next_open(local(NY, 2026, 12, 24, 18, 0))
    assert nxt == local(NY, 2026, 12, 29, 9, 0)
    assert not h.is_open(local(NY, 2026, 12, 25, 10, 0))


def test_several_intervals_per_day_lunch_break() -> None:
    h = parse_weekly("mon 09:00-12:00,13:00-17:00", "Europe/London")
    assert h.is_open(local(LON, 2026, 6, 1, 11, 0))
    assert not h.is_open(local(LON, 2026, 6, 1, 12, 30))
    assert h.next_open(local(LON, 2026, 6, 1, 12, 30)) == local(LON, 2026, 6, 1, 13, 0)
    assert closes_at(h, local(LON, 2026, 6, 1, 10, 0), local(LON, 2026, 6, 1, 12, 0))
    assert not h.is_open(local(LON, 2026, 6, 1, 12, 30))


def test_open_past_midnight_belongs_to_start_day() -> None:
    h = parse_weekly("fri 18:00-02:00", "America/New_York")
    # Fri 2026-06-05 23:00 and Sat 01:30 are open; Sat 18:00 is not (only Friday has it).
    assert h.is_open(local(NY, 2026, 6, 5, 23, 0))
    assert h.is_open(local(NY, 2026, 6, 6, 1, 30))
    assert not h.is_open(local(NY, 2026, 6, 6, 2, 0))
    assert not h.is_open(local(NY, 2026, 6, 6, 19, 0))
    assert closes_at(h, local(NY, 2026, 6, 6, 1, 0), local(NY, 2026, 6, 6, 2, 0))
    # Thursday 2026-06-04 01:00 is not open (the interval is Friday's, not Thursday's night).
    assert not h.is_open(local(NY, 2026, 6, 4, 1, 0))


def test_overnight_interval_before_holiday_still_runs() -> None:
    h = parse_weekly("daily 20:00-03:00; closed 2026-07-04", "America/New_York")
    assert h.is_open(local(NY, 2026, 7, 4, 1, 0))  # started on the 3rd
    assert not h.is_open(local(NY, 2026, 7, 4, 21, 0))  # the 4th's own opening is cancelled
    assert h.next_open(local(NY, 2026, 7, 4, 4, 0)) == local(NY, 2026, 7, 5, 20, 0)


def test_24_00_end_and_chained_openings() -> None:
    h = parse_weekly("sat 12:00-24:00; sun 00:00-06:00", "Europe/London")
    assert h.is_open(local(LON, 2026, 6, 6, 23, 59))
    assert h.is_open(local(LON, 2026, 6, 7, 0, 0))
    # Back-to-back intervals across midnight are one opening.
    assert closes_at(h, local(LON, 2026, 6, 6, 13, 0), local(LON, 2026, 6, 7, 6, 0))


def test_new_york_spring_forward_gap() -> None:
    # 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist.
    h = parse_weekly("sun 02:30-04:00", "America/New_York")
    opens = h.next_open(local(NY, 2026, 3, 8, 0, 0))
    # Opens at the first existing instant after 02:30: the jump itself (07:00 UTC = 03:00 EDT).
    assert opens == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
    assert opens.astimezone(NY).hour == 3 and opens.astimezone(NY).minute == 0
    assert closes_at(h, opens, datetime(2026, 3, 8, 8, 0, tzinfo=UTC))  # 04:00 EDT
    assert not h.is_open(datetime(2026, 3, 8, 6, 59, tzinfo=UTC))


def test_new_york_spring_forward_ordinary_hours_are_wall_clock() -> None:
    h = parse_weekly("daily 09:00-17:00", "America/New_York")
    assert h.next_open(local(NY, 2026, 3, 7, 18, 0)) == datetime(2026, 3, 8, 13, 0, tzinfo=UTC)  # EDT
    assert h.next_open(local(NY, 2026, 3, 6, 18, 0)) == datetime(2026, 3, 7, 14, 0, tzinfo=UTC)  # EST


def test_interval_entirely_inside_gap_vanishes() -> None:
    h = parse_weekly("sun 02:10-02:50", "America/New_York")
    assert h.next_open(local(NY, 2026, 3, 8, 0, 0)) == local(NY, 2026, 3, 15, 2, 10)


def test_new_york_fall_back_ambiguous_time_uses_first_occurrence() -> None:
    # 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
    h = parse_weekly("sun 01:30-02:00", "America/New_York")
    opens = h.next_open(local(NY, 2026, 11, 1, 0, 0))
    assert opens == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT (fold=0)
    # 02:00 exists once (EST): the opening lasts 90 real minutes.
    assert closes_at(h, opens, datetime(2026, 11, 1, 7, 0, tzinfo=UTC))
    assert h.is_open(local(NY, 2026, 11, 1, 1, 45, fold=1))  # second 01:45, EST


def test_new_york_fall_back_day_keeps_wall_clock_hours() -> None:
    h = parse_weekly("daily 09:00-17:00", "America/New_York")
    assert h.next_open(local(NY, 2026, 10, 31, 18, 0)) == datetime(2026, 11, 1, 14, 0, tzinfo=UTC)  # EST


def test_london_spring_forward_2026_03_29() -> None:
    # 01:00 GMT jumps to 02:00 BST.
    h = parse_weekly("sun 01:15-03:00; mon-fri 09:00-17:00", "Europe/London")
    opens = h.next_open(local(LON, 2026, 3, 29, 0, 0))
    assert opens == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # = 02:00 BST, the jump
    assert closes_at(h, opens, datetime(2026, 3, 29, 2, 0, tzinfo=UTC))  # 03:00 BST
    assert h.next_open(opens + timedelta(hours=2)) == datetime(2026, 3, 30, 8, 0, tzinfo=UTC)


def test_london_fall_back_2026_10_25() -> None:
    # 02:00 BST falls back to 01:00 GMT.
    h = parse_weekly("sun 01:30-01:45; sun 10:00-12:00", "Europe/London")
    assert h.next_open(local(LON, 2026, 10, 25, 0, 0)) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert not h.is_open(datetime(2026, 10, 25, 1, 35, tzinfo=UTC))  # the second 01:35 (GMT)
    assert h.next_open(datetime(2026, 10, 25, 1, 0, tzinfo=UTC)) == datetime(2026, 10, 25, 10, 0, tzinfo=UTC)


def test_lord_howe_half_hour_shift() -> None:
    # Australia/Lord_Howe springs forward 02:00 -> 02:30 on 2026-10-04.
    zone = ZoneInfo("Australia/Lord_Howe")
    h = parse_weekly("sun 02:10-03:00", "Australia/Lord_Howe")
    opens = h.next_open(local(zone, 2026, 10, 4, 0, 0))
    assert opens.astimezone(zone).replace(tzinfo=None) == datetime(2026, 10, 4, 2, 30)


def test_next_open_across_a_whole_week() -> None:
    h = parse_weekly("wed 10:00-11:00", "Europe/London")
    # Wed 2026-06-03 11:00 (just closed) -> next Wednesday.
    assert h.next_open(local(LON, 2026, 6, 3, 11, 0)) == local(LON, 2026, 6, 10, 10, 0)


def test_never_open_raises() -> None:
    h = parse_weekly("thu 10:00-11:00; closed 2026-06-04", "UTC")
    assert h.next_open(datetime(2026, 6, 4, tzinfo=UTC)) == datetime(2026, 6, 11, 10, tzinfo=UTC)
    mondays = [date(2026, 1, 5) + timedelta(weeks=i) for i in range(60)]
    never = parse_weekly(f"mon 10:00-11:00; closed {', '.join(map(str, mondays))}", "UTC")
    with pytest.raises(ValueError, match="never open"):
        never.next_open(datetime(2026, 1, 1, tzinfo=UTC))
    assert not never.is_open(datetime(2026, 1, 5, 10, 30, tzinfo=UTC))


def test_naive_datetime_rejected() -> None:
    h = parse_weekly("daily 10:00-11:00", "UTC")
    with pytest.raises(ValueError, match="aware"):
        h.is_open(datetime(2026, 1, 1, 10, 30))


def test_day_forms() -> None:
    h = parse_weekly("Monday,wed 08:00-09:00; sat-mon 20:00-21:00; sun closed", "UTC")
    assert [len(d) for d in h.days] == [2, 0, 1, 0, 0, 1, 1]


@pytest.mark.parametrize(
    ("spec", "tz", "message"),
    [
        ("", "UTC", "empty"),
        ("mon-fri", "UTC", "expected days then times"),
        ("funday 09:00-17:00", "UTC", "unknown day 'funday'"),
        ("mon 9-17", "UTC", "expected HH:MM"),
        ("mon 09:00", "UTC", "expected HH:MM-HH:MM"),
        ("mon 09:00-25:00", "UTC", "out of range"),
        ("mon 09:60-10:00", "UTC", "out of range"),
        ("mon 09:00-09:00", "UTC", "00:00-24:00"),
        ("mon 24:00-02:00", "UTC", "cannot start at 24:00"),
        ("closed 2026-13-01", "UTC", "YYYY-MM-DD"),
        ("closed", "UTC", "needs dates"),
        ("closed 2026-12-25", "UTC", "no opening times"),
        ("mon 09:00-17:00", "Mars/Olympus", "unknown time zone"),
    ],
)
def test_bad_specs_have_helpful_errors(spec: str, tz: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_weekly(spec, tz)
