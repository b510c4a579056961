"""Whole calls through the real twilio + deepgram-sdk clients against the sandboxes.

Our aiohttp app (webhooks + media stream) listens on 127.0.0.1 port 0 and that
URL is PUBLIC_BASE_URL; a real JobStore on tmp sqlite; a tiny recording sink
performs the store transitions the dispatcher would; a scripted agent stands in
for the conversation model.
"""

from __future__ import annotations

import asyncio
import functools
import re
import socket
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from twilio.request_validator import RequestValidator

from agent.base import Agent, AgentAction, CalleeSaid, CallerInput, Hangup, MachineBeep, Say, SendDigits
from sandbox.callee import Beep, CalleeScript, HangUp, Interrupt, Music, Pause, WaitDigits, WaitTurn
from sandbox.callee import Say as CalleeSays
from sandbox.deepgram import SandboxDeepgram
from sandbox.twilio import Behavior, SandboxTwilio
from storage.db import open_database
from storage.jobs import JobStore
from storage.models import (
    BookingWindow,
    CallOutcome,
    CallRequest,
    ChatOrigin,
    Job,
    JobState,
    OutcomeKind,
    Platform,
    Speaker,
    Turn,
    utcnow,
)
from telephony.frame_stats import CallMetrics
from telephony.session import CallSession, SessionConfig
from telephony.speech import SpeechClient
from telephony.twilio_rest import TwilioCallPlacer
from telephony.webhooks import TwilioWebhooks

# twilio 9.13's AsyncTwilioHttpClient passes aiohttp.BasicAuth / auth= (deprecated in aiohttp 3.14).
pytestmark = [
    pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'auth' parameter is deprecated:DeprecationWarning"),
]

SID = "AC" + "1" * 32
TOKEN = "twilio-auth-token"
DG_KEY = "dg-key"
PHONE = "+14155550100"
PACE = 6.0


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


class ScriptedAgent(Agent):
    """Plays a list of replies, one per caller input, in order."""

    def __init__(self, replies: list[list[AgentAction]], outcome: CallOutcome | None = None) -> None:
        self.replies = deque(replies)
        self.inputs: list[CallerInput] = []
        self.heard: list[str] = []
        self._outcome = outcome
        self.got_input = asyncio.Event()

    async def reply(self, event: CallerInput) -> AsyncGenerator[AgentAction, None]:
        self.inputs.append(event)
        self.got_input.set()
        if not self.replies:
            return
        first = True
        for action in self.replies.popleft():
            if isinstance(action, Say) and first:
                action = Say(action.text, first_token_at=time.monotonic())
                first = False
            yield action

    def interrupted(self, heard: str) -> None:
        self.heard.append(heard)

    def outcome(self) -> CallOutcome | None:
        return self._outcome


@dataclass
class RecordingSink:
    """What the dispatcher would do with call events, recorded for assertions."""

    store: JobStore
    answered: list[str] = field(default_factory=list)
    outcomes: dict[str, tuple[CallOutcome, list[Turn]]] = field(default_factory=dict)
    reports: int = 0
    done: dict[str, asyncio.Event] = field(default_factory=dict)
    holds: list[tuple[str, bool]] = field(default_factory=list)  # the sessions' on_hold reports

    def event(self, job_id: str) -> asyncio.Event:
        return self.done.setdefault(job_id, asyncio.Event())

    async def call_answered(self, job_id: str, call_sid: str) -> None:
        self.answered.append(job_id)
        job = await self.store.get(job_id)
        if job.state is JobState.DIALING:
            await self.store.transition(job_id, JobState.IN_CALL, reason="answered")

    async def call_on_hold(self, job_id: str, on_hold: bool) -> None:
        self.holds.append((job_id, on_hold))

    async def report_outcome(self, job_id: str, outcome: CallOutcome, transcript: Any = ()) -> None:
        self.reports += 1
        job = await self.store.get(job_id)
        if not job.state.is_active:
            return
        self.outcomes[job_id] = (outcome, list(transcript))
        final = {
            OutcomeKind.BOOKED: JobState.BOOKED,
            OutcomeKind.DECLINED: JobState.DECLINED,
            OutcomeKind.NEEDS_USER: JobState.NEEDS_USER,
            OutcomeKind.FAILED: JobState.FAILED,
            OutcomeKind.WRONG_NUMBER: JobState.FAILED,
        }
        target = final.get(outcome.kind, JobState.QUEUED)
        if target is not JobState.QUEUED and job.state is JobState.DIALING:
            await self.store.transition(job_id, JobState.IN_CALL, reason="answered")
        await self.store.transition(
            job_id, target, reason=str(outcome.kind), outcome=outcome,
            next_attempt_at=utcnow() + timedelta(hours=1) if target is JobState.QUEUED else None,
        )  # fmt: skip
        await self.store.add_turns(job_id, job.attempts, list(transcript))
        self.event(job_id).set()


