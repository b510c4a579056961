"""The clocks the dispatcher sleeps on: fake, offset (demo fast-forward) and system."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from clocks import FakeClock

from concierge.clock import OffsetClock, SystemClock

T0 = datetime(2026, 6, 8, 12, 0, tzinfo=UTC)


async def _parked(clock: FakeClock | OffsetClock, n: int = 1) -> None:
    """Let freshly created waiter tasks run up to their ``wait`` (a few loop turns, no timing)."""
    for _ in range(100):
        if clock.waiting >= n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"only {clock.waiting} of {n} waiters parked")


async def test_fake_clock_wakes_only_when_time_reaches_deadline() -> None:
    clock = FakeClock(T0)
    event = asyncio.Event()
    waiter = asyncio.create_task(clock.wait(event, T0 + timedelta(minutes=10)))
    await _parked(clock)
    clock.advance(timedelta(minutes=9))
    await asyncio.sleep(0)
    assert not waiter.done() and clock.waiting == 1
    clock.advance(timedelta(minutes=1))
    async with asyncio.timeout(5):
        await waiter
    assert clock.waiting == 0 and clock.now() == T0 + timedelta(minutes=10)


async def test_fake_clock_event_wakes_and_past_deadline_returns_at_once() -> None:
    clock = FakeClock(T0)
    event = asyncio.Event()
    waiter = asyncio.create_task(clock.wait(event, None))
    await _parked(clock)
    event.set()
    async with asyncio.timeout(5):
        await waiter
    assert clock.waiting == 0
    async with asyncio.timeout(5):
        await clock.wait(asyncio.Event(), T0)  # deadline already reached
        await clock.wait(event, T0 + timedelta(days=1))  # event already set


async def test_fake_clock_several_waiters_and_cancellation() -> None:
    clock = FakeClock(T0)
    early = asyncio.create_task(clock.wait(asyncio.Event(), T0 + timedelta(seconds=1)))
    late = asyncio.create_task(clock.wait(asyncio.Event(), T0 + timedelta(hours=1)))
    await _parked(clock, 2)
    clock.set(T0 + timedelta(minutes=1))
    async with asyncio.timeout(5):
        await early
    assert not late.done()
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late
    assert clock.waiting == 0
    with pytest.raises(ValueError):
        clock.set(T0)
    assert clock() == clock.now()


async def test_offset_clock_jump_wakes_waiters_whose_deadline_passed() -> None:
    clock = OffsetClock()
    start = clock.now()
    target = start + timedelta(hours=14)
    waiter = asyncio.create_task(clock.wait(asyncio.Event(), target))
    other = asyncio.create_task(clock.wait(asyncio.Event(), start + timedelta(days=3)))
    await _parked(clock, 2)
    clock.jump_to(target)
    async with asyncio.timeout(5):
        await waiter
    assert clock.now() >= target
    assert not other.done()  # still days away
    other.cancel()
    with pytest.raises(asyncio.CancelledError):
        await other


async def test_system_clock_deadline_and_event() -> None:
    clock = SystemClock()
    event = asyncio.Event()
    async with asyncio.timeout(5):
        await clock.wait(event, clock.now() + timedelta(milliseconds=20))
    waiter = asyncio.create_task(clock.wait(event, None))
    await asyncio.sleep(0)
    event.set()
    async with asyncio.timeout(5):
        await waiter
    assert clock.now().tzinfo is UTC
