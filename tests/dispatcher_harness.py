"""Fakes and a harness for the dispatcher tests (imported by the other test_dispatcher* files).

``CallPlacer`` and ``Notifier`` are interfaces to other layers (telephony,
bots), so small recording fakes stand in for them here; the queue is the real
``JobStore`` on SQLite and time is a ``FakeClock``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from clocks import FakeClock

from concierge.clock import Clock
from concierge.dispatcher import Dispatcher
from storage.db import Database, open_database
from storage.errors import ProviderError
from storage.jobs import JobStore
from storage.models import BookingWindow, CallRequest, ChatOrigin, Job, Platform, Turn
from storage.ports import FoundCall, JobEvent

WEEKDAYS = "mon-fri 09:00-17:00"
_NUMBERS = itertools.count(100)


def request(
    *,
    user: str = "u1",
    hours: str | None = None,
    tz: str = "America/New_York",
    name: str = "Joe's Barbershop",
    phone: str | None = None,
) -> CallRequest:
    """An errand; each call phones its own number unless ``phone`` is given (per-number limits)."""
    return CallRequest(
        business_name=name,
        phone=phone or f"+1415555{next(_NUMBERS) % 10_000:04d}",
        business_tz=tz,
        service="haircut",
        person_name="Alex",
        person_tz="America/Los_Angeles",
        window=BookingWindow(date(2026, 6, 8), date(2026, 6, 12)),
        origin=ChatOrigin(platform=Platform.TELEGRAM, chat_id="c1", user_id=user),
        opening_hours=hours,
    )


@dataclass
class PlacedCall:
    job_id: str
    at: datetime
    attempt: int
    call_sid: str


class FakePlacer:
    """Records every call with the fake time it was placed at."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.calls: list[PlacedCall] = []
        self.hung_up: list[str] = []
        self.status: dict[str, str] = {}
        self.status_error: ProviderError | None = None
        self.errors: list[ProviderError] = []  # raised by the next place_call calls, in order
        self.gate: asyncio.Event | None = None  # when set, place_call waits for it
        self.entered = asyncio.Event()
        self.on_place: Any = None  # optional sync callback(job) run at the moment of placing
        self.store: JobStore | None = None  # when set, place_call stores the attempt's nonce first
        self.found: list[FoundCall] = []  # what find_calls answers
        self.find_error: ProviderError | None = None
        self.finds = 0

    async def place_call(self, job: Job) -> str:
        if self.store is not None:
            await self.store.update_meta(
                job.id, call_nonce=f"n{len(self.calls)}", call_nonce_attempt=job.attempts,
                dial_started_at=self.clock.now(),
            )  # fmt: skip
        if self.on_place is not None:
            self.on_place(job)
        call_sid = f"CA{len(self.calls) + 1:032x}"
        self.calls.append(PlacedCall(job.id, self.clock.now(), job.attempts, call_sid))
        self.entered.set()
        if self.errors:
            raise self.errors.pop(0)
        if self.gate is not None:
            await self.gate.wait()
        return call_sid

    async def find_calls(self, to: str, *, started_after: datetime) -> list[FoundCall]:
        self.finds += 1
        if self.find_error is not None:
            raise self.find_error
        return list(self.found)

    async def call_status(self, call_sid: str) -> str:
        if self.status_error is not None:
            raise self.status_error
        return self.status.get(call_sid, "completed")

    async def hang_up(self, call_sid: str) -> None:
        self.hung_up.append(call_sid)


@dataclass
class Note:
    job_id: str
    event: JobEvent
    state: str
    transcript: tuple[Turn, ...]


class FakeNotifier:
    def __init__(self) -> None:
        self.notes: list[Note] = []

    async def notify(self, job: Job, event: JobEvent, transcript: Sequence[Turn] = ()) -> None:
        self.notes.append(Note(job.id, event, str(job.state), tuple(transcript)))

    def events(self, job_id: str) -> list[JobEvent]:
        return [n.event for n in self.notes if n.job_id == job_id]


@dataclass
class Harness:
    db: Database
    store: JobStore
    clock: FakeClock
    placer: FakePlacer
    notifier: FakeNotifier
    dispatcher: Dispatcher
    task: asyncio.Task[None] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    async def start(self) -> None:
        self.task = asyncio.create_task(self.dispatcher.run())
        await self.idle()

    async def idle(self) -> None:
        """Wait until the dispatcher has finished reacting (no sleeping in tests)."""
        async with asyncio.timeout(5):
            while True:
                await self.dispatcher.wait_idle()
                if self.task is None or not self.task.done():
                    return
                self.task.result()  # surface a crash of the loop

    async def run_until(self, target: datetime) -> None:
        """Let fake time flow to ``target``, stopping at every deadline the loop sleeps until.

        Unlike ``clock.set(target)`` (a jump, as after a suspended VM), this is
        how real time passes: the loop wakes at each deadline on the way.
        """
        while True:
            await self.idle()
            deadline = self.dispatcher.sleeping_until
            if deadline is None or deadline >= target:
                break
            self.clock.set(max(deadline, self.clock.now()))
        self.clock.set(max(target, self.clock.now()))
        await self.idle()

    async def stop(self) -> None:
        if self.task is not None:
            self.dispatcher.stop()
            async with asyncio.timeout(5):
                await self.task
            self.task = None

    def new_dispatcher(self, **overrides: Any) -> Dispatcher:
        return Dispatcher(
            self.store, self.placer, self.notifier, **{**self.options, "clock": self.clock, **overrides}
        )


def local(tz: str, y: int, mo: int, d: int, h: int = 0, mi: int = 0) -> datetime:
    """A wall-clock time in ``tz`` as a UTC instant."""
    return datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(tz)).astimezone(UTC)


@asynccontextmanager
async def harness(
    path: Path | str,
    start: datetime,
    *,
    start_loop: bool = True,
    clock: Any = None,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    """Real store and dispatcher with fakes around them; ``clock`` overrides ``FakeClock(start)``."""
    clock = clock if clock is not None else FakeClock(start)
    db = await open_database(path)
    try:
        store = JobStore(db, clock=clock)
        placer = FakePlacer(clock)
        notifier = FakeNotifier()
        options: dict[str, Any] = {
            "owner": "disp-1",
            "default_hours": WEEKDAYS,
            "max_concurrent": 3,
            "max_attempts": 3,
            "lease_seconds": 900.0,
            "retry_backoff": timedelta(minutes=30),
        }
        options.update(overrides)
        h = Harness(db, store, clock, placer, notifier, None, options=options)  # type: ignore[arg-type]
        h.dispatcher = h.new_dispatcher()
        if start_loop:
            await h.start()
        try:
            yield h
        finally:
            await h.stop()
    finally:
        await db.close()
