"""The calendar snapshot that keeps Graph off the conversation path (``agent.tools.BookingTools``).

Prefetched once while the phone rings; ``check_availability`` answers from it; ``confirm_booking``
still asks the calendar live (a meeting added after the snapshot must refuse the booking).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import pytest
from factories import FakeCalendar, call_request

from agent.tools import BookingTools
from storage.errors import ProviderConnectionError
from storage.models import BookingWindow, CallRequest, ChatOrigin, Platform

LA = ZoneInfo("America/Los_Angeles")
#: The tests run on 25 November 2026 (the bookings are a week ahead).
NOW = datetime(2026, 11, 25, 17, 0, tzinfo=UTC)
TWO_PM = {"start": "2026-12-01T14:00", "end": "2026-12-01T14:30"}


def request() -> CallRequest:
    return call_request(
        window=BookingWindow(date(2026, 12, 1), date(2026, 12, 2), time(12, 0), time(17, 0), 30),
        origin=ChatOrigin(Platform.SLACK, "C1", "U1"),
    )


def at(hour: int, minute: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=LA)


async def test_snapshot_answers_availability_without_another_query() -> None:
    cal = FakeCalendar()
    cal.spans = [(at(13), at(14))]
    tools = BookingTools(request(), cal, prefetch=True, clock=lambda: NOW)
    try:
        busy = await tools.run("check_availability", {"start": "2026-12-01T13:00", "end": "2026-12-01T13:30"})
        free = await tools.run("check_availability", {"start": "2026-12-02T15:00", "end": "2026-12-02T15:30"})
        # one snapshot of the whole window, plus the live check begun for the free slot only
        await tools.run(
            "confirm_booking", {"start": "2026-12-02T15:00", "end": "2026-12-02T15:30", "service": "x"}
        )
    finally:
        await tools.aclose()
    assert "DOES NOT FIT" in busy.content and "13:00–14:00" not in busy.content  # no busy spans
    assert "verdict: FITS" in free.content
    assert cal.queries[0] == (datetime(2026, 12, 1, tzinfo=LA), datetime(2026, 12, 3, tzinfo=LA))
    assert cal.queries[1:] == [(at(15, day=2), at(15, 30, day=2))]


async def test_confirm_checks_live_and_refuses_a_meeting_added_after_the_snapshot() -> None:
    cal = FakeCalendar()
    tools = BookingTools(request(), cal, prefetch=True, clock=lambda: NOW)
    try:
        fits = await tools.run("check_availability", TWO_PM)
        assert "verdict: FITS" in fits.content
        cal.spans = [(at(14), at(15))]  # booked elsewhere meanwhile
        cal.queries.clear()
        # the live check already answered "free" for this slot: a fresh confirm of another slot asks again
        done = await tools.run(
            "confirm_booking", {"start": "2026-12-01T14:15", "end": "2026-12-01T14:45", "service": "haircut"}
        )
    finally:
        await tools.aclose()
    assert done.content.startswith("REFUSED: the person is busy")
    assert cal.queries == [(at(14, 15), at(14, 45))]
    assert tools.booking is None


async def test_confirm_uses_the_live_check_begun_by_check_availability() -> None:
    cal = FakeCalendar()
    tools = BookingTools(request(), cal, prefetch=True, clock=lambda: NOW)
    try:
        await tools.run("check_availability", TWO_PM)
        done = await tools.run(
            "confirm_booking", {"start": "2026-12-01T14:00", "end": "2026-12-01T14:30", "service": "haircut"}
        )
    finally:
        await tools.aclose()
    assert done.content.startswith("CONFIRMED")
    assert len(cal.queries) == 2  # the snapshot and one live check, shared by check and confirm
    assert tools.booking is not None and tools.booking.start == at(14)


async def test_a_failed_snapshot_falls_back_to_live_queries() -> None:
    cal = FakeCalendar()
    cal.fail = ProviderConnectionError("graph unreachable", provider="graph")
    tools = BookingTools(request(), cal, prefetch=True, clock=lambda: NOW)
    try:
        first = await tools.run("check_availability", TWO_PM)
        cal.fail = None
        second = await tools.run("check_availability", TWO_PM)
    finally:
        await tools.aclose()
    assert first.is_error and "calendar service had a problem" in first.content
    assert "graph unreachable" not in first.content  # provider text goes to the log only
    assert "verdict: FITS" in second.content


async def test_aclose_cancels_a_pending_snapshot() -> None:
    cal = FakeCalendar()
    cal.gate = asyncio.Event()
    tools = BookingTools(request(), cal, prefetch=True, clock=lambda: NOW)
    await asyncio.wait_for(cal.entered.wait(), 5)
    assert len(cal.queries) == 1
    await tools.aclose()
    with pytest.raises(asyncio.CancelledError):
        await tools._snapshot  # type: ignore[misc]


async def test_a_cancelled_check_leaves_the_shared_snapshot_running() -> None:
    cal = FakeCalendar()
    cal.gate = asyncio.Event()
    tools = BookingTools(request(), cal, prefetch=True, clock=lambda: NOW)
    try:
        check = asyncio.create_task(tools.run("check_availability", TWO_PM))
        await asyncio.wait_for(cal.entered.wait(), 5)
        check.cancel()  # a barge-in while the snapshot is still on its way
        with pytest.raises(asyncio.CancelledError):
            await check
        cal.gate.set()
        again = await tools.run("check_availability", TWO_PM)
    finally:
        await tools.aclose()
    assert "verdict: FITS" in again.content
    assert cal.queries[0] == tools.snapshot_span
