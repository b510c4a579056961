"""Shared driver for the reliability tests: one errand through the whole product, with faults.

Like ``demo.runner.run_scenario`` (the person writes to the sandbox Telegram
bot, presses Confirm, the clock is fast-forwarded to each attempt's due time),
but each attempt's sandbox programme is chosen by the test, and a ``CallWatch``
checks on every call Twilio creates that no other call of the same errand is
still live at that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as dtime
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from concierge.app import Concierge
from concierge.clock import OffsetClock
from demo.runner import MESSAGE, PHONE, start_stack, wait_until
from demo.world import DEMO_TELEGRAM_USER, SandboxWorld
from sandbox import scenarios
from sandbox.callee import CalleeScript, Say, WaitTurn
from sandbox.telegram import Sent
from sandbox.twilio import Behavior, SandboxCall
from sandbox.twilio_call import FINAL_STATUSES
from storage.models import Job, JobState, Turn

__all__ = ["MESSAGE", "PHONE", "CallWatch", "Errand", "Stack", "job_of_call", "wait_until"]


def job_of_call(call: SandboxCall) -> str:
    """The errand a sandbox call belongs to (the ``job`` query of its status callback URL)."""
    url = call.param("StatusCallback") or ""
    return parse_qs(urlsplit(url).query).get("job", [""])[0]


def is_live(call: SandboxCall) -> bool:
    """The call is still up in the sandbox.

    A call whose runner has finished (``done``) is over even if its ``status`` was never
    moved to a final value: the sandbox's media pump can crash on a socket the killed
    server left behind (``echo_mark`` raises ``ClientConnectionResetError``), which ends
    the runner without the final status update.
    """
    return call.status not in FINAL_STATUSES and not call.done.is_set()


class CallWatch:
    """Records every call the sandbox Twilio creates, in order, and any overlap within one errand.

    The check runs as soon as the new call is seen (one loop step after its creation):
    a call's status only moves forward, so an earlier call of the same errand still
    live then was live when the new one was created — never a false alarm.
    """

    def __init__(self, world: SandboxWorld) -> None:
        self.world = world
        self.calls: list[SandboxCall] = []
        self.overlaps: list[str] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            call = await self.world.twilio.wait_for_call(timeout=24 * 3600)
            job = job_of_call(call)
            for earlier in self.calls:
                if job_of_call(earlier) == job and is_live(earlier):
                    self.overlaps.append(
                        f"errand {job}: call {call.sid} created while {earlier.sid} was {earlier.status}"
                    )
            self.calls.append(call)

    def for_job(self, job_id: str) -> list[SandboxCall]:
        return [c for c in self.calls if job_of_call(c) == job_id]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@dataclass
class Errand:
    """What one errand produced."""

    job: Job
    chat: list[Sent]
    calls: list[SandboxCall]
    events: list[dict[str, object]]
    turns: list[Turn]
    overlaps: list[str]
    history: list[tuple[str, str, str]] = field(default_factory=list)  # (from, to, reason)

    def texts(self) -> list[str]:
        return [s.text or s.caption or "" for s in self.chat]

    def events_for_job(self) -> list[dict[str, object]]:
        return [e for e in self.events if e.get("transactionId") == self.job.id]


#: Programs the sandbox for call attempt ``n`` (1-based) just before it is placed.
Programmer = Callable[[SandboxWorld, int], None]


def scenario_programmer(name: str, **program: object) -> Programmer:
    """Each attempt as the named scenario says; ``program`` extras apply to every attempt."""
    today = datetime.now(ZoneInfo("America/Los_Angeles")).date()
    scenario = scenarios.build(name, today=today, tz="America/Los_Angeles")

    def apply(world: SandboxWorld, n: int) -> None:
        attempt = scenario.attempt(n)
        world.twilio.program(PHONE, attempt.behavior, attempt.script, **program)  # type: ignore[arg-type]

    return apply


def receptionist(slot: datetime) -> CalleeScript:
    """Answers, offers ``slot``, confirms once the assistant has taken it."""
    return CalleeScript(
        steps=[
            Say(scenarios.GREETING),
            WaitTurn(contains="haircut", timeout=120),
            Say(f"How about {scenarios.offer_text(slot)}?"),
            WaitTurn(contains=f"{slot:%A}", timeout=120),
            Say("Perfect, see you then."),
            WaitTurn(timeout=120),
        ]
    )


def brisk_receptionist(slot: datetime) -> CalleeScript:
    """:func:`receptionist` without waits for particular words, speaking briskly: for runs of
    many calls, where what is under test is the queue, not the conversation."""
    return CalleeScript(
        [Say("Shop, hello."), WaitTurn(contains="haircut"), Say(f"How about {scenarios.offer_text(slot)}?"),
         WaitTurn(), Say("Perfect, see you then."), WaitTurn()],
        words_per_second=4.0,
    )  # fmt: skip


async def submit_errand(world: SandboxWorld, phone: str) -> str:
    """The person asks for a haircut at ``phone`` and confirms; returns the errand id from the chat."""
    tg, user = world.telegram, DEMO_TELEGRAM_USER
    since = len(tg.sent)
    tg.user_message(user, user, f"Book a haircut at Joe's Barbershop {phone} next week, afternoons")
    shown = await tg.wait_for(lambda s: any(b == "Confirm" for b, _ in s.buttons), 30, since=since)
    confirm = next(data for label, data in shown.buttons if label == "Confirm")
    since = len(tg.sent)
    tg.press_button(user, user, shown.message_id, confirm)
    queued = re.compile(r"errand (\w+) is queued")
    done = await tg.wait_for(lambda s: bool(queued.search(s.text or "")), 30, since=since)
    match = queued.search(done.text or "")
    assert match is not None
    return match.group(1)


def patient_programmer() -> Programmer:
    """The "happy" receptionist, but one who waits (up to 5 min of audio) for a real answer.

    The scripted callee of the scenarios takes any assistant turn as the answer and gives
    up after 20 s of audio; with fast pacing a filler ("One moment, please.") or a few
    seconds of model back-off would end the scene early. Here each wait needs the words
    that matter, so the fault — not the script — decides how the call goes.
    """
    today = datetime.now(ZoneInfo("America/Los_Angeles")).date()
    monday = scenarios.next_week_monday(today)
    free = datetime.combine(monday + timedelta(days=2), dtime(15, 30), ZoneInfo("America/Los_Angeles"))
    script = CalleeScript(
        steps=[
            Say(scenarios.GREETING),
            WaitTurn(contains="haircut", timeout=300),
            Say(f"How about {scenarios.offer_text(free)}?"),
            WaitTurn(contains="Wednesday", timeout=300),
            Say("Perfect, see you then."),
            WaitTurn(timeout=300),
        ]
    )

    def apply(world: SandboxWorld, n: int) -> None:
        world.twilio.program(PHONE, Behavior.ANSWER, script)

    return apply


class Stack:
    """The sandbox world and the product on loopback, audio paced ``pace`` times real time."""

    def __init__(self, world: SandboxWorld, app: Concierge, clock: OffsetClock) -> None:
        self.world, self.app, self.clock = world, app, clock
        self.watch = CallWatch(world)

    @classmethod
    async def start(cls, *, pace: float = 8.0, **overrides: object) -> Stack:
        world, app, clock = await start_stack(pace=pace, silence_timeout_seconds=6.0, **overrides)
        today = datetime.now(ZoneInfo(app.settings.person_timezone)).date()
        world.graph.busy = list(scenarios.build("happy", today=today).busy)
        return cls(world, app, clock)

    async def stop(self) -> None:
        await self.watch.close()
        await self.app.stop(grace=5)
        await self.world.stop()

    async def submit(self, message: str = MESSAGE) -> Job:
        """The person writes ``message`` and presses Confirm; returns the queued errand."""
        tg, user = self.world.telegram, DEMO_TELEGRAM_USER
        since = len(tg.sent)
        tg.user_message(user, user, message)
        shown = await tg.wait_for(lambda s: any(b == "Confirm" for b, _ in s.buttons), 30, since=since)
        confirm = next(data for label, data in shown.buttons if label == "Confirm")
        before = {j.id for j in await self.app.store.list(user_id=str(user), limit=1000)}
        tg.press_button(user, user, shown.message_id, confirm)

        async def queued() -> bool:
            return bool({j.id for j in await self.app.store.list(user_id=str(user), limit=1000)} - before)

        await wait_until(queued, 30, "the errand to be queued")
        return (await self.app.store.list(user_id=str(user), limit=1))[0]

    async def run(
        self,
        programmer: Programmer,
        *,
        during: Callable[[Stack, Job], Awaitable[None]] | None = None,
        timeout: float = 60.0,  # noqa: ASYNC109
    ) -> Errand:
        """Drive one errand to its final state and its result to the chat.

        ``during`` runs alongside (it injects the fault when the moment comes) and must finish.
        """
        programmer(self.world, 1)  # before Confirm: when the shop is open the call goes out at once
        job = await self.submit()
        fault = asyncio.create_task(during(self, job)) if during is not None else None
        try:
            job = await self._until_final(job, programmer, timeout)
            await wait_until(lambda: self._delivered(job.id), 30, "the result to reach the chat")
            if fault is not None:
                async with asyncio.timeout(10):
                    await fault
        finally:
            if fault is not None and not fault.done():
                fault.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fault
        store = self.app.store
        job = await store.get(job.id)
        return Errand(
            job=job,
            chat=list(self.world.telegram.sent),
            calls=self.watch.for_job(job.id),
            events=list(self.world.graph.events),
            turns=await store.turns(job.id),
            overlaps=list(self.watch.overlaps),
            history=[(str(h.from_state), str(h.to_state), h.reason) for h in await store.history(job.id)],
        )

    async def _until_final(self, job: Job, programmer: Programmer, timeout: float) -> Job:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        store, clock = self.app.store, self.clock
        while not (job := await store.get(job.id)).state.is_final:
            if time.monotonic() > deadline:
                raise TimeoutError(f"errand {job.id} still {job.state} after {timeout:.0f} s")
            if job.state is JobState.QUEUED:
                programmer(self.world, job.attempts + 1)
                if job.next_attempt_at > clock.now():
                    clock.jump_to(job.next_attempt_at)
                    self.app.dispatcher.wake()
                n = job.attempts

                async def attempt_done(n: int = n) -> bool:
                    j = await store.get(job.id)
                    return j.state.is_final or (j.state is JobState.QUEUED and j.attempts > n)

                await wait_until(attempt_done, max(1.0, deadline - time.monotonic()), "the attempt to end")
            else:
                await wait_until(
                    lambda: self._state_changed(job), max(1.0, deadline - time.monotonic()), "progress"
                )
        return job

    async def _state_changed(self, job: Job) -> bool:
        return (await self.app.store.get(job.id)).state is not job.state

    async def _delivered(self, job_id: str) -> bool:
        job = await self.app.store.get(job_id)
        if not job.meta.result_delivered:
            return False
        return bool(job.meta.transcript_delivered) or not await self.app.store.turns(job_id)


async def first_call(stack: Stack, job: Job, timeout: float = 30) -> SandboxCall:  # noqa: ASYNC109
    """The first sandbox call of ``job`` once it exists."""

    async def exists() -> bool:
        return bool(stack.watch.for_job(job.id))

    await wait_until(exists, timeout, "the call to be created")
    return stack.watch.for_job(job.id)[0]


async def callee_said(call: SandboxCall, n: int, timeout: float = 30) -> None:  # noqa: ASYNC109
    """Until the callee has started its ``n``-th line."""

    async def said() -> bool:
        return len(call.said) >= n

    await wait_until(said, timeout, f"the callee's line {n}")


async def booking_confirmed(stack: Stack) -> None:
    """Until the booking tool has confirmed the slot (no free/busy check follows, only the event)."""

    async def confirmed() -> bool:
        bodies = stack.world.anthropic.requests
        return any("CONFIRMED:" in json.dumps(body["messages"][-1]) for body in bodies)

    await wait_until(confirmed, 30, "the booking to be confirmed on the phone")


def hung_up_by_us(world: SandboxWorld, call: SandboxCall) -> bool:
    """The product ended ``call`` through the REST API (``Status=completed``)."""
    return any(
        method == "POST" and path.endswith(f"/{call.sid}.json") and form.get("Status") == ["completed"]
        for method, path, form, _ in world.twilio.requests
    )


def assert_clean(result: Errand) -> None:
    """Invariants every errand keeps whatever the fault: one call at a time, one event at most."""
    assert not result.overlaps, result.overlaps
    assert len(result.events_for_job()) <= 1
    if result.job.state is not JobState.BOOKED:
        assert not result.events_for_job()
    elif result.events_for_job():
        assert result.job.outcome is not None and result.job.outcome.event_link
        assert any(result.job.outcome.event_link in t for t in result.texts())
    assert {s.chat_id for s in result.chat} == {DEMO_TELEGRAM_USER}
