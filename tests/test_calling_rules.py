"""Calling rules: the callee's own hours in every zone a number may ring in, and destinations."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberType

from bot.phone import DestinationPolicy, callee_zones, check_destination, check_phone
from concierge.calling_window import (
    DailyWindow,
    allowed_at,
    callee_ok,
    may_call_now,
    next_allowed,
    next_call_time,
)
from concierge.hours import parse_weekly

WINDOW = DailyWindow.parse("08:00-21:00")
DEFAULT_HOURS = "mon-fri 09:00-17:00; sat 10:00-14:00"
ALWAYS = "daily 00:00-24:00"
PERTH, NEW_YORK, MOSCOW = ZoneInfo("Australia/Perth"), ZoneInfo("America/New_York"), ZoneInfo("Europe/Moscow")


def planned_times(
    phone: str, person_tz: str, region: str, policy: DestinationPolicy, spec: str
) -> list[datetime]:
    """Every call time the planner picks for ``phone`` from a start every 47 minutes over a year."""
    checked = check_phone(phone, region, prefer_tz=person_tz, policy=policy)
    assert checked.tz is not None
    hours = parse_weekly(spec, checked.tz)
    out = []
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(0, 365 * 24 * 60, 47 * 60 + 13):
        t = next_call_time(hours, checked.e164, WINDOW, start + timedelta(minutes=i // 60, seconds=i % 60))
        assert t is not None
        assert may_call_now(hours, checked.e164, WINDOW, t)
        out.append(t)
    return out


@pytest.mark.parametrize("spec", [ALWAYS, DEFAULT_HOURS])
def test_australian_mobile_is_never_called_before_eight_in_perth(spec: str) -> None:
    # The person is in Los Angeles; +61 4 is a mobile that may be anywhere in Australia.
    policy = DestinationPolicy(frozenset({"US", "AU"}), home_region="US")
    times = planned_times("+61 412 345 678", "America/Los_Angeles", "US", policy, spec)
    assert min(t.astimezone(PERTH).time() for t in times) >= time(8, 0)
    assert any(t.astimezone(PERTH).time() == time(8, 0) for t in times) or spec != ALWAYS  # the bound is met


def test_us_toll_free_is_never_called_after_nine_in_new_york() -> None:
    # The person is in London (their country is still the US: toll-free is theirs to call).
    policy = DestinationPolicy(frozenset({"US"}), home_region="US")
    for t in planned_times("+1 800 234 5678", "Europe/London", "US", policy, ALWAYS):
        assert t.astimezone(NEW_YORK).time() < time(21, 0), t
        assert t.astimezone(ZoneInfo("Pacific/Honolulu")).time() >= time(8, 0), t


def test_russian_mobile_is_never_called_before_eight_in_moscow() -> None:
    policy = DestinationPolicy(frozenset({"US", "RU"}), home_region="US")
    times = planned_times("+7 916 123 4567", "America/Los_Angeles", "US", policy, ALWAYS)
    assert min(t.astimezone(MOSCOW).time() for t in times) >= time(8, 0)
    assert all(t.astimezone(ZoneInfo("Asia/Kamchatka")).time() < time(21, 0) for t in times)


def test_zones_of_a_number() -> None:
    assert callee_zones("+14155550100") == ("America/Los_Angeles",)  # geographic: its area only
    au = callee_zones("+61412345678")
    assert {"Australia/Perth", "Australia/Sydney", "Australia/Lord_Howe"} <= set(au)
    us_toll_free = callee_zones("+18002345678")
    assert {"America/New_York", "Pacific/Honolulu"} <= set(us_toll_free)
    assert "Pacific/Guam" not in us_toll_free and "America/Jamaica" not in us_toll_free  # +1, not US
    ru = callee_zones("+79161234567")
    assert "Europe/Moscow" in ru and "Asia/Almaty" not in ru  # +7 9 is Russia, not Kazakhstan
    assert callee_zones("+881612345678") == () and callee_zones("nonsense") == ()


def test_zones_that_never_share_a_window_mean_never() -> None:
    hours = parse_weekly(ALWAYS, "UTC")
    after = datetime(2026, 6, 1, tzinfo=UTC)
    # 13 hours a day: any two zones share some of it, these three (UTC, +8, -7) none.
    assert next_allowed(hours, ("UTC", "Asia/Shanghai"), WINDOW, after) == datetime(2026, 6, 1, 8, tzinfo=UTC)
    assert next_allowed(hours, ("UTC", "Asia/Shanghai", "America/Los_Angeles"), WINDOW, after) is None
    late = parse_weekly("daily 22:00-23:00", "America/New_York")
    assert next_allowed(late, ("America/New_York",), WINDOW, after) is None  # open only after 21:00
    never = parse_weekly("mon 10:00-11:00; closed 2026-06-01", "UTC")
    assert next_allowed(never, (), WINDOW, after) == datetime(2026, 6, 8, 10, tzinfo=UTC)


def test_window_follows_the_wall_clock_across_dst() -> None:
    ny = ("America/New_York",)
    hours = parse_weekly(ALWAYS, "UTC")
    # 2026-03-08: clocks go forward in New York. 08:00 EST on the 7th, 08:00 EDT on the 8th.
    assert next_allowed(hours, ny, WINDOW, datetime(2026, 3, 7, 2, tzinfo=UTC)) == datetime(
        2026, 3, 7, 13, tzinfo=UTC
    )
    assert next_allowed(hours, ny, WINDOW, datetime(2026, 3, 8, 2, tzinfo=UTC)) == datetime(
        2026, 3, 8, 12, tzinfo=UTC
    )
    assert not callee_ok(ny, datetime(2026, 3, 8, 11, 59, tzinfo=UTC), WINDOW)
    assert callee_ok(ny, datetime(2026, 3, 8, 12, 0, tzinfo=UTC), WINDOW)


def test_daily_window_parsing() -> None:
    assert (DailyWindow.parse(" 8:30 - 20:00 ").start, DailyWindow.parse("09:00-24:00").end) == (510, 1440)
    for bad in ("21:00-08:00", "08:00-08:00", "08:00", "25:00-26:00", "08:60-09:00", "08:00-24:30"):
        with pytest.raises(ValueError, match="calling hours"):
            DailyWindow.parse(bad)
    with pytest.raises(ValueError, match="naive"):
        callee_ok(("UTC",), datetime(2026, 1, 1), WINDOW)


# -- destinations at dial time ------------------------------------------------------------------


@pytest.mark.parametrize(
    "number",
    ["+881612345678", "+447012345678", "+5372345678", "+252612345678", "+18762345678", "+18092345678"],
)
def test_fraud_destinations_are_refused_at_dial_time_by_default(number: str) -> None:
    refusal = check_destination(number, DestinationPolicy.home("US"))
    assert refusal is not None and number in refusal


def test_dial_time_check_sees_policy_changes() -> None:
    policy = DestinationPolicy.home("US")
    assert check_destination("+14155550100", policy) is None
    assert check_destination("+18002345678", policy) is None  # toll-free at home
    assert "premium" in (check_destination("+19005550199", policy) or "")
    assert "block list" in (check_destination("+14155550100", DestinationPolicy.home("US", ["+1415*"])) or "")
    assert "emergency" in (check_destination("911", policy) or "")
    assert "short" in (check_destination("+1415555", policy) or "")
    assert "doesn't look" in (check_destination("+1 415 555 01", policy) or "")


# -- properties ---------------------------------------------------------------------------------

REGIONS = ["US", "CA", "AU", "RU", "GB", "BR", "MX", "IN", "ID", "FR", "DE", "JP", "NZ", "AR", "CL", "KZ"]
TYPES = [PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE, PhoneNumberType.TOLL_FREE]
WINDOWS = [WINDOW, DailyWindow.parse("09:00-17:00"), DailyWindow.parse("07:30-22:00")]
SPECS = [ALWAYS, DEFAULT_HOURS, "mon,wed 12:00-13:00; sun 18:00-02:00", "daily 06:00-09:00,19:00-23:00"]
INSTANTS = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)


@st.composite
def numbers(draw: st.DrawFn) -> str:
    """Valid numbers of many regions and types: an example number with random trailing digits."""
    region, kind = draw(st.sampled_from(REGIONS)), draw(st.sampled_from(TYPES))
    example = phonenumbers.example_number_for_type(region, kind)
    if example is None:
        example = phonenumbers.example_number(region)
    assert example is not None
    national = str(example.national_number)
    tail = draw(st.integers(0, 999))
    candidate = phonenumbers.parse(f"+{example.country_code}{national[:-3]}{tail:03d}")
    if not phonenumbers.is_valid_number(candidate):
        candidate = example
    return phonenumbers.format_number(candidate, phonenumbers.PhoneNumberFormat.E164)


def _inside_everywhere(zones: tuple[str, ...], at: datetime, window: DailyWindow) -> bool:
    for name in zones:
        local = at.astimezone(ZoneInfo(name))
        minute = local.hour * 60 + local.minute
        if not window.start <= minute < window.end:
            return False
    return True


@settings(max_examples=300, deadline=None)
@given(numbers(), INSTANTS, st.sampled_from(WINDOWS))
def test_every_allowed_instant_is_inside_the_window_in_every_zone(
    phone: str, at: datetime, window: DailyWindow
) -> None:
    zones = callee_zones(phone)
    assert zones, phone  # every valid number of these regions has zones
    if callee_ok(zones, at, window):
        assert _inside_everywhere(zones, at, window)


@settings(max_examples=150, deadline=None)
@given(
    numbers(), INSTANTS, st.sampled_from(WINDOWS), st.sampled_from(SPECS), st.randoms(use_true_random=False)
)
def test_next_allowed_is_allowed_and_skips_no_allowed_minute(
    phone: str, after: datetime, window: DailyWindow, spec: str, rnd: object
) -> None:
    import random

    assert isinstance(rnd, random.Random)
    zones = callee_zones(phone)
    hours = parse_weekly(spec, zones[0] if zones else "UTC")
    found = next_allowed(hours, zones, window, after)
    end = found if found is not None else after + timedelta(days=14)
    if found is not None:
        assert found >= after
        assert allowed_at(hours, zones, window, found)
        assert _inside_everywhere(zones, found, window) and hours.is_open(found)
    # No minute-aligned instant in [after, end) is allowed: sample them, and the last one.
    first = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    span = int((end - first).total_seconds() // 60)
    samples = {first + timedelta(minutes=rnd.randrange(span)) for _ in range(60)} if span > 0 else set()
    if span > 0:
        samples.add(first + timedelta(minutes=span - 1))
    for minute in samples:
        if minute < end:
            assert not allowed_at(hours, zones, window, minute), (minute, found)
