"""``concierge demo``: one whole errand against the sandbox, narrated in the terminal.

The person writes to the sandbox Telegram bot, presses Confirm, the clock is
fast-forwarded to the shop's opening time if it is closed, the sandbox
receptionist takes the call, and the run ends when the chat thread shows the
result. The same runner drives the end-to-end tests (``run_scenario``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TextIO
from zoneinfo import ZoneInfo

from concierge.app import Concierge, bind
from concierge.clock import OffsetClock
from concierge.settings import Settings
from demo.world import DEMO_TELEGRAM_USER, SandboxWorld, sandbox_graph_credential
from sandbox import scenarios
from sandbox.telegram import Sent
from sandbox.twilio import SandboxCall
from storage.models import Job, JobState, Speaker, Turn
from storage.rows import HistoryEntry
from telephony.twilio_rest import INCOMING_PATH

MESSAGE = "Book a haircut at Joe's Barbershop +1 415 555 0100 next week, afternoons"
PHONE = "+14155550100"


@dataclass
class ErrandRun:
    """What one scenario run produced, for the summary and the tests."""

    scenario: scenarios.Scenario
    job: Job
    chat: list[Sent]
    calls: list[SandboxCall]
    events: list[dict[str, object]]
    turns: list[Turn]
    seconds: float
    problems: list[str] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)  # the errand's state changes, in order

    @property
    def ok(self) -> bool:
        return not self.problems

    def overheads_ms(self) -> list[float]:
        return [
            t.latency.server_overhead_ms
            for t in self.turns
            if t.latency is not None and t.latency.server_overhead_ms is not None
        ]


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:  # noqa: ASYNC109
    """Re-check ``check`` every 50 ms until it holds; ``TimeoutError`` naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


class Narrator:
    """Prints chat messages and call lines as they happen."""

    def __init__(self, out: TextIO | None, world: SandboxWorld) -> None:
        self.out = out
        self.world = world
        self._chat_seen = 0
        self._lines: dict[tuple[str, str], int] = {}
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        if self.out is not None:
            print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", file=self.out, flush=True)

    def poll(self) -> None:
        sent = self.world.telegram.sent
        for s in sent[self._chat_seen :]:
            if s.text or s.document:
                label = {"editMessageText": "chat (edit)", "sendDocument": "chat (file)"}.get(
                    s.method, "chat"
                )
                body = s.text or s.caption or (s.document[0] if s.document else "")
                buttons = f"  [{' | '.join(b for b, _ in s.buttons)}]" if s.buttons else ""
                self.say(f"{label}: {body}{buttons}")
        self._chat_seen = len(sent)
        for call in self.world.twilio.calls.values():
            for who, lines in (("receptionist", call.said), ("assistant (heard)", call.heard)):
                key = (call.sid, who)
                for line in lines[self._lines.get(key, 0) :]:
                    self.say(f"  📞 {who}: {line}")
                self._lines[key] = len(lines)

    async def run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(0.1)


async def run_scenario(
    world: SandboxWorld,
    app: Concierge,
    clock: OffsetClock,
    name: str,
    *,
    out: TextIO | None = None,
    timeout: float = 120.0,  # noqa: ASYNC109
    message: str = MESSAGE,
    answer_questions: bool = True,
) -> ErrandRun:
    """Drive one errand from the chat message to its final chat reply.

    With ``answer_questions`` the person presses the scenario's quick reply
    (``Scenario.person_answers``) when the assistant asks them during the call.
    """
    t0 = time.monotonic()
    person_tz = ZoneInfo(app.settings.person_timezone)
    scenario = scenarios.build(name, today=datetime.now(person_tz).date(), tz="America/Los_Angeles")
    world.graph.busy = list(scenario.busy)
    narrator = Narrator(out, world)
    printer = asyncio.create_task(narrator.run())
    try:
        # The first attempt is programmed before Confirm: when the shop is open the call goes out at once.
        first = scenario.attempt(1)
        world.twilio.program(PHONE, first.behavior, first.script, amd=first.amd)
        job = await _chat_until_queued(world, app, narrator, message)
        limit = timeout + scenario.waits / world.pace  # a long hold is part of the call, not a stall
        answering = None
        if answer_questions and scenario.person_answers:
            answering = asyncio.create_task(_answer_question(world, narrator, scenario.person_answers))
        try:
            job = await _call_until_final(world, app, clock, narrator, scenario, job, limit)
        finally:
            if answering is not None:
                answering.cancel()
                await asyncio.gather(answering, return_exceptions=True)
        await wait_until(lambda: _delivered(app, job.id), 30, "the result to reach the chat thread")
        narrator.poll()
    finally:
        printer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await printer
    job = await app.store.get(job.id)
    run = ErrandRun(
        scenario=scenario,
        job=job,
        chat=list(world.telegram.sent),
        calls=list(world.twilio.calls.values()),
        events=list(world.graph.events),
        turns=await app.store.turns(job.id),
        seconds=time.monotonic() - t0,
        history=await app.store.history(job.id),
    )
    _check(run)
    return run


