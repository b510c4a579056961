"""When a business may be phoned: its weekly opening hours, in its own zone.

Shared by the desk (planning an errand), the dispatcher (the check right before
every dial) and the outcomes (when a retry may happen), so all three read the
same hours the same way.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import lru_cache

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
    """

    def __init__(self, default_hours: str, clock: Clock) -> None:
        self.default_hours = default_hours
        self.clock = clock

    def hours_for(self, request: CallRequest) -> WeeklyHours:
        """The business's weekly hours (its own spec or the default) in its zone.

        Raises:
            ValueError: the spec or zone is invalid.
        """
        return _hours(request.opening_hours or self.default_hours, request.business_tz)

    def next_opening(self, request: CallRequest, after: datetime) -> datetime | None:
        """Next instant at or after ``after`` the business is open; ``None`` if never (bad hours)."""
        try:
            return self.hours_for(request).next_open(after)
        except ValueError as e:
            log.warning("no opening time for %s: %s", request.business_name, e)
            return None

    def is_open_now(self, request: CallRequest) -> bool:
        """Whether the business is open at this instant (bad hours: never)."""
        try:
            return self.hours_for(request).is_open(self.clock.now())
        except ValueError:
            return False