def make_request() -> CallRequest:
    return CallRequest(
        business_name="Joe's Barbershop",
        phone=PHONE,
        business_tz="America/Los_Angeles",
        service="haircut",
        person_name="Alex",
        person_tz="America/Los_Angeles",
        window=BookingWindow(start_date=date(2030, 3, 5), end_date=date(2030, 3, 8)),
        origin=ChatOrigin(platform=Platform.CLI, chat_id="c", user_id="u"),
    )


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.agents: dict[str, ScriptedAgent] = {}
        self.sessions: list[CallSession] = []
        self.metrics: list[CallMetrics] = []  # the sessions' metrics sink
        self.config = SessionConfig(silence_timeout=8.0, max_call_seconds=120.0)
        self.voicemail_message = False  # VOICEMAIL_MESSAGE (off unless a test turns it on before start)

    async def start(self) -> None:
        self.db = await open_database(self.tmp / "jobs.sqlite")
        self.store = JobStore(self.db)
        self.sink = RecordingSink(self.store)
        self.twilio = SandboxTwilio(account_sid=SID, auth_token=TOKEN, pace=PACE, ring_seconds=0.05)
        self.dg = SandboxDeepgram(api_key=DG_KEY)
        await self.twilio.start()
        await self.dg.start()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.public = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.placer = TwilioCallPlacer(
            self.store, account_sid=SID, auth_token=TOKEN, from_number="+14155550199",
            public_base_url=self.public, api_base_url=self.twilio.base_url,
            max_call_seconds=120, ring_timeout=20,
        )  # fmt: skip
        self.speech = SpeechClient(
            api_key=DG_KEY, http_url=self.dg.http_url, ws_url=self.dg.ws_url, stt_chunk_ms=40
        )
        self.webhooks = TwilioWebhooks(
            self.store, self.sink, auth_token=TOKEN, public_base_url=self.public,
            session_factory=self.session_for, placer=self.placer, voicemail_message=self.voicemail_message,
        )  # fmt: skip
        app = web.Application()
        self.webhooks.add_routes(app)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()
        self.http = aiohttp.ClientSession()

    def session_for(self, job: Job, call_sid: str) -> CallSession:
        session = CallSession(
            job, call_sid, agent=self.agents[job.id], speech=self.speech, placer=self.placer,
            config=self.config, metrics=self.metrics.append,
            on_hold=functools.partial(self.sink.call_on_hold, job.id),
        )  # fmt: skip
        self.sessions.append(session)
        return session

    async def stop(self) -> None:
        await self.http.close()
        await self.runner.cleanup()
        await self.twilio.stop()
        await self.dg.stop()
        await self.placer.aclose()
        await self.db.close()

    async def dialing_job(self, agent: ScriptedAgent | None = None) -> Job:
        job = await self.store.enqueue(make_request(), due_at=utcnow(), max_attempts=3)
        [job] = await self.store.claim_due("test", limit=1, lease_seconds=300)
        self.agents[job.id] = agent or ScriptedAgent([])
        return job

    async def call(self, job: Job, limit: float = 30.0) -> tuple[CallOutcome, list[Turn], Any]:
        sid = await self.placer.place_call(job)
        await self.store.set_call_sid(job.id, sid)
        async with asyncio.timeout(limit):
            await self.sink.event(job.id).wait()
            sandbox_call = self.twilio.calls[sid]
            await sandbox_call.done.wait()
        outcome, turns = self.sink.outcomes[job.id]
        return outcome, turns, sandbox_call

    def sign(self, url: str, params: dict[str, str]) -> str:
        return str(RequestValidator(TOKEN).compute_signature(url, params))


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path)
    await harness.start()
    try:
        yield harness
    finally:
        await harness.stop()


async def wait_inputs(agent: ScriptedAgent, n: int, limit: float = 20.0) -> None:
    async with asyncio.timeout(limit):
        while len(agent.inputs) < n:
            agent.got_input.clear()
            await agent.got_input.wait()


def hung_up_by_api(h: Harness, sid: str) -> bool:
    return any(
        method == "POST" and path.endswith(f"/Calls/{sid}.json") and form.get("Status") == ["completed"]
        for method, path, form, _ in h.twilio.requests
    )


def assert_clean(h: Harness) -> None:
    assert h.webhooks.active_calls() == 0
    for s in h.sessions:
        assert s.ended and not s._tasks, "every session task is cancelled and awaited"