async def _chat_until_queued(world: SandboxWorld, app: Concierge, narrator: Narrator, message: str) -> Job:
    tg = world.telegram
    since = len(tg.sent)
    narrator.say(f"person → bot: {message}")
    tg.user_message(DEMO_TELEGRAM_USER, DEMO_TELEGRAM_USER, message)
    shown = await tg.wait_for(lambda s: any(label == "Confirm" for label, _ in s.buttons), 30, since=since)
    confirm = next(data for label, data in shown.buttons if label == "Confirm")
    narrator.poll()
    narrator.say("person presses Confirm")
    tg.press_button(DEMO_TELEGRAM_USER, DEMO_TELEGRAM_USER, shown.message_id, confirm)
    user = str(DEMO_TELEGRAM_USER)

    async def queued() -> bool:
        return bool(await app.store.list(user_id=user, limit=1))

    await wait_until(queued, 30, "the errand to be queued")
    return (await app.store.list(user_id=user, limit=1))[0]


async def _answer_question(world: SandboxWorld, narrator: Narrator, label: str) -> None:
    """Press the quick reply ``label`` once the assistant asks the person a question in the chat."""
    tg = world.telegram
    shown = await tg.wait_for(lambda s: any(text == label for text, _ in s.buttons), 120)
    data = next(d for text, d in shown.buttons if text == label)
    narrator.poll()
    narrator.say(f"person presses {label}")
    tg.press_button(DEMO_TELEGRAM_USER, DEMO_TELEGRAM_USER, shown.message_id, data)


async def _call_until_final(
    world: SandboxWorld,
    app: Concierge,
    clock: OffsetClock,
    narrator: Narrator,
    scenario: scenarios.Scenario,
    job: Job,
    timeout: float,  # noqa: ASYNC109
) -> Job:
    deadline = time.monotonic() + timeout
    called_back = scenario.call_back is None
    while not (job := await app.store.get(job.id)).state.is_final:
        if time.monotonic() > deadline:
            raise TimeoutError(f"errand {job.id} still {job.state} after {timeout:.0f} s")
        if job.state is JobState.QUEUED and job.attempts >= 1 and not called_back:
            called_back, n = True, job.attempts
            narrator.say(f"{PHONE} calls back")
            voice_url = app.settings.public_base_url.rstrip("/") + INCOMING_PATH
            world.twilio.call_in(PHONE, app.settings.twilio_from_number, voice_url, scenario.call_back)

            async def call_back_done(n: int = n) -> bool:
                j = await app.store.get(job.id)
                return j.state.is_final or (j.state is JobState.QUEUED and j.attempts > n)

            await wait_until(call_back_done, max(1.0, deadline - time.monotonic()), "the call back to end")
        elif job.state is JobState.QUEUED:
            attempt = scenario.attempt(job.attempts + 1)
            world.twilio.program(PHONE, attempt.behavior, attempt.script, amd=attempt.amd)
            if job.next_attempt_at > clock.now():
                local = job.next_attempt_at.astimezone(ZoneInfo(job.request.business_tz))
                narrator.say(f"⏩ the shop is closed: fast-forwarding to {local:%a %d %b %H:%M} its time")
                clock.jump_to(job.next_attempt_at)
                app.dispatcher.wake()
            n = job.attempts
            narrator.say(f"attempt {n + 1}: dialling {PHONE} ({attempt.behavior})")

            async def attempt_done(n: int = n) -> bool:
                j = await app.store.get(job.id)
                return j.state.is_final or (j.state is JobState.QUEUED and j.attempts > n)

            await wait_until(attempt_done, max(1.0, deadline - time.monotonic()), "the call attempt to end")
        else:
            await asyncio.sleep(0.05)
    return job


async def _delivered(app: Concierge, job_id: str) -> bool:
    """The result (and, after a call with words, its transcript) has reached the chat."""
    job = await app.store.get(job_id)
    if not job.meta.result_delivered:
        return False
    return bool(job.meta.transcript_delivered) or not await app.store.turns(job_id)


