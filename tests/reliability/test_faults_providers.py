"""Provider outages during a live errand, end to end through the whole product and the real SDKs.

Each test runs one errand (chat → queue → call → result in the chat) against
the sandbox world and injects one fault at a chosen moment. Every test checks
the same invariants (``assert_clean``): no second call of the errand while one
is live, at most one calendar event, every message in the person's own chat —
plus the errand's final state and what the person was told.
"""

from __future__ import annotations

import asyncio
import time
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from reliability_kit import (
    PHONE,
    Stack,
    assert_clean,
    booking_confirmed,
    callee_said,
    first_call,
    hung_up_by_us,
    patient_programmer,
    scenario_programmer,
    wait_until,
)

from demo.world import SandboxWorld
from sandbox.scenarios import build
from sandbox.twilio import Behavior, LostAnswer
from storage.models import Job, JobState

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*BasicAuth.*:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*'auth' parameter.*:DeprecationWarning"),
]

HAPPY = scenario_programmer("happy")
PATIENT = patient_programmer()


def retried(history: list[tuple[str, str, str]]) -> bool:
    return any(to == "queued" and frm in ("dialing", "in_call") for frm, to, _ in history)


# --- Anthropic -------------------------------------------------------------------------------


async def test_model_rate_limited_mid_call_is_retried_with_a_filler() -> None:
    stack = await Stack.start()

    async def rate_limit(stack: Stack, job: Job) -> None:
        call = await first_call(stack, job)
        await callee_said(call, 2)  # the offer: the model's next request gets two 429s
        stack.world.anthropic.fail_next(429, "rate_limit_error", count=2)

    try:
        result = await stack.run(PATIENT, during=rate_limit)
    finally:
        await stack.stop()
    assert_clean(result)
    assert result.job.state is JobState.BOOKED, result.history
    assert len(result.calls) == 1 and result.job.attempts == 1
    heard = " ".join(result.calls[0].heard)
    assert heard.count("One moment, please.") == 1, heard  # one filler per reply, however many retries


async def test_model_overloaded_for_good_ends_the_call_politely_and_retries_later() -> None:
    stack = await Stack.start()

    async def overload(stack: Stack, job: Job) -> None:
        call = await first_call(stack, job)
        await callee_said(call, 2)
        stack.world.anthropic.fail_next(529, "overloaded_error", count=4)  # every try of the reply

    try:
        result = await stack.run(PATIENT, during=overload)
    finally:
        await stack.stop()
    assert_clean(result)
    assert result.job.state is JobState.BOOKED and result.job.attempts == 2, result.history
    first, second = result.calls
    assert "technical trouble" in " ".join(first.heard), first.heard
    assert hung_up_by_us(stack.world, first)  # after the apology
    assert retried(result.history)
    assert any("try again" in t for t in result.texts()), result.texts()  # the person was told


async def test_model_stream_breaking_mid_answer_keeps_the_call_going() -> None:
    stack = await Stack.start()

    async def break_stream(stack: Stack, job: Job) -> None:
        call = await first_call(stack, job)
        await callee_said(call, 1)
        stack.world.anthropic.error_mid_stream_next()

    try:
        result = await stack.run(HAPPY, during=break_stream)
    finally:
        await stack.stop()
    assert_clean(result)
    assert result.job.state.is_final
    assert len(result.events_for_job()) == (1 if result.job.state is JobState.BOOKED else 0)
    assert result.job.meta.result_delivered


# --- Microsoft Graph ---------------------------------------------------------------------------


class RequestClock:
    """Arrival time of each sandbox Graph request (polled: the sandbox records no times)."""

    def __init__(self, world: SandboxWorld) -> None:
        self.world = world
        self.times: list[float] = []

    async def until(self, n: int) -> None:
        async def seen() -> bool:
            while len(self.times) < len(self.world.graph.requests):
                self.times.append(time.monotonic())
            return len(self.times) >= n

        await wait_until(seen, 30, f"{n} Graph requests")


async def test_graph_throttled_during_the_call_and_at_booking_honours_retry_after() -> None:
    stack = await Stack.start()
    graph = stack.world.graph
    clock = RequestClock(stack.world)
    graph.fail_next(429, retry_after=1.0)  # the free/busy check in the call
    try:
        runner = asyncio.ensure_future(stack.run(HAPPY))
        await clock.until(2)  # 429, then the retry
        await booking_confirmed(stack)
        graph.fail_next(503, retry_after=0.5)  # the next request creates the event, after the call
        n = len(graph.requests)
        await clock.until(n + 2)
        result = await runner
    finally:
        await stack.stop()
    assert_clean(result)
    assert result.job.state is JobState.BOOKED and len(result.calls) == 1, result.history
    paths = [path for _, path, _ in graph.requests]
    assert paths[0].endswith("/getSchedule") and paths[1].endswith("/getSchedule"), paths
    assert [p.rsplit("/", 1)[-1] for p in paths[n:]] == ["events", "events"], paths
    # Retry-After honoured (polled arrival times can be late by a poll, never early)
    assert clock.times[1] - clock.times[0] >= 1.0 - 0.06
    assert clock.times[n + 1] - clock.times[n] >= 0.5 - 0.06
    assert len(result.events_for_job()) == 1