# --- scenarios ---------------------------------------------------------------------------------


async def test_full_scripted_call_books(h: Harness) -> None:
    booked = CallOutcome(OutcomeKind.BOOKED, summary="haircut Tuesday 3 pm")
    agent = ScriptedAgent([
        [Say("Hello, this is Robin, an AI assistant calling for Alex.")],
        [Say("I would like to book a haircut."), Say("Do you have anything on Tuesday?")],
        [Say("Great, please book it."), Say("Thank you, goodbye."), Hangup(booked)],
    ])  # fmt: skip
    h.twilio.program(PHONE, script=CalleeScript([
        WaitTurn(contains="hello"), CalleeSays("Joe's Barbershop, how can I help?"),
        WaitTurn(contains="tuesday"), CalleeSays("Tuesday at three works."),
        WaitTurn(contains="goodbye"),
    ]))  # fmt: skip
    job = await h.dialing_job(agent)
    outcome, turns, call = await h.call(job)

    assert outcome.kind is OutcomeKind.BOOKED and outcome.call_sid == call.sid
    assert (await h.store.get(job.id)).state is JobState.BOOKED
    assert not call.callee.errors and hung_up_by_api(h, call.sid)
    assert [type(i).__name__ for i in agent.inputs] == ["CallConnected", "CalleeSaid", "CalleeSaid"]
    assert [(t.speaker, t.interrupted) for t in turns] == [
        (Speaker.ASSISTANT, False), (Speaker.CALLEE, False), (Speaker.ASSISTANT, False),
        (Speaker.CALLEE, False), (Speaker.ASSISTANT, False),
    ]  # fmt: skip
    assert _words(turns[1].text) == _words("Joe's Barbershop, how can I help?")
    assert turns[4].text == "Great, please book it. Thank you, goodbye."
    said = [_words(t.text) for t in turns if t.speaker is Speaker.ASSISTANT]
    assert [_words(t) for t in call.heard] == said
    lat = turns[2].latency
    assert lat is not None and lat.stt_final and lat.llm_first_token and lat.tts_first_byte
    assert lat.first_audio_out is not None and lat.server_overhead_ms is not None
    assert lat.speech_end is not None and lat.speech_end <= lat.stt_final
    assert await h.store.turns(job.id) == turns
    # the call reported its inbound frame timing once, as it ended, to the injected sink
    [metrics] = h.metrics
    assert (metrics.call_sid, metrics.job_id) == (call.sid, job.id)
    assert 0 < metrics.frames.forward.n <= call.callee.frames
    assert metrics.frames.lag.n == metrics.frames.forward.n - 1  # the first frame anchors the lag
    # the speech sockets were opened once each and closed with the call
    assert len(h.dg.listens) == 1 and len(h.dg.speaks) == 1
    q = h.dg.listens[0].query
    assert (q["encoding"], q["sample_rate"], q["interim_results"], q["vad_events"]) == (
        "mulaw",
        "8000",
        "true",
        "true",
    )
    assert h.dg.speaks[0].query["encoding"] == "mulaw"
    assert call.params["MachineDetection"] == ["DetectMessageEnd"] and call.params["TimeLimit"] == ["120"]
    assert (await h.store.get(job.id)).meta.stream_token_sha256 is None  # consumed
    await h.webhooks.join()
    assert_clean(h)


async def test_barge_in_keeps_only_what_was_heard(h: Harness) -> None:
    long_reply = "I would like to book a haircut for next Tuesday afternoon if you have any time at all"
    agent = ScriptedAgent([
        [Say("Hello there.")],
        [Say(long_reply)],
        [Say("Okay, thank you, goodbye."), Hangup(CallOutcome(OutcomeKind.DECLINED, summary="closed"))],
    ])  # fmt: skip
    h.twilio.program(PHONE, script=CalleeScript([
        WaitTurn(contains="hello"), CalleeSays("Hi."),
        Interrupt(after_words=3, text="Sorry, we are closed on Tuesdays."),
        WaitTurn(contains="goodbye"),
    ]))  # fmt: skip
    job = await h.dialing_job(agent)
    outcome, turns, call = await h.call(job)

    assert outcome.kind is OutcomeKind.DECLINED and not call.callee.errors
    assert call.clears >= 1
    assert len(agent.heard) == 1
    heard = _words(agent.heard[0])
    interrupted = [t for t in turns if t.interrupted]
    assert len(interrupted) == 1 and interrupted[0].text == agent.heard[0]
    assert interrupted[0].latency is not None and interrupted[0].latency.barge_in_ms is not None
    assert 1 <= len(heard) < len(_words(long_reply))
    assert heard == _words(long_reply)[: len(heard)]
    # never more than the callee actually heard
    callee_heard = _words(call.heard[1])
    assert heard == callee_heard[: len(heard)]
    assert isinstance(agent.inputs[2], CalleeSaid) and "closed" in agent.inputs[2].text.lower()
    await h.webhooks.join()
    assert_clean(h)


