"""Test data shared by the tests in this folder (``from factories import ...``)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, date, datetime, time
from typing import Any

from agent.conversation import ClaudeAgent
from agent.llm import MODEL_RETRY
from storage.models import BookingWindow, CallRequest, ChatOrigin, Platform


def call_request(**overrides: Any) -> CallRequest:
    """A haircut at Joe's Barbershop for Alex Doe, December 1-4 2026, 13:00-18:00 Los Angeles."""
    base: dict[str, Any] = dict(
        business_name="Joe's Barbershop",
        phone="+14155550100",
        business_tz="America/Los_Angeles",
        service="haircut",
        person_name="Alex Doe",
        person_tz="America/Los_Angeles",
        window=BookingWindow(date(2026, 12, 1), date(2026, 12, 4), time(13, 0), time(18, 0), 30),
        origin=ChatOrigin(Platform.CLI, "chat", "user"),
    )
    return CallRequest(**{**base, **overrides})


class FakeCalendar:
    """The FreeBusy port in memory (GraphCalendar itself is tested against sandbox.graph).

    ``fail`` makes the next queries raise; ``gate`` holds them until set; ``entered`` is set by
    the first query.
    """

    def __init__(self, busy: list[tuple[datetime, datetime]] | None = None) -> None:
        self.spans = busy or []
        self.queries: list[tuple[datetime, datetime]] = []
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def busy(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        self.queries.append((start, end))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [(s, e) for s, e in self.spans if s < end and e > start]


def claude_agent(client: Any, **overrides: Any) -> ClaudeAgent:
    """A ``ClaudeAgent`` for ``call_request()``: an empty ``FakeCalendar``, Robin, 25 Nov 2026 9 am in
    Los Angeles, three attempts 0.25 s apart. Pass ``sleep`` to keep retries from really waiting."""
    base: dict[str, Any] = dict(
        model="claude-haiku-5-5",
        request=call_request(),
        calendar=FakeCalendar(),
        assistant_name="Robin",
        clock=lambda: datetime(2026, 11, 25, 17, 0, tzinfo=UTC),
        retry=replace(MODEL_RETRY, max_attempts=3, base_delay=0.25),
    )
    return ClaudeAgent(client, **{**base, **overrides})