def _check(run: ErrandRun) -> None:
    sc, job = run.scenario, run.job
    if str(job.state) != sc.expect_state:
        run.problems.append(f"expected the errand to end {sc.expect_state}, it ended {job.state}")
    created = [e for e in run.events if e.get("transactionId") == job.id]
    if sc.expect_state == "booked":
        if len(created) != 1:
            run.problems.append(f"expected exactly one calendar event, found {len(created)}")
        if not (job.outcome and job.outcome.event_link):
            run.problems.append("the outcome has no event link")
        elif not any(job.outcome.event_link in (s.text or "") for s in run.chat):
            run.problems.append("the chat never showed the event link")
        if sc.expect_start and job.outcome and job.outcome.booking:
            if job.outcome.booking.start != sc.expect_start:
                run.problems.append(f"booked {job.outcome.booking.start}, expected {sc.expect_start}")
    elif created:
        run.problems.append(f"no event expected, found {len(created)}")


def summary(run: ErrandRun) -> str:
    job = run.job
    lines = ["", "──── summary ────", f"scenario      {run.scenario.name}: {run.scenario.description}"]
    lines.append(f"errand        {job.id}  →  {job.state}  ({job.attempts} call attempt(s))")
    if job.outcome:
        lines.append(f"outcome       {job.outcome.summary}")
        if job.outcome.event_link:
            lines.append(f"event link    {job.outcome.event_link}")
    lines.append(f"transcript    {len(run.turns)} turns")
    for t in run.turns:
        who = "assistant" if t.speaker is Speaker.ASSISTANT else "callee   "
        extra = ""
        if t.latency and t.latency.server_overhead_ms is not None:
            extra = f"   [server overhead {t.latency.server_overhead_ms:.1f} ms]"
        cut = " (interrupted)" if t.interrupted else ""
        lines.append(f"  {t.at:6.1f}s {who} {t.text}{cut}{extra}")
    oh = run.overheads_ms()
    if oh:
        p95 = statistics.quantiles(oh, n=20)[-1] if len(oh) > 1 else oh[0]
        lines.append(
            f"server overhead  p50 {statistics.median(oh):.1f} ms   p95 {p95:.1f} ms   ({len(oh)} turns)"
        )
    lines.append(f"took          {run.seconds:.1f} s")
    lines.append("result        " + ("OK" if run.ok else "PROBLEMS: " + "; ".join(run.problems)))
    return "\n".join(lines)


#: How long a live question waits in a scripted run: the scripted person answers at once (the
#: scenario's ``person_answers``) or never, so the product's 60 s would only slow the run.
SCRIPTED_PERSON_WAIT = 10.0


async def start_stack(
    *, pace: float = 1.0, base: Settings | None = None, **overrides: Any
) -> tuple[SandboxWorld, Concierge, OffsetClock]:
    """Start the sandbox world and the product pointed at it (on a free loopback port)."""
    world = await SandboxWorld(pace=pace, base=base or Settings(_env_file=None)).start()  # type: ignore[call-arg]
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    overrides.setdefault("live_ask_timeout", SCRIPTED_PERSON_WAIT)
    settings = world.settings(public_base_url=f"http://127.0.0.1:{port}", port=port, **overrides)
    clock = OffsetClock()
    app = Concierge(settings, clock=clock, graph_credential=sandbox_graph_credential(), owner=f"demo:{port}")
    try:
        await app.start(sock)
    except BaseException:
        await app.stop(grace=0)
        await world.stop()
        raise
    return world, app, clock


async def demo(args: argparse.Namespace) -> int:
    """``concierge demo``: list the scenarios, or run one narrated (``clash`` by default)."""
    if args.list:
        for name in scenarios.NAMES:
            sc = scenarios.build(name, today=datetime.now().date())
            print(f"{name:{max(map(len, scenarios.NAMES))}} {sc.description}")
        return 0
    name = args.scenario or "clash"
    if name not in scenarios.NAMES:
        print(f"unknown scenario {name!r}; `concierge demo --list` names them", file=sys.stderr)
        return 2
    print(f"Concierge demo — scenario {name!r}, everything against the local sandbox (no keys, no network).")
    world, app, clock = await start_stack(pace=1.0, silence_timeout_seconds=6.0)
    try:
        run = await run_scenario(world, app, clock, name, out=sys.stdout)
    finally:
        await app.stop(grace=5)
        await world.stop()
    print(summary(run))
    return 0 if run.ok else 1