async def test_dtmf_through_a_phone_menu(h: Harness) -> None:
    agent = ScriptedAgent([
        [SendDigits("1")],
        [Say("Hi, I would like a haircut. Goodbye."), Hangup(CallOutcome(OutcomeKind.NEEDS_USER))],
    ])  # fmt: skip
    h.twilio.program(PHONE, script=CalleeScript([
        CalleeSays("For bookings press one."), WaitDigits("1"), CalleeSays("Bookings, how can I help?"),
        WaitTurn(contains="goodbye"),
    ]))  # fmt: skip
    job = await h.dialing_job(agent)
    outcome, turns, call = await h.call(job)
    assert outcome.kind is OutcomeKind.NEEDS_USER
    assert call.digits_heard == "1" and not call.callee.errors
    assert any(t.text == "[pressed 1]" for t in turns)


async def test_voicemail_is_retried(h: Harness) -> None:
    agent = ScriptedAgent([])
    h.twilio.program(PHONE, Behavior.VOICEMAIL, CalleeScript([CalleeSays("Leave a message after the beep.")]))
    job = await h.dialing_job(agent)
    outcome, _, call = await h.call(job)
    assert outcome.kind is OutcomeKind.VOICEMAIL
    assert (await h.store.get(job.id)).state is JobState.QUEUED
    assert hung_up_by_api(h, call.sid)


VOICEMAIL_WORDS = "Hi, this is Robin, an AI assistant. Please call 4 1 5. Goodbye."
MACHINE = CalleeScript([CalleeSays("You have reached the desk. Leave a message after the tone."), Beep()])


class MachineAwareAgent(ScriptedAgent):
    """Answers the greeting with an opening, and a machine's beep with a fixed message and a hang-up."""

    def __init__(self) -> None:
        super().__init__([])
        self.left = CallOutcome(OutcomeKind.VOICEMAIL, summary="left a voicemail")

    async def reply(self, event: CallerInput) -> AsyncGenerator[AgentAction, None]:
        self.inputs.append(event)
        if isinstance(event, MachineBeep):
            yield Say(VOICEMAIL_WORDS, first_token_at=time.monotonic())
            yield Hangup(self.left)
        elif isinstance(event, CalleeSaid) and len(self.inputs) == 1:
            yield Say("Hi, this is Robin, an AI assistant calling about a haircut for Alex, thank you.")


@pytest.mark.parametrize("answered_by", ["machine_end_beep", "machine_end_silence"])
async def test_voicemail_message_is_left_after_the_beep_then_hung_up(
    tmp_path: Path, answered_by: str
) -> None:
    h = Harness(tmp_path)
    h.voicemail_message = True
    await h.start()
    try:
        agent = MachineAwareAgent()
        h.twilio.program(PHONE, Behavior.VOICEMAIL, MACHINE, amd=answered_by)
        job = await h.dialing_job(agent)
        outcome, turns, call = await h.call(job)
    finally:
        await h.stop()
    assert call.recorded == VOICEMAIL_WORDS  # recorded from the beep: all of it, nothing said before
    assert outcome == replace(agent.left, call_sid=call.sid)
    assert [type(e) for e in agent.inputs].count(MachineBeep) == 1
    assert any(t.text == VOICEMAIL_WORDS and not t.interrupted for t in turns)
    assert hung_up_by_api(h, call.sid) and call.hangup_requested.is_set()
    amd = [p for url, p, _ in call.callbacks if "/twilio/amd" in url]
    assert [p["AnsweredBy"] for p in amd] == [answered_by]  # sent once, after the beep


async def test_voicemail_message_off_hangs_up_at_the_beep_without_a_message(h: Harness) -> None:
    agent = MachineAwareAgent()
    h.twilio.program(PHONE, Behavior.VOICEMAIL, MACHINE)
    job = await h.dialing_job(agent)
    outcome, _, call = await h.call(job)
    assert outcome.kind is OutcomeKind.VOICEMAIL and "machine_end_beep" in outcome.summary
    # No message: the agent never hears of the beep and the machine records no message. (Whether a
    # word of the reply to the greeting lands after the beep before the hang-up depends on the
    # machine's speed, as on a real line, so only the message is checked.)
    assert VOICEMAIL_WORDS not in call.recorded and not any(isinstance(e, MachineBeep) for e in agent.inputs)
    assert (await h.store.get(job.id)).state is JobState.QUEUED
    assert hung_up_by_api(h, call.sid)


