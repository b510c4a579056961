"""The one fake clock of the suite: time that only moves when a test says so."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from concierge.clock import ReschedulingClock


class FakeClock(ReschedulingClock):
    """A ``concierge.clock.Clock`` (and a ``Callable[[], datetime]`` for ``JobStore``) moved by hand.

    Waiters with a deadline are woken by :meth:`advance` / :meth:`set` once the fake time
    reaches it, never by real time passing, so tests of leases, back-off and opening hours
    neither sleep nor race the wall clock.
    """

    def __init__(self, start: datetime) -> None:
        super().__init__()
        if start.tzinfo is None:
            raise ValueError("FakeClock needs an aware start time")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta | float) -> None:
        """Move time forward by ``delta`` (a ``timedelta`` or seconds)."""
        if not isinstance(delta, timedelta):
            delta = timedelta(seconds=delta)
        if delta < timedelta(0):
            raise ValueError("FakeClock cannot go backwards")
        self.set(self._now + delta)

    def set(self, dt: datetime) -> None:
        """Jump to ``dt`` (not earlier than now) and wake waiters whose deadline passed."""
        dt = dt.astimezone(UTC)
        if dt < self._now:
            raise ValueError("FakeClock cannot go backwards")
        self._now = dt
        self._reschedule_all()

    def _loop_deadline(self, until: datetime | None) -> float | None:
        if until is None or until > self._now:
            return None  # only advance()/set() may reach it
        return asyncio.get_running_loop().time()
