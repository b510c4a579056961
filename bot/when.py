"""Pure resolution of the person's words about *when* into dates and times of day.

Chat requests say "next week", "tomorrow afternoon" or "Friday morning"; the
booking window needs concrete dates in the person's time zone. Everything
here is a pure function of the text and an injected ``today`` so the rules
can be unit-tested exhaustively and the LLM never has to do calendar maths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WD_RE = r"(mon|tue|tues|wed|thu|thur|thurs|fri|sat|sun)(?:day|nesday|sday|rsday|urday)?"
MONTHS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip
_MONTH_RE = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"

#: Named parts of the day (earliest start, latest end).
PARTS_OF_DAY: dict[str, tuple[time, time]] = {
    "morning": (time(9, 0), time(12, 0)),
    "lunch": (time(11, 30), time(14, 0)),
    "lunchtime": (time(11, 30), time(14, 0)),
    "afternoon": (time(12, 0), time(17, 0)),
    "evening": (time(17, 0), time(20, 0)),
    "tonight": (time(17, 0), time(21, 0)),
}
DEFAULT_DAY = (time(9, 0), time(18, 0))


@dataclass(frozen=True)
class DateRange:
    """Acceptable days, inclusive, in the person's time zone."""

    start: date
    end: date


@dataclass(frozen=True)
class DayTimes:
    """Acceptable times of day (earliest start, latest end)."""

    earliest: time
    latest: time


def local_today(now: datetime, tz: str) -> date:
    """The person's calendar day at ``now`` (an aware datetime)."""
    return now.astimezone(ZoneInfo(tz)).date()


def _weekday_index(word: str) -> int:
    return [w[:3] for w in WEEKDAYS].index(word[:3].lower())


def _month_index(word: str) -> int:
    return [m[:3] for m in MONTHS].index(word[:3].lower()) + 1


def _upcoming(today: date, weekday: int) -> date:
    """The next ``weekday`` on or after today."""
    return today + timedelta(days=(weekday - today.weekday()) % 7)


def _month_day(today: date, month: int, day: int) -> date | None:
    """A day-of-month without a year: this year, or next year if already past."""
    for year in (today.year, today.year + 1):
        try:
            d = date(year, month, day)
        except ValueError:
            return None
        if d >= today:
            return d
    return None


def _last_of_month(d: date) -> date:
    nxt = date(d.year + (d.month == 12), d.month % 12 + 1, 1)
    return nxt - timedelta(days=1)


def resolve_dates(text: str, today: date) -> DateRange | None:
    """Turn the person's words into an inclusive date range, or ``None`` if they name no day.

    Args:
        text: e.g. "next week", "tomorrow afternoon", "Friday morning", "2025-03-14",
            "March 14", "in 3 days", "this weekend".
        today: the person's local date (see ``local_today``).

    Returns:
        The range; a single day has ``start == end``. A range never starts before today.
    """
    t = text.lower()
    iso = [date.fromisoformat(m) for m in re.findall(r"\b(\d{4}-\d{2}-\d{2})\b", t) if _iso_ok(m)]
    if iso:
        return _clip(DateRange(min(iso), max(iso)), today)
    named = _named_days(t, today)
    if named:
        return _clip(DateRange(min(named), max(named)), today)
    if re.search(r"\bday after tomorrow\b", t):
        d = today + timedelta(days=2)
        return DateRange(d, d)
    if re.search(r"\b(today|tonight|this (morning|afternoon|evening))\b", t):
        return DateRange(today, today)
    if re.search(r"\btomorrow\b", t):
        d = today + timedelta(days=1)
        return DateRange(d, d)
    m = re.search(r"\b(?:with)?in (?:the next )?(\d{1,2}) days?\b", t)
    if m:
        n = int(m.group(1))
        if "within" in m.group(0) or "next" in m.group(0):
            return DateRange(today, today + timedelta(days=n))
        return DateRange(today + timedelta(days=n), today + timedelta(days=n))
    if re.search(r"\bnext weekend\b", t):
        sat = _upcoming(today, 5) + timedelta(days=7)
        return DateRange(sat, sat + timedelta(days=1))
    if re.search(r"\b(this )?weekend\b", t):
        sat = _upcoming(today, 5)
        start = today if today.weekday() == 6 else sat
        return DateRange(start, sat + timedelta(days=1) if today.weekday() != 6 else today)
    if re.search(r"\bnext week\b", t):
        monday = today - timedelta(days=today.weekday()) + timedelta(days=7)
        return DateRange(monday, monday + timedelta(days=6))
    if re.search(r"\b(this week|later this week|rest of the week)\b", t):
        return DateRange(today, today + timedelta(days=6 - today.weekday()))
    if re.search(r"\bnext month\b", t):
        first = _last_of_month(today) + timedelta(days=1)
        return DateRange(first, _last_of_month(first))
    if re.search(r"\bthis month\b", t):
        return DateRange(today, _last_of_month(today))
    if re.search(r"\b(asap|as soon as possible|any ?day|soon|whenever)\b", t):
        return DateRange(today, today + timedelta(days=7))
    return None


def _iso_ok(s: str) -> bool:
    try:
        date.fromisoformat(s)
    except ValueError:
        return False
    return True