async def test_a_machine_whose_greeting_end_is_unclear_gets_no_message(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.voicemail_message = True
    await h.start()
    try:
        agent = MachineAwareAgent()
        h.twilio.program(PHONE, Behavior.VOICEMAIL, MACHINE, amd="machine_end_other")
        job = await h.dialing_job(agent)
        outcome, _, call = await h.call(job)
    finally:
        await h.stop()
    assert outcome.kind is OutcomeKind.VOICEMAIL and "machine_end_other" in outcome.summary
    assert VOICEMAIL_WORDS not in call.recorded and not any(isinstance(e, MachineBeep) for e in agent.inputs)
    assert hung_up_by_api(h, call.sid)


@pytest.mark.parametrize(
    ("behavior", "kind"), [(Behavior.NO_ANSWER, OutcomeKind.NO_ANSWER), (Behavior.BUSY, OutcomeKind.BUSY)]
)
async def test_unanswered_calls(h: Harness, behavior: Behavior, kind: OutcomeKind) -> None:
    h.twilio.program(PHONE, behavior)
    job = await h.dialing_job()
    outcome, turns, call = await h.call(job)
    assert outcome.kind is kind and turns == []
    assert (await h.store.get(job.id)).state is JobState.QUEUED
    assert h.sink.answered == [] and h.sink.reports == 1
    await h.webhooks.join()
    assert_clean(h)


async def test_callee_hangs_up_mid_reply(h: Harness) -> None:
    long_reply = " ".join(["we could come in on any day of the week at almost any time"] * 3)
    agent = ScriptedAgent([[Say(long_reply)]])
    h.twilio.program(PHONE, script=CalleeScript([CalleeSays("Hello?"), Pause(1.5), HangUp()]))
    job = await h.dialing_job(agent)
    outcome, turns, call = await h.call(job)
    assert outcome.kind is OutcomeKind.ERROR and "before a result" in outcome.summary
    assert call.ended_by == "callee"
    cut = [t for t in turns if t.speaker is Speaker.ASSISTANT]
    assert len(cut) == 1 and cut[0].interrupted
    assert len(_words(cut[0].text)) < len(_words(long_reply))
    await h.webhooks.join()
    assert_clean(h)
    assert all(s.closed_code is not None for s in h.dg.listens + h.dg.speaks)


async def test_listen_socket_drop_reconnects(h: Harness) -> None:
    agent = ScriptedAgent([
        [Say("Hello, this is Robin.")],
        [Say("Do you have Tuesday?")],
        [Say("Thanks, goodbye."), Hangup(CallOutcome(OutcomeKind.BOOKED, summary="ok"))],
    ])  # fmt: skip
    h.twilio.program(PHONE, script=CalleeScript([
        WaitTurn(contains="hello"), CalleeSays("Hi there."),
        WaitTurn(contains="tuesday"), Pause(0.5), CalleeSays("Yes, Tuesday is free."),
        WaitTurn(contains="goodbye"),
    ]))  # fmt: skip
    job = await h.dialing_job(agent)
    sid = await h.placer.place_call(job)
    await h.store.set_call_sid(job.id, sid)
    await wait_inputs(agent, 2)
    h.dg.drop_listen()
    async with asyncio.timeout(30):
        await h.sink.event(job.id).wait()
    outcome, _ = h.sink.outcomes[job.id]
    assert outcome.kind is OutcomeKind.BOOKED
    # (the sandbox records the close handshake's echo, 1000, for the dropped socket: not asserted)
    assert len(h.dg.listens) == 2 and h.sessions[0].listener.connections == 2
    assert h.dg.listens[1].bytes_received > 0
    assert isinstance(agent.inputs[2], CalleeSaid) and "tuesday" in agent.inputs[2].text.lower()


async def test_silent_callee_is_prompted_once_then_the_call_ends(h: Harness) -> None:
    h.config = SessionConfig(silence_timeout=1.0, max_call_seconds=120.0)
    agent = ScriptedAgent([[Say("Hello, is anyone there?")], [Say("Hello? Are you still there?")]])
    h.twilio.program(PHONE, script=CalleeScript([WaitTurn(contains="hello")]))
    job = await h.dialing_job(agent)
    outcome, turns, call = await h.call(job)
    assert [type(i).__name__ for i in agent.inputs] == ["CallConnected", "CalleeSilent"]
    assert outcome.kind is OutcomeKind.ERROR and h.sessions[0].end_reason == "callee silent"
    assert [t.text for t in turns] == ["Hello, is anyone there?", "Hello? Are you still there?"]
    assert hung_up_by_api(h, call.sid)


class PreparingAgent(ScriptedAgent):
    """A scripted agent that also records Flux's early starts (``ClaudeAgent.prepare``)."""

    def __init__(self, replies: list[list[AgentAction]], outcome: CallOutcome | None = None) -> None:
        super().__init__(replies, outcome)
        self.prepared: list[str] = []
        self.discarded = 0

    def prepare(self, event: CallerInput) -> None:
        assert isinstance(event, CalleeSaid)
        self.prepared.append(event.text)

    def discard_prepared(self) -> None:
        self.discarded += 1


async def test_flux_turns_start_the_model_early_with_the_final_words(h: Harness) -> None:
    h.speech = SpeechClient(
        api_key=DG_KEY, http_url=h.dg.http_url, ws_url=h.dg.ws_url, stt_chunk_ms=40,
        stt_model="flux-general-en", eager_eot_threshold=0.5,
    )  # fmt: skip
    long_reply = "I would like to book a haircut for next Tuesday afternoon if you have any time at all"
    booked = CallOutcome(OutcomeKind.BOOKED, summary="haircut Tuesday 3 pm")
    agent = PreparingAgent([
        [Say("Hello, this is Robin, an AI assistant calling for Alex.")],
        [Say(long_reply)],
        [Say("Great, thank you, goodbye."), Hangup(booked)],
    ])  # fmt: skip
    h.twilio.program(PHONE, script=CalleeScript([
        WaitTurn(contains="hello"), CalleeSays("Joe's Barbershop, how can I help?"),
        Interrupt(after_words=3, text="Sorry, Tuesday at three works."),
        WaitTurn(contains="goodbye"),
    ]))  # fmt: skip
    job = await h.dialing_job(agent)
    outcome, turns, call = await h.call(job)

    assert outcome.kind is OutcomeKind.BOOKED and not call.callee.errors
    assert h.dg.listens[0].query["model"] == "flux-general-en"
    said = [i.text for i in agent.inputs if isinstance(i, CalleeSaid)]
    assert _words(said[0]) == _words("Joe's Barbershop, how can I help?")
    # every final turn was prepared with exactly its words before it was final; the barge-in
    # (StartOfTurn while the assistant talked) cut the long reply short
    assert said == agent.prepared
    assert call.clears >= 1 and len(agent.heard) == 1
    assert [t.interrupted for t in turns if t.speaker is Speaker.ASSISTANT] == [False, True, False]
    await h.webhooks.join()
    assert_clean(h)


class OpeningAgent(ScriptedAgent):
    """A scripted agent that declares fixed phrases (its opening), rendered ahead by the session."""

    def __init__(self, phrases: tuple[str, ...], replies: list[list[AgentAction]], **kw: Any) -> None:
        super().__init__(replies, **kw)
        self.phrases = phrases

    def fixed_phrases(self) -> tuple[str, ...]:
        return self.phrases


async def test_a_pre_rendered_opening_plays_without_the_tts_socket(h: Harness) -> None:
    opening = "Hello, this is Robin, an AI assistant calling for Alex."
    assert await h.speech.phrases.audio(opening)  # rendered once per process (e.g. by an earlier call)
    done = CallOutcome(OutcomeKind.DECLINED, summary="closed")
    agent = OpeningAgent((opening,), [
        [Say(opening), Say("I would like to book a haircut.")],
        [Say("Okay, thank you, goodbye."), Hangup(done)],
    ])  # fmt: skip
    h.twilio.program(PHONE, script=CalleeScript([
        WaitTurn(contains="haircut"), CalleeSays("Sorry, we are closed."), WaitTurn(contains="goodbye"),
    ]))  # fmt: skip
    job = await h.dialing_job(agent)
    outcome, turns, call = await h.call(job)

    assert outcome.kind is OutcomeKind.DECLINED and not call.callee.errors
    assert h.dg.rest_speaks == [opening]  # the session asked again, the cache answered
    assert all(opening not in " ".join(s.texts) for s in h.dg.speaks)  # never streamed
    assert " ".join(h.dg.speaks[0].texts).startswith("I would like to book a haircut.")
    # heard in order, the pre-rendered clause first, and in the transcript as said
    assert _words(call.heard[0]) == _words(f"{opening} I would like to book a haircut.")
    assert turns[0].text == f"{opening} I would like to book a haircut." and not turns[0].interrupted
    lat = turns[0].latency
    assert lat is not None and lat.tts_first_byte is not None and lat.first_audio_out is not None
    await h.webhooks.join()
    assert_clean(h)


async def test_a_barge_in_on_a_pre_rendered_clause_keeps_only_what_was_heard(h: Harness) -> None:
    opening = "Hello, this is Robin, an AI assistant calling for Alex about a haircut next Tuesday afternoon."
    assert await h.speech.phrases.audio(opening)
    done = CallOutcome(OutcomeKind.DECLINED, summary="closed")
    agent = OpeningAgent((opening,), [[Say(opening)], [Say("Okay, goodbye."), Hangup(done)]])
    h.twilio.program(PHONE, script=CalleeScript([
        Interrupt(after_words=3, text="Sorry, who is this?"), WaitTurn(contains="goodbye"),
    ]))  # fmt: skip
    job = await h.dialing_job(agent)
    _, turns, call = await h.call(job)

    assert call.clears >= 1 and len(agent.heard) == 1
    heard = _words(agent.heard[0])
    assert 1 <= len(heard) < len(_words(opening)) and heard == _words(opening)[: len(heard)]
    assert heard == _words(call.heard[0])[: len(heard)]  # never more than the callee heard
    assert [t.text for t in turns if t.interrupted] == [agent.heard[0]]
    await h.webhooks.join()
    assert_clean(h)


class HoldingAgent(ScriptedAgent):
    """A scripted agent that agrees to hold (``Agent.holds``) when asked to, as ClaudeAgent's
    ``wait_on_hold`` tool does."""

    def __init__(self, replies: list[list[AgentAction]], outcome: CallOutcome | None = None) -> None:
        super().__init__(replies, outcome)
        self._holds = 0

    @property
    def holds(self) -> int:
        return self._holds

    async def reply(self, event: CallerInput) -> AsyncGenerator[AgentAction, None]:
        async for action in super().reply(event):
            yield action
        if isinstance(event, CalleeSaid) and "hold" in event.text.lower() and "holding" not in event.text:
            self._holds += 1


async def test_on_hold_the_call_waits_silently_through_music_and_goes_on_at_the_callees_words(
    h: Harness,
) -> None:
    h.config = SessionConfig(silence_timeout=1.0, hold_max=30.0, max_call_seconds=120.0)
    agent = HoldingAgent(
        [
            [Say("Sure, I'll hold.")],
            [Say("Thanks, goodbye."), Hangup(CallOutcome(OutcomeKind.DECLINED, summary="done"))],
        ]
    )
    h.twilio.program(
        PHONE,
        script=CalleeScript(
            [
                CalleeSays("Please hold."),
                WaitTurn(contains="hold"),
                Music(8.0),  # eight times the silence timeout
                Pause(0.3),
                CalleeSays("Thanks for holding."),
                WaitTurn(contains="goodbye"),
            ]
        ),
    )
    job = await h.dialing_job(agent)
    outcome, turns, call = await h.call(job)
    # no "are you still there?" (CalleeSilent) and no words or turn from the music
    assert agent.inputs == [CalleeSaid("Please hold."), CalleeSaid("Thanks for holding.")]
    assert h.sessions[0].end_reason == "assistant hung up" and outcome.kind is OutcomeKind.DECLINED
    assert call.callee.seconds > 8.0 and not call.callee.errors
    assert [t.text for t in turns if t.speaker is Speaker.CALLEE] == ["Please hold.", "Thanks for holding."]
    assert call.clears == 0  # music never barged in
    # the chat was told once that the call went on hold and once that the callee was back
    assert h.sink.holds == [(job.id, True), (job.id, False)]
    assert_clean(h)


async def test_a_hold_longer_than_hold_max_ends_the_call(h: Harness) -> None:
    h.config = SessionConfig(silence_timeout=1.0, hold_max=3.0, max_call_seconds=120.0)
    agent = HoldingAgent([[Say("Sure, I'll hold.")]])
    h.twilio.program(
        PHONE, script=CalleeScript([CalleeSays("Please hold."), WaitTurn(contains="hold"), Music(30.0)])
    )
    job = await h.dialing_job(agent)
    outcome, _, call = await h.call(job)
    assert agent.inputs == [CalleeSaid("Please hold.")]
    assert h.sessions[0].end_reason == "on hold too long" and outcome.kind is OutcomeKind.ERROR
    assert h.sink.holds == [(job.id, True)]  # the call ended on hold: its result tells the rest
    assert 3.0 < call.callee.seconds < 10.0
    assert hung_up_by_api(h, call.sid)
    assert_clean(h)


class EagerOpeningAgent(ScriptedAgent):
    """Answers the callee's first words with fixed words at once (``answers_at_once``), as
    ClaudeAgent does with its fixed opening; notes whether the callee's turn was final then."""

    def __init__(self, h: Harness, replies: list[list[AgentAction]], **kw: Any) -> None:
        super().__init__(replies, **kw)
        self.h = h
        self.callee_turns_logged: list[int] = []  # callee turns in the transcript at each reply

    def answers_at_once(self, event: CallerInput) -> bool:
        nxt = self.replies[0] if self.replies else []
        return bool(nxt) and isinstance(nxt[0], Say) and nxt[0].text.startswith("Hi, this is")

    async def reply(self, event: CallerInput) -> AsyncGenerator[AgentAction, None]:
        turns = self.h.sessions[-1]._log.turns()
        self.callee_turns_logged.append(sum(t.speaker is Speaker.CALLEE for t in turns))
        async for action in super().reply(event):
            yield action


def _flux(h: Harness, *, eager: float, eot: float = 0.7) -> SpeechClient:
    return SpeechClient(
        api_key=DG_KEY, http_url=h.dg.http_url, ws_url=h.dg.ws_url, stt_chunk_ms=40,
        stt_model="flux-general-en", eager_eot_threshold=eager, eot_threshold=eot,
    )  # fmt: skip


async def test_the_fixed_opening_starts_on_the_eager_end_of_turn_and_is_not_started_twice(
    h: Harness,
) -> None:
    h.speech = _flux(h, eager=0.5)
    opening = "Hi, this is Robin, an AI assistant calling on behalf of Alex. I would like a haircut."
    done = CallOutcome(OutcomeKind.DECLINED, summary="closed")
    agent = EagerOpeningAgent(h, [[Say(opening)], [Say("Okay, thank you, goodbye."), Hangup(done)]])
    h.twilio.program(PHONE, script=CalleeScript([
        CalleeSays("Joe's Barbershop, how can I help?"), WaitTurn(contains="haircut"),
        CalleeSays("Sorry, we are closed."), WaitTurn(contains="goodbye"),
    ]))  # fmt: skip
    job = await h.dialing_job(agent)
    outcome, turns, call = await h.call(job)

    assert outcome.kind is OutcomeKind.DECLINED and not call.callee.errors
    # the opening began before Flux's EndOfTurn put the greeting into the transcript, and that
    # EndOfTurn (same words) started no second reply
    assert agent.callee_turns_logged[0] == 0
    assert [_words(i.text) for i in agent.inputs if isinstance(i, CalleeSaid)] == [
        _words("Joe's Barbershop, how can I help?"), _words("Sorry, we are closed."),
    ]  # fmt: skip
    assert _words(call.heard[0]) == _words(opening) and call.clears == 0
    assert [t.speaker for t in turns] == [Speaker.CALLEE, Speaker.ASSISTANT] * 2
    assert not any(t.interrupted for t in turns)
    await h.webhooks.join()
    assert_clean(h)


async def test_an_eager_opening_stops_at_turn_resumed_and_the_disclosure_is_said_whole_after(
    h: Harness,
) -> None:
    # eager at 120 ms of silence, the end of turn at 360 ms: a 250 ms pause mid-greeting makes Flux
    # say "probably done", then TurnResumed when the receptionist goes on
    h.speech = _flux(h, eager=0.3, eot=0.9)
    opening = "Hi, this is Robin, an AI assistant calling on behalf of Alex. I would like a haircut."
    done = CallOutcome(OutcomeKind.DECLINED, summary="closed")
    agent = EagerOpeningAgent(
        h, [[Say(opening)], [Say(opening)], [Say("Okay, thank you, goodbye."), Hangup(done)]]
    )
    h.twilio.program(PHONE, script=CalleeScript([
        CalleeSays("Joe's Barbershop."), Pause(0.25), CalleeSays("How can I help?"),
        WaitTurn(contains="haircut"), CalleeSays("Sorry, we are closed."), WaitTurn(contains="goodbye"),
    ]))  # fmt: skip
    job = await h.dialing_job(agent)
    outcome, turns, call = await h.call(job)

    assert outcome.kind is OutcomeKind.DECLINED and not call.callee.errors
    said = [_words(i.text) for i in agent.inputs if isinstance(i, CalleeSaid)]
    assert said[0] == _words("Joe's Barbershop.")  # the eager reply, cut off at TurnResumed
    assert said[1] == _words("Joe's Barbershop. How can I help?")  # the whole turn, answered once
    assert len(agent.heard) == 1 and call.clears >= 1
    heard = _words(agent.heard[0])
    assert heard == _words(opening)[: len(heard)] and len(heard) < len(_words(opening))
    # the second opening played whole, disclosure first
    assert any(_words(h_) == _words(opening) for h_ in call.heard)
    await h.webhooks.join()
    assert_clean(h)