async def test_graph_down_at_booking_still_books_and_tells_the_person() -> None:
    stack = await Stack.start()

    async def graph_down(stack: Stack, job: Job) -> None:
        await booking_confirmed(stack)
        stack.world.graph.fail_next(503, retry_after=0.1, count=3)  # every try of the event create

    try:
        result = await stack.run(HAPPY, during=graph_down)
    finally:
        await stack.stop()
    assert_clean(result)
    assert result.job.state is JobState.BOOKED and not result.events_for_job()
    assert len(result.calls) == 1
    assert any("please add it yourself" in t for t in result.texts()), result.texts()


# --- Twilio ------------------------------------------------------------------------------------


async def test_twilio_5xx_on_create_requeues_without_a_duplicate_call() -> None:
    stack = await Stack.start()
    stack.world.twilio.fail_next_create(500)
    try:
        result = await stack.run(HAPPY)
    finally:
        await stack.stop()
    assert_clean(result)
    assert result.job.state is JobState.BOOKED, result.history
    creates = [r for r in stack.world.twilio.requests if r[0] == "POST" and r[1].endswith("/Calls.json")]
    assert [status for *_, status in creates] == [500, 201]
    assert len(result.calls) == 1  # the failed create dialled nobody; exactly one real call
    assert retried(result.history)
    assert any("couldn't place the call" in t for t in result.texts()), result.texts()


async def test_twilio_create_answer_lost_after_the_call_was_placed_never_dials_twice() -> None:
    # The create's connection drops after Twilio placed the call (a create timeout is the same
    # case; tests/test_no_second_dial.py has it at the placer).
    stack = await Stack.start()
    stack.world.twilio.lose_next_create_answer(LostAnswer.DROP)
    try:
        result = await stack.run(HAPPY)
    finally:
        await stack.stop()
    assert_clean(result)
    assert list(stack.world.twilio.calls) == stack.world.twilio.lost_answers  # exactly one call in total
    assert result.job.state is JobState.BOOKED and result.job.attempts == 1, result.history
    assert result.job.call_sid == stack.world.twilio.lost_answers[0]  # the lost call was adopted
    assert not retried(result.history)


async def test_media_stream_dropped_by_twilio_ends_the_attempt_and_retries() -> None:
    stack = await Stack.start()
    today_happy = build("happy", today=time_today())

    def program(world: SandboxWorld, n: int) -> None:
        attempt = today_happy.attempt(n)
        drop = 3.0 if n == 1 else None  # the first call's stream dies 3 s (audio) in
        world.twilio.program(PHONE, attempt.behavior, attempt.script, drop_stream_after=drop)

    try:
        result = await stack.run(program)
    finally:
        await stack.stop()
    assert_clean(result)
    assert result.job.state is JobState.BOOKED and result.job.attempts == 2, result.history
    first, second = result.calls
    assert first.status == "completed" and first.ended_by in ("api", "drop")
    assert retried(result.history)
    assert any("try again" in t for t in result.texts()), result.texts()


async def test_busy_line_then_answer() -> None:
    """A busy signal reported only through the status callback: retried, then booked."""
    stack = await Stack.start()
    happy = build("happy", today=time_today())

    def program(world: SandboxWorld, n: int) -> None:
        if n == 1:
            world.twilio.program(PHONE, Behavior.BUSY)
        else:
            world.twilio.program(PHONE, happy.attempt(1).behavior, happy.attempt(1).script)

    try:
        result = await stack.run(program)
    finally:
        await stack.stop()
    assert_clean(result)
    assert result.job.state is JobState.BOOKED and len(result.calls) == 2
    assert any("busy" in t.lower() for t in result.texts()), result.texts()


def time_today() -> date:
    return datetime.now(ZoneInfo("America/Los_Angeles")).date()


async def test_model_failing_after_the_slot_was_confirmed_still_books_without_calling_again() -> None:
    """The booking is stored when the business confirms it, so a call that breaks afterwards keeps it."""
    stack = await Stack.start()
    sandbox = stack.world.anthropic
    phone_model = sandbox.responder

    def break_after_confirm(body: dict[str, Any]) -> Any:
        blocks = phone_model(body)
        if any(b.get("name") == "confirm_booking" for b in blocks if isinstance(b, dict)):
            sandbox.fail_next(529, "overloaded_error", count=4)  # every try of the next reply
        return blocks

    sandbox.responder = break_after_confirm
    try:
        result = await stack.run(PATIENT)
    finally:
        await stack.stop()
    assert_clean(result)
    assert "technical trouble" in " ".join(result.calls[0].heard)  # the call did break
    assert result.job.state is JobState.BOOKED and len(result.calls) == 1, result.history
    assert result.job.outcome is not None and result.job.outcome.booking is not None
    assert len(result.events_for_job()) == 1
    assert result.job.meta.confirmed_attempt == 1