def _named_days(t: str, today: date) -> list[date]:
    """Weekday names ("next Friday", "Mon or Tue") and month-day dates ("March 14", "14 Mar")."""
    out: list[date] = []
    for m in re.finditer(rf"\b(next |this |on )?{_WD_RE}\b", t):
        wd = _weekday_index(m.group(2))
        if (m.group(1) or "").strip() == "next":
            monday = today - timedelta(days=today.weekday()) + timedelta(days=7)
            out.append(monday + timedelta(days=wd))
        else:
            out.append(_upcoming(today, wd))
    pats = (
        (rf"\b{_MONTH_RE}\s+(\d{{1,2}})(?:st|nd|rd|th)?\b", 1, 2),
        (rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH_RE}", 2, 1),
    )
    for pat, mi, di in pats:
        for m in re.finditer(pat, t):
            d = _month_day(today, _month_index(m.group(mi)), int(m.group(di)))
            if d:
                out.append(d)
    return out


def _clip(r: DateRange, today: date) -> DateRange | None:
    if r.end < today:
        return None
    return DateRange(max(r.start, today), r.end)


_CLOCK = r"(noon|midday|midnight|\d{1,2}(?::\d{2})?\s*(?:am|pm|a\.m\.|p\.m\.)?)"


def _clock(s: str, *, pm_hint: bool = False) -> time | None:
    """'3pm', '15:30', '9', 'noon' → time. Bare 1–7 read as afternoon (business hours)."""
    s = s.strip().lower().replace(".", "")
    if s in ("noon", "midday"):
        return time(12, 0)
    if s == "midnight":
        return time(0, 0)
    m = re.fullmatch(r"(\d{1,2})(?::(\d{2}))?\s*(am|pm)?", s)
    if not m:
        return None
    h, mi, ap = int(m.group(1)), int(m.group(2) or 0), m.group(3)
    if h > 23 or mi > 59:
        return None
    if ap == "pm" and h < 12:
        h += 12
    elif ap == "am" and h == 12:
        h = 0
    elif ap is None and (pm_hint or 1 <= h <= 7) and h < 12:
        h += 12
    return time(h, mi)


def _plus_hours(t: time, hours: int) -> time:
    return time(min(23, max(0, t.hour + hours)), t.minute if 0 <= t.hour + hours <= 23 else 0)


def resolve_times(text: str) -> DayTimes | None:
    """Times of day from the person's words, or ``None`` if they said nothing about them.

    Handles "afternoons", "morning or afternoon", "after 3pm", "before noon",
    "between 2 and 5pm", "2-5pm", "10am to 1pm", "any time".
    """
    t = text.lower()
    m = re.search(rf"(?:between|from)?\s*{_CLOCK}\s*(?:-|–|to|and|until|till)\s*{_CLOCK}", t)
    if (
        m
        and re.search(r"\d|noon|midday", m.group(1))
        and (re.search(r"am|pm|:|noon|midday", m.group(0)) or re.search(r"between|from", m.group(0)))
    ):
        second_pm = "pm" in m.group(2).replace(".", "")
        b = _clock(m.group(2))
        a = _clock(m.group(1), pm_hint=second_pm and not re.search(r"am|a\.m\.", m.group(1)))
        if a and b and a > b:
            a = _clock(m.group(1).replace("pm", "") + "am") if "pm" not in m.group(1) else a
        if a and b and a < b:
            return DayTimes(a, b)
    after = re.search(rf"\b(?:after|from|not before)\s+{_CLOCK}", t)
    before = re.search(rf"\b(?:before|by|until|not after)\s+{_CLOCK}", t)
    if after or before:
        a = _clock(after.group(1)) if after else None
        b = _clock(before.group(1)) if before else None
        if a and b and a < b:
            return DayTimes(a, b)
        if a:
            return DayTimes(a, max(DEFAULT_DAY[1], _plus_hours(a, 1)))
        if b:
            return DayTimes(min(DEFAULT_DAY[0], _plus_hours(b, -1)), b)
    parts = [v for k, v in PARTS_OF_DAY.items() if re.search(rf"\b{k}s?\b", t)]
    if parts:
        return DayTimes(min(p[0] for p in parts), max(p[1] for p in parts))
    if re.search(r"\b(any ?time|all day|whenever)\b", t):
        return DayTimes(*DEFAULT_DAY)
    return None


def parse_duration(text: str) -> int | None:
    """Appointment length in minutes ("45 min", "1 hour", "an hour and a half"), or ``None``."""
    t = text.lower()
    if re.search(r"\b(an |one )?hour and a half\b|\b1\.5 ?h", t):
        return 90
    if re.search(r"\bhalf an hour\b", t):
        return 30
    m = re.search(r"\b(\d+(?:\.\d+)?)\s*(minutes?|mins?|m|hours?|hrs?|h)\b", t)
    if m:
        n = float(m.group(1))
        minutes = n * 60 if m.group(2).startswith("h") else n
        return int(minutes) if 5 <= minutes <= 8 * 60 else None
    if re.search(r"\b(an|one) hour\b", t):
        return 60
    return None
