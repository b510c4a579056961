"""When a business may be phoned: its weekly opening hours, in its own zone, and
the callee's own local calling hours in every zone its number may ring in
(``concierge.calling_window``).

Shared by the desk (planning an errand), the dispatcher (the check right before
every dial) and the outcomes (when a retry or re-queue may happen), so all three
read the same rules the same way.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import lru_cache

from concierge.calling_window import DailyWindow, may_call_now, next_call_time
from concierge.clock import Clock
from concierge.hours import WeeklyHours, parse_weekly
from storage.models import CallRequest

log = logging.getLogger(__name__)


@lru_cache(maxsize=256)
def _hours(spec: str, tz: str) -> WeeklyHours:
    return parse_weekly(spec, tz)


class Schedule:
    """Opening hours per request, with a default for requests that name none.

    Args:
        default_hours: opening-hours spec (``concierge.hours.parse_weekly``) used when
            a request has none.
        clock: what "now" is.
        callee_window: the callee's local calling hours (``CALLEE_LOCAL_HOURS``); ``None``
            leaves only the business's hours (tests of other rules).
    """

    def __init__(self, default_hours: str, clock: Clock, callee_window: DailyWindow | None = None) -> None:
        self.default_hours = default_hours
        self.clock = clock
        self.callee_window = callee_window

    def hours_for(self, request: CallRequest) -> WeeklyHours:
        """The business's weekly hours (its own spec or the default) in its zone.

        Raises:
            ValueError: the spec or zone is invalid.
        """
        return _hours(request.opening_hours or self.default_hours, request.business_tz)

    def next_opening(self, request: CallRequest, after: datetime) -> datetime | None:
        """Next instant at or after ``after`` a call is allowed; ``None`` if never (bad hours).

        Allowed: the business is open and, with a callee window, the callee's local time is
        inside it in every zone the number may ring in.
        """
        try:
            if self.callee_window is not None:
                return next_call_time(self.hours_for(request), request.phone, self.callee_window, after)
            return self.hours_for(request).next_open(after)
        except ValueError as e:
            log.warning("no opening time for %s: %s", request.business_name, e)
            return None

    def is_open_now(self, request: CallRequest) -> bool:
        """Whether a call is allowed at this instant (see :meth:`next_opening`; bad hours: never)."""
        try:
            now, window = self.clock.now(), self.callee_window
            if window is not None:
                return may_call_now(self.hours_for(request), request.phone, window, now)
            return self.hours_for(request).is_open(now)
        except ValueError:
            return False
