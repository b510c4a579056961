"""Business-hours maths: when may we phone a business?

Pure code, no I/O. Opening hours are wall-clock times in the business's own
IANA zone, so every answer is computed per *local date* and only then turned
into an instant. That is what keeps "09:00" meaning nine in the morning on the
days the clocks change:

* a local time that does not exist (spring-forward gap) opens at the first
  instant that does exist after it (the moment of the jump);
* an ambiguous local time (fall-back) means its first occurrence (``fold=0``).

Spec grammar (case-insensitive; clauses separated by ``;`` or new lines)::

    mon-fri 09:00-17:00; sat 10:00-14:00; closed 2026-12-25, 2026-12-26
    mon 09:00-12:00,13:00-17:00        several intervals on one day
    fri 18:00-02:00                    past midnight: belongs to Friday
    sun 00:00-24:00                    24:00 is allowed as an end
    mon,wed,fri 08:00-12:00            day lists; ranges may wrap (sat-mon)
    daily 07:00-07:30                  every day
    sun closed                         explicitly closed (same as leaving it out)

A ``closed`` date is a local date of the business: no interval *starts* on it,
but an overnight interval that started the evening before still runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

#: How far ahead ``next_open`` looks before declaring a schedule never open.
HORIZON_DAYS = 370

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_ALIASES = {
    "monday": 0,
    "tues": 1,
    "tuesday": 1,
    "wednesday": 2,
    "thur": 3,
    "thurs": 3,
    "thursday": 3,
    "friday": 4,
    "saturday": 5,
    "sunday": 6,
}
_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})$")
_EXAMPLE = 'e.g. "mon-fri 09:00-17:00; sat 10:00-14:00; closed 2026-12-25"'
_MINUTES_PER_DAY = 24 * 60

#: (start minute of day, end minute counted from the same midnight). An end
#: above 1440 means the interval runs past midnight into the next day.
Interval = tuple[int, int]


@dataclass(frozen=True)
class Window:
    """One concrete opening: ``[start, end)`` as aware UTC datetimes."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class WeeklyHours:
    """A weekly opening schedule in one IANA zone, plus closed dates.

    Build it with :func:`parse_weekly`. Query methods take any aware
    datetime and answer in UTC: a ZoneInfo datetime inside a fall-back hour
    never compares equal to one in another zone (PEP 495), a trap UTC avoids.

    Attributes:
        tz: IANA zone name of the business.
        days: seven tuples (Monday first) of ``(start, end)`` minute intervals.
        closed: local dates on which no interval starts.
        spec: the text it was parsed from.
    """

    tz: str
    days: tuple[tuple[Interval, ...], ...]
    closed: frozenset[date] = frozenset()
    spec: str = ""
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_zone", _zone(self.tz))

    # -- queries ---------------------------------------------------------

    def is_open(self, now: datetime) -> bool:
        """Whether the business is open at the instant ``now``."""
        return self._window_at(_require_aware(now)) is not None

    def next_open(self, now: datetime) -> datetime:
        """``now`` (as UTC) if open, else the next instant the business opens, in UTC.

        Raises:
            ValueError: the schedule never opens within ``HORIZON_DAYS``
                (e.g. every opening day is a closed date).
        """
        now = _require_aware(now)
        if self._window_at(now) is not None:
            return now.astimezone(UTC)
        for w in self.windows(now, now + timedelta(days=HORIZON_DAYS)):
            if w.start > now:
                return w.start
        raise ValueError(f"these opening hours never open within {HORIZON_DAYS} days: {self.spec!r}")

    def windows(self, start: datetime, end: datetime) -> Iterator[Window]:
        """Concrete openings that overlap ``[start, end)``, ordered by start.

        Useful for tests and for showing "next openings" to a person.
        """
        start, end = _require_aware(start), _require_aware(end)
        day = start.astimezone(self._zone).date() - timedelta(days=1)
        last = end.astimezone(self._zone).date()
        while day <= last:
            for w in self._windows_on(day):
                if w.end > start and w.start < end:
                    yield w
            day += timedelta(days=1)

    # -- internals -------------------------------------------------------

    def _window_at(self, now: datetime) -> Window | None:
        local_day = now.astimezone(self._zone).date()
        for day in (local_day - timedelta(days=1), local_day):
            for w in self._windows_on(day):
                if w.start <= now < w.end:
                    return w
        return None

    def _windows_on(self, day: date) -> list[Window]:
        """Openings that *start* on the local date ``day``, ordered by start."""
        if day in self.closed:
            return []
        out = []
        for start_min, end_min in self.days[day.weekday()]:
            w_start = local_to_utc(day, start_min, self._zone)
            w_end = local_to_utc(day, end_min, self._zone)
            if w_end > w_start:  # a whole interval can vanish inside a DST gap
                out.append(Window(w_start, w_end))
        return out


