"""Clocks the dispatcher sleeps on.

The dispatcher never polls: it sleeps until either something happens (an
``asyncio.Event`` is set) or the next job falls due. Making that sleep a
method of an injected clock lets tests drive time by hand (their fake clock
subclasses :class:`ReschedulingClock`) and lets the demo skip ahead to opening
time (``OffsetClock``) while the call's audio still runs at real speed.

Every clock shares one mechanism: the waiter sits in ``event.wait()``
inside an ``asyncio.timeout`` whose deadline is on the event loop's own
clock; moving the clock reschedules those deadlines. No helper tasks are
created, so nothing can leak.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Wall time plus an interruptible sleep."""

    def now(self) -> datetime:
        """The current instant, aware UTC."""
        ...

    async def wait(self, event: asyncio.Event, until: datetime | None) -> None:
        """Return when ``event`` is set or the clock reaches ``until`` (``None``: no deadline)."""
        ...


class _Waiter:
    __slots__ = ("timeout", "until")

    def __init__(self, until: datetime | None, timeout: asyncio.Timeout) -> None:
        self.until = until
        self.timeout = timeout


class ReschedulingClock:
    """Shared ``wait`` for clocks whose deadlines may move (see module doc).

    A subclass supplies ``now`` and ``_loop_deadline`` and calls ``_reschedule_all``
    whenever its time jumps.
    """

    def __init__(self) -> None:
        self._waiters: set[_Waiter] = set()

    def now(self) -> datetime:
        raise NotImplementedError

    def __call__(self) -> datetime:
        """So a clock can be passed where a ``Callable[[], datetime]`` is wanted (``JobStore``)."""
        return self.now()

    def _loop_deadline(self, until: datetime | None) -> float | None:
        """Event-loop time at which ``until`` is reached, or ``None`` for never."""
        raise NotImplementedError

    @property
    def waiting(self) -> int:
        """How many coroutines are parked in :meth:`wait` (tests use this)."""
        return len(self._waiters)

    async def wait(self, event: asyncio.Event, until: datetime | None) -> None:
        if event.is_set() or (until is not None and until <= self.now()):
            return
        try:
            async with asyncio.timeout_at(self._loop_deadline(until)) as cm:
                waiter = _Waiter(until, cm)
                self._waiters.add(waiter)
                try:
                    await event.wait()
                finally:
                    self._waiters.discard(waiter)
        except TimeoutError:
            return

    def _reschedule_all(self) -> None:
        """Re-derive every waiter's loop deadline after the clock moved."""
        for waiter in list(self._waiters):
            if waiter.timeout.expired():
                continue
            deadline = self._loop_deadline(waiter.until)
            if deadline is not None and waiter.until is not None and waiter.until <= self.now():
                self._waiters.discard(waiter)  # fire once; a second reschedule would raise
            waiter.timeout.reschedule(deadline)


class SystemClock(ReschedulingClock):
    """Real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def _loop_deadline(self, until: datetime | None) -> float | None:
        if until is None:
            return None
        loop = asyncio.get_running_loop()
        return loop.time() + max(0.0, (until - self.now()).total_seconds())


class OffsetClock(SystemClock):
    """Real time shifted by an offset that can jump forward (the demo's fast-forward).

    Time keeps flowing at real speed after a jump, so audio pacing, timeouts
    and latency figures stay real while "the business opens in 14 hours"
    takes no time at all.
    """

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        super().__init__()
        self._offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def jump_to(self, dt: datetime) -> None:
        """Make ``now()`` equal ``dt`` and wake waiters whose deadline passed."""
        if dt.tzinfo is None:
            raise ValueError("jump_to needs an aware datetime")
        self._offset = dt - datetime.now(UTC)
        self._reschedule_all()

    def jump(self, delta: timedelta) -> None:
        """Move time by ``delta`` (may be negative)."""
        self.jump_to(self.now() + delta)
