"""When may the callee be phoned: the business's hours *and* the callee's own clock.

Pure code, no I/O. A business being open is not enough: a number may ring in a
zone other than the one its opening hours are read in (an Australian mobile can
be in Perth or Sydney, a US toll-free line anywhere from Honolulu to New York).
So a call is allowed at an instant only when

* the business is open then (:class:`concierge.hours.WeeklyHours`), and
* the local clock reads inside the daily window (``CALLEE_LOCAL_HOURS``,
  default 08:00-21:00, TCPA-style calling hours) in **every** zone the number
  may be in (``bot.phone.callee_zones``).

Each zone's window is computed per local date and only then turned into
instants, exactly like opening hours, so DST changes keep "08:00" meaning eight
in the morning. A number with no known zone has no callee-local constraint
beyond the business's hours (its zone is the business's own).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from bot.phone import callee_zones
from concierge.hours import WeeklyHours, Window, local_to_utc

#: How many days after the business's next opening ``next_allowed`` searches. The callee
#: window repeats daily, so two weeks of openings that never meet it means they never will.
SEARCH_DAYS = 14

Span = tuple[datetime, datetime]

_WINDOW_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True)
class DailyWindow:
    """A daily local-time window ``[start, end)`` in minutes after midnight.

    It never wraps past midnight: calling hours are a daytime span.
    """

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= _MINUTES_PER_DAY:
            raise ValueError(f"calling hours must be HH:MM-HH:MM within one day, start before end: {self}")

    @classmethod
    def parse(cls, text: str) -> DailyWindow:
        """Read ``"08:00-21:00"``.

        Raises:
            ValueError: not ``HH:MM-HH:MM``, out of range, or not start < end.
        """
        m = _WINDOW_RE.match(text)
        if not m:
            raise ValueError(f"calling hours {text!r}: expected HH:MM-HH:MM like 08:00-21:00")
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        if m1 > 59 or m2 > 59 or h1 > 23 or h2 > 24 or (h2 == 24 and m2):
            raise ValueError(f"calling hours {text!r}: times run from 00:00 to 24:00")
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start >= end:
            raise ValueError(f"calling hours {text!r}: the start must come first (no overnight span)")
        return cls(start, end)

    def __str__(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"


def callee_ok(zones: Iterable[str], at: datetime, window: DailyWindow) -> bool:
    """Whether the instant ``at`` is inside ``window`` in every zone of ``zones``.

    An empty ``zones`` puts no constraint (the business's hours still apply).
    """
    at = _aware(at)
    return all(_inside(ZoneInfo(z), at, window) for z in zones)


def allowed_at(hours: WeeklyHours, zones: Iterable[str], window: DailyWindow, at: datetime) -> bool:
    """The dial-time check: the business is open at ``at`` and the callee is within hours."""
    return hours.is_open(at) and callee_ok(zones, at, window)


def next_allowed(
    hours: WeeklyHours,
    zones: Sequence[str],
    window: DailyWindow,
    after: datetime,
    *,
    search_days: int = SEARCH_DAYS,
) -> datetime | None:
    """The first instant at or after ``after`` when a call is allowed (UTC), or ``None``.

    The intersection of the business's openings with each zone's daily window,
    computed as intervals (no stepping), over ``search_days`` days from the
    business's next opening. ``None`` means never: the business never opens
    (within ``concierge.hours.HORIZON_DAYS``), or its hours never meet the
    callee's window, or the zones' windows never overlap at all.
    """
    after = _aware(after).astimezone(UTC)
    try:
        start = hours.next_open(after)
    except ValueError:
        return None
    end = start + timedelta(days=search_days)
    allowed = _merge([(w.start, w.end) for w in hours.windows(start, end)])
    # Zones that share their clock over the range (most of a country's) are intersected once.
    distinct = {tuple(_daily_windows(ZoneInfo(name), window, start, end)) for name in zones}
    for spans in distinct:
        allowed = _intersect(allowed, list(spans))
        if not allowed:
            return None
    for a, b in allowed:
        if b > start:
            return max(a, start)
    return None


def next_call_time(hours: WeeklyHours, phone: str, window: DailyWindow, after: datetime) -> datetime | None:
    """:func:`next_allowed` for an E.164 number: the one call the dispatcher's planning needs.

    Use it wherever the business's next opening was used (planning at intake, retries,
    re-queues): ``None`` means the errand can never be called.
    """
    return next_allowed(hours, callee_zones(phone), window, after)


def may_call_now(hours: WeeklyHours, phone: str, window: DailyWindow, now: datetime) -> bool:
    """:func:`allowed_at` for an E.164 number: the dispatcher's check right before a dial."""
    return allowed_at(hours, callee_zones(phone), window, now)


# -- helpers ---------------------------------------------------------------


def _aware(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"need a timezone-aware datetime, got naive {dt.isoformat()}")
    return dt


@functools.lru_cache(maxsize=32768)
def _daily(zone: ZoneInfo, window: DailyWindow, d: date) -> Window:
    """The window on local date ``d`` as UTC instants (cached: the dispatcher asks often)."""
    return Window(local_to_utc(d, window.start, zone), local_to_utc(d, window.end, zone))


def _inside(zone: ZoneInfo, at: datetime, window: DailyWindow) -> bool:
    """``at`` within the window of its own local date (computed like the intervals, so both agree)."""
    local = at.astimezone(zone)
    for day in (local - timedelta(days=1), local, local + timedelta(days=1)):
        w = _daily(zone, window, day.date())
        if w.start <= at < w.end:
            return True
    return False


def _daily_windows(
    zone: ZoneInfo, window: DailyWindow, start: datetime, end: datetime
) -> list[tuple[datetime, datetime]]:
    out = []
    day = start.astimezone(zone) - timedelta(days=1)
    last = end.astimezone(zone) + timedelta(days=1)
    while day.date() <= last.date():
        w = _daily(zone, window, day.date())
        if w.end > w.start:
            out.append((w.start, w.end))
        day += timedelta(days=1)
    return out


def _merge(spans: list[Span]) -> list[Span]:
    """Sorted, with overlapping or touching spans joined (back-to-back openings are one)."""
    out: list[Span] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _intersect(a: list[Span], b: list[Span]) -> list[Span]:
    """Intersection of two merged (sorted, disjoint) span lists, in one pass."""
    out: list[Span] = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo < hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out