def parse_weekly(spec: str, tz: str) -> WeeklyHours:
    """Parse an opening-hours spec (grammar in the module docstring).

    Raises:
        ValueError: the spec or the zone is invalid; the message says which
            part and shows an example, since it may be shown to a person.
    """
    zone_name = tz.strip()
    _zone(zone_name)
    days: list[list[Interval]] = [[] for _ in range(7)]
    closed: set[date] = set()
    clauses = [c.strip() for c in re.split(r"[;\n]", spec) if c.strip()]
    if not clauses:
        raise ValueError(f"opening hours are empty; {_EXAMPLE}")
    for clause in clauses:
        head, _, rest = clause.partition(" ")
        head, rest = head.lower(), rest.strip()
        if head == "closed":
            closed.update(_parse_dates(rest, clause))
            continue
        match = re.match(r"^([a-z][a-z,\-\s]*?)\s+(closed|\d.*)$", clause.strip(), re.IGNORECASE)
        if not match:
            raise ValueError(f"cannot read {clause!r}: expected days then times, {_EXAMPLE}")
        weekdays = _parse_days(match.group(1), clause)
        times = match.group(2).strip()
        if times.lower() == "closed":
            continue
        intervals = [_parse_interval(part, clause) for part in times.split(",")]
        for wd in weekdays:
            days[wd].extend(intervals)
    if not any(days):
        raise ValueError(f"opening hours {spec!r} have no opening times; {_EXAMPLE}")
    return WeeklyHours(
        tz=zone_name,
        days=tuple(tuple(sorted(d)) for d in days),
        closed=frozenset(closed),
        spec=spec,
    )


# -- helpers ---------------------------------------------------------------


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"unknown time zone {name!r} (expected an IANA name like 'Europe/London')") from e


def _require_aware(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"need a timezone-aware datetime, got naive {dt.isoformat()}")
    return dt


def _parse_days(text: str, clause: str) -> list[int]:
    result: list[int] = []
    for part in (p.strip().lower() for p in text.split(",")):
        if part in ("daily", "everyday", "every day"):
            result.extend(range(7))
            continue
        first, dash, last = (s.strip() for s in part.partition("-"))
        a = _day_index(first, clause)
        if not dash:
            result.append(a)
            continue
        b = _day_index(last, clause)
        result.extend((a + i) % 7 for i in range((b - a) % 7 + 1))  # wraps: sat-mon
    return sorted(set(result))


def _day_index(name: str, clause: str) -> int:
    if name[:3] in _DAY_NAMES and (len(name) == 3 or name in _DAY_ALIASES):
        return _DAY_NAMES.index(name[:3])
    raise ValueError(f"unknown day {name!r} in {clause!r}: use mon, tue, wed, thu, fri, sat, sun")


def _parse_interval(text: str, clause: str) -> Interval:
    start_s, dash, end_s = (s.strip() for s in text.strip().partition("-"))
    if not dash:
        raise ValueError(f"cannot read times {text.strip()!r} in {clause!r}: expected HH:MM-HH:MM")
    start, end = _parse_time(start_s, clause), _parse_time(end_s, clause)
    if start == _MINUTES_PER_DAY:
        raise ValueError(f"an opening cannot start at 24:00 in {clause!r}; use 00:00 of the next day")
    if start == end or (end == 0 and start == 0):
        raise ValueError(
            f"empty or ambiguous interval {text.strip()!r} in {clause!r}; for all day use 00:00-24:00"
        )
    if end < start:  # past midnight: belongs to the start day
        end += _MINUTES_PER_DAY
    return (start, end)


def _parse_time(text: str, clause: str) -> int:
    m = _TIME_RE.match(text)
    if not m:
        raise ValueError(f"cannot read time {text!r} in {clause!r}: expected HH:MM like 09:30")
    hours, minutes = int(m.group(1)), int(m.group(2))
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise ValueError(f"time {text!r} in {clause!r} is out of range (00:00 to 24:00)")
    return hours * 60 + minutes


def _parse_dates(text: str, clause: str) -> list[date]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"'closed' needs dates like 2026-12-25 in {clause!r}")
    try:
        return [date.fromisoformat(p) for p in parts]
    except ValueError as e:
        raise ValueError(f"cannot read closed dates in {clause!r}: use YYYY-MM-DD, comma-separated") from e


def local_to_utc(day: date, minute: int, zone: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock ``minute`` after local midnight of ``day``.

    Why not plain ``astimezone``: for a time inside a spring-forward gap it
    yields an instant *after* the gap by the gap's length (02:30 → 03:30),
    whereas opening "at 02:30" means opening as soon as the clock allows,
    i.e. at the jump itself.
    """
    extra_days, minute = divmod(minute, _MINUTES_PER_DAY)
    local = datetime.combine(day + timedelta(days=extra_days), time(minute // 60, minute % 60), zone)
    utc = local.astimezone(UTC)
    if utc.astimezone(zone).replace(tzinfo=None) == local.replace(tzinfo=None):
        return utc  # exists (ambiguous times keep fold=0: the first occurrence)
    # In the gap: fold=0 and fold=1 land on either side of the transition.
    lo_ts = int(min(utc, local.replace(fold=1).astimezone(UTC)).timestamp())
    hi_ts = int(max(utc, local.replace(fold=1).astimezone(UTC)).timestamp())
    lo_off = datetime.fromtimestamp(lo_ts, zone).utcoffset()
    while hi_ts - lo_ts > 1:
        mid = (lo_ts + hi_ts) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == lo_off:
            lo_ts = mid
        else:
            hi_ts = mid
    return datetime.fromtimestamp(hi_ts, UTC)
