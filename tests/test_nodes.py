"""Several nodes on one database: each call belongs to the node that placed it.

Two nodes ("node-a", "node-b") in one process, each as ``concierge serve`` wires it: its own
database connection to one shared database (``db_url``), its own ``Dispatcher`` (lease owner =
its node name), ``TwilioCallPlacer`` and ``TwilioWebhooks`` listening on its own loopback port,
which is its ``PUBLIC_BASE_URL``. Both talk to one sandbox Twilio (and, where a call is really
held, one sandbox Deepgram, through real ``CallSession``s).

A callback for node A's call delivered to node B (a shared proxy, a restarted node) is
acknowledged by B and changes nothing: no session on B (so no "media stream never connected"
hang-up after ``attach_timeout``), no outcome, no state or history row; A's own callbacks
work as before.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from aiohttp import web
from conftest import DEEPGRAM_TEST_KEY
from dispatcher_harness import FakeNotifier
from factories import call_request
from telephony_fakes import QuietSession
from twilio.request_validator import RequestValidator

from agent.base import Agent, AgentAction, CallerInput, Say
from concierge.app import Concierge, bind
from concierge.clock import OffsetClock, SystemClock
from concierge.dispatcher import Dispatcher
from concierge.settings import Settings, default_node_id
from demo.world import SandboxWorld, sandbox_graph_credential
from sandbox.callee import CalleeScript, HangUp, WaitTurn
from sandbox.callee import Say as CalleeSays
from sandbox.deepgram import SandboxDeepgram
from sandbox.twilio import Behavior, SandboxTwilio
from sandbox.twilio_call import SandboxCall
from storage.db import Database, open_database
from storage.errors import ConfigError
from storage.jobs import JobStore
from storage.models import CallOutcome, Job, JobState, OutcomeKind, Turn, utcnow
from storage.ports import JobEvent
from telephony.session import CallSession
from telephony.speech import SpeechClient
from telephony.turns import SessionConfig
from telephony.twilio_rest import (
    AMD_PATH,
    INCOMING_PATH,
    STATUS_PATH,
    STREAM_PATH,
    TwilioCallPlacer,
    stream_url,
    token_sha256,
)
from telephony.webhooks import TwilioWebhooks

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*BasicAuth.*:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*'auth' parameter.*:DeprecationWarning"),
]

SID = "AC" + "3" * 32
TOKEN = "twilio-auth-token"
OUR_NUMBER = "+14155550199"
ALWAYS_OPEN = "mon-sun 00:00-24:00"
#: The business name of errands whose calls get a real ``CallSession`` (audio, agent, watchdog).
REAL = "Real Barbers"


class GatedAgent(Agent):
    """Says hello once ``go`` is set, and has declined from the start (the callee says no)."""

    def __init__(self, go: asyncio.Event, asked: asyncio.Event) -> None:
        self.go = go
        self.asked = asked

    async def reply(self, event: CallerInput) -> AsyncGenerator[AgentAction, None]:
        self.asked.set()  # the media stream is attached: the call is live on its node
        await self.go.wait()
        yield Say("Hello, this is Robin calling for Alex about a haircut.")

    def interrupted(self, heard: str) -> None:
        return None

    def outcome(self) -> CallOutcome | None:
        return CallOutcome(OutcomeKind.DECLINED, summary="they are fully booked")


@dataclass
class Node:
    """One node: its database connection, dispatcher and webhooks on its own public URL."""

    name: str
    public: str
    db: Database
    store: JobStore
    dispatcher: Dispatcher
    webhooks: TwilioWebhooks
    runner: web.AppRunner
    sessions: list[tuple[str, str]] = field(default_factory=list)  # (job id, call sid) per session made
    loop: asyncio.Task[None] | None = None

    async def until(self, predicate: Callable[[], Awaitable[bool]]) -> None:
        notifier = self.dispatcher.notifier
        assert isinstance(notifier, WatchedNotifier)
        await notifier.until(predicate)

    def run(self) -> None:
        self.loop = asyncio.create_task(self.dispatcher.run(), name=f"dispatcher-{self.name}")

    async def stop_loop(self) -> None:
        if self.loop is not None:
            self.dispatcher.stop()
            await self.loop
            self.loop = None


@dataclass
class Cluster:
    twilio: SandboxTwilio
    nodes: dict[str, Node]
    http: aiohttp.ClientSession
    go: asyncio.Event  # lets the real sessions' agents speak
    asked: asyncio.Event  # a real session's agent was asked for its first words

    async def post_signed(self, node: Node, path: str, query: dict[str, str], params: dict[str, str]) -> int:
        """A callback signed as Twilio signs one sent to ``node`` (what a shared proxy would forward)."""
        url = f"{node.public}{path}" + (f"?{urlencode(query)}" if query else "")
        signature = RequestValidator(TOKEN).compute_signature(url, params)
        async with self.http.post(url, data=params, headers={"X-Twilio-Signature": signature}) as resp:
            return resp.status


@pytest.fixture
async def cluster(db_url: str, dg: SandboxDeepgram) -> AsyncIterator[Cluster]:
    twilio = SandboxTwilio(account_sid=SID, auth_token=TOKEN, pace=8.0, ring_seconds=0.05)
    await twilio.start()
    http = aiohttp.ClientSession()
    go, asked = asyncio.Event(), asyncio.Event()
    speech = SpeechClient(api_key=DEEPGRAM_TEST_KEY, http_url=dg.http_url, ws_url=dg.ws_url, stt_chunk_ms=40)
    # Node B's watchdog would hang up at once: a session made there for A's call would show.
    configs = {
        "node-a": SessionConfig(silence_timeout=8.0, max_call_seconds=120.0),
        "node-b": SessionConfig(silence_timeout=8.0, max_call_seconds=120.0, attach_timeout=0.0),
    }
    nodes: dict[str, Node] = {}
    placers: list[TwilioCallPlacer] = []
    for name in ("node-a", "node-b"):
        db = await open_database(db_url)
        store = JobStore(db)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        public = f"http://127.0.0.1:{sock.getsockname()[1]}"
        placer = TwilioCallPlacer(
            store, account_sid=SID, auth_token=TOKEN, from_number=OUR_NUMBER,
            public_base_url=public, api_base_url=twilio.base_url, http_timeout=5.0,
        )  # fmt: skip
        placers.append(placer)
        dispatcher = Dispatcher(
            store, placer, WatchedNotifier(), owner=name, clock=SystemClock(), default_hours=ALWAYS_OPEN,
            max_concurrent=5, max_attempts=3, lease_seconds=900, retry_backoff=timedelta(minutes=30),
        )  # fmt: skip
        made: list[tuple[str, str]] = []

        def session(
            job: Job, call_sid: str, *, made: list[tuple[str, str]] = made, name: str = name,
            placer: TwilioCallPlacer = placer,
        ) -> Any:  # fmt: skip
            made.append((job.id, call_sid))
            if job.request.business_name != REAL:  # no audio needed: a session that waits for its end
                return QuietSession()
            return CallSession(
                job, call_sid, agent=GatedAgent(go, asked), speech=speech, placer=placer, config=configs[name]
            )

        webhooks = TwilioWebhooks(
            store, dispatcher, auth_token=TOKEN, public_base_url=public, session_factory=session,
            placer=placer, receiver=dispatcher, node=name,
        )  # fmt: skip
        app = web.Application()
        webhooks.add_routes(app)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        nodes[name] = Node(name, public, db, store, dispatcher, webhooks, runner, made)
    try:
        yield Cluster(twilio, nodes, http, go, asked)
    finally:
        go.set()
        for node in nodes.values():
            await node.stop_loop()
        for node in nodes.values():
            await node.runner.cleanup()
        await twilio.stop()
        await http.close()
        for placer in placers:
            await placer.aclose()
        for node in nodes.values():
            await node.db.close()


class WatchedNotifier(FakeNotifier):
    """Records what the person is told, and wakes :meth:`until` after each (every change is told)."""

    def __init__(self) -> None:
        super().__init__()
        self._told = asyncio.Event()

    async def notify(self, job: Job, event: JobEvent, transcript: Sequence[Turn] = ()) -> None:
        await super().notify(job, event, transcript)
        self._told.set()
        self._told = asyncio.Event()

    async def until(self, predicate: Callable[[], Awaitable[bool]]) -> None:
        """Wait until ``predicate`` (a read of the shared database) holds."""
        async with asyncio.timeout(20):
            while True:
                told = self._told
                if await predicate():
                    return
                await told.wait()


async def _snapshot(store: JobStore, job_id: str) -> tuple[Job, int]:
    return await store.get(job_id), len(await store.history(job_id))


def _stream_of(call: SandboxCall) -> str:
    twiml = call.param("Twiml") or ""
    start = twiml.index('url="') + len('url="')
    return twiml[start : twiml.index('"', start)]


# --- 1. NODE_ID ---------------------------------------------------------------------------------


def test_node_id_is_bounded_and_defaults_to_a_name_unique_on_this_machine() -> None:
    s = Settings(_env_file=None, node_id="eu-1.node_2:a")  # type: ignore[call-arg]
    assert s.node == "eu-1.node_2:a"
    for bad in ("two words", "-lead", "x" * 65, "a/b", "é"):
        with pytest.raises(ValueError, match="NODE_ID"):
            Settings(_env_file=None, node_id=bad)  # type: ignore[call-arg]
    # model_copy skips validation; check() (run by Concierge) still refuses it
    copied = Settings(_env_file=None).model_copy(update={"node_id": "bad id"})  # type: ignore[call-arg]
    with pytest.raises(Exception, match="NODE_ID"):
        copied.check()
    fixed = Settings(_env_file=None, port=8081)  # type: ignore[call-arg]
    assert fixed.node == default_node_id(8081) and fixed.node.endswith("-8081")  # stable across restarts
    assert default_node_id(0) != default_node_id(8081)  # port 0: the process id
    assert len(default_node_id(0)) <= 64


# --- 2. a call's URLs point at the node that placed it ------------------------------------------


async def test_each_call_carries_the_base_url_of_the_node_that_placed_it(cluster: Cluster) -> None:
    a, b = cluster.nodes["node-a"], cluster.nodes["node-b"]
    placed: dict[str, SandboxCall] = {}
    for node, phone in ((a, "+14155550101"), (b, "+14155550102")):
        cluster.twilio.program(phone, Behavior.BUSY)
        node.run()  # only this node's loop runs, so it is the one that claims the errand
        job = await node.store.enqueue(call_request(phone=phone), due_at=utcnow(), max_attempts=3)
        node.dispatcher.wake()  # as the desk does: a loop already parked would not look again
        call = await cluster.twilio.wait_for_call()
        await call.done.wait()
        await node.until(functools.partial(_settled, node.store, job.id))
        await node.stop_loop()
        placed[node.name] = call
        [claimed] = [h for h in await node.store.history(job.id) if h.reason == "claimed"]
        assert claimed.owner == node.name  # the history names the node that held the errand
    for node in (a, b):
        call = placed[node.name]
        assert (call.param("StatusCallback") or "").startswith(f"{node.public}{STATUS_PATH}?")
        assert (call.param("AsyncAmdStatusCallback") or "").startswith(f"{node.public}{AMD_PATH}?")
        assert _stream_of(call) == stream_url(node.public)
        assert all(url.startswith(node.public) for url, _, _ in call.callbacks)  # Twilio called it only
        assert all(status == 204 for _, _, status in call.callbacks)
    # each node made sessions only for its own call
    assert {n.name: len(n.sessions) for n in (a, b)} == {"node-a": 1, "node-b": 1}


async def _settled(store: JobStore, job_id: str) -> bool:
    return (await store.get(job_id)).state is JobState.QUEUED


# --- 3. a node never acts on another node's call ------------------------------------------------


async def test_node_b_leaves_node_a_s_live_call_alone_and_a_finishes_it(cluster: Cluster) -> None:
    a, b = cluster.nodes["node-a"], cluster.nodes["node-b"]
    phone = "+14155550103"
    cluster.twilio.program(phone, script=CalleeScript([
        WaitTurn(contains="hello"), CalleeSays("Sorry, we are fully booked this week. Goodbye."), HangUp(),
    ]))  # fmt: skip
    a.run()
    request = call_request(phone=phone, business_name=REAL)
    job = await a.store.enqueue(request, due_at=utcnow(), max_attempts=3)
    a.dispatcher.wake()
    call = await cluster.twilio.wait_for_call()
    await a.until(functools.partial(_in_call, a.store, job.id))  # answered, through A's own callbacks
    await cluster.asked.wait()  # and its media stream is attached to A's session (its token used)
    job = await a.store.get(job.id)
    assert job.lease_owner == "node-a" and job.current_call_sid == call.sid
    before = await _snapshot(b.store, job.id)

    # Node B's loop starts: its recovery and claims leave A's leased call alone.
    b.run()
    await b.dispatcher.wait_idle()
    # Every callback Twilio could send for the call, delivered to node B instead of A.
    query = {"job": job.id, "nonce": job.dial_nonce or ""}
    base = {"AccountSid": SID, "CallSid": call.sid, "From": OUR_NUMBER, "To": phone}
    statuses = ("initiated", "ringing", "in-progress", "busy", "no-answer", "failed", "canceled", "completed")
    for status in statuses:
        assert await cluster.post_signed(b, STATUS_PATH, query, base | {"CallStatus": status}) == 204
    for answered_by in ("machine_end_beep", "machine_start", "fax"):
        assert await cluster.post_signed(b, AMD_PATH, query, base | {"AnsweredBy": answered_by}) == 204
    # A status callback with no job in its URL (found by CallSid) is no different.
    assert await cluster.post_signed(b, STATUS_PATH, {}, base | {"CallStatus": "completed"}) == 204

    assert b.sessions == []  # no session on B: no attach watchdog to hang the call up
    assert b.webhooks.active_calls() == 0
    after = await _snapshot(b.store, job.id)
    assert after == before  # no state, meta, lease or history change by B
    assert not call.hangup_requested.is_set() and not call.done.is_set()

    # Node A's call goes on and ends through A's own callbacks.
    cluster.go.set()
    await call.done.wait()
    await a.until(functools.partial(_final, a.store, job.id))
    done = await a.store.get(job.id)
    assert done.state is JobState.DECLINED
    assert not call.hangup_requested.is_set() and call.status == "completed"  # the callee hung up
    history = await a.store.history(job.id)
    states = [JobState.QUEUED, JobState.DIALING, JobState.IN_CALL, JobState.DECLINED]
    assert [h.to_state for h in history] == states
    assert "node-b" not in {h.owner for h in history}
    assert [s[1] for s in a.sessions] == [call.sid] and b.sessions == []


async def _in_call(store: JobStore, job_id: str) -> bool:
    return (await store.get(job_id)).state is JobState.IN_CALL


async def _final(store: JobStore, job_id: str) -> bool:
    return not (await store.get(job_id)).state.is_active


async def test_a_stream_for_another_node_s_call_is_refused_and_its_token_kept(cluster: Cluster) -> None:
    a, b = cluster.nodes["node-a"], cluster.nodes["node-b"]
    await a.store.enqueue(call_request(phone="+14155550104"), due_at=utcnow(), max_attempts=3)
    [job] = await a.store.claim_due("node-a", limit=1, lease_seconds=900)
    token = "one-time-token"
    await a.store.update_meta(job.id, stream_token_sha256=token_sha256(token))
    call_sid = "CA" + "4" * 32

    assert await _stream(cluster, b, job.id, token, call_sid) == "refused"
    assert b.sessions == []
    assert (await b.store.get(job.id)).meta.stream_token_sha256 == token_sha256(token)  # not used up
    assert await _stream(cluster, a, job.id, token, call_sid) == "admitted"
    assert a.sessions == [(job.id, call_sid)]
    assert (await a.store.get(job.id)).meta.stream_token_sha256 is None


async def _stream(cluster: Cluster, node: Node, job_id: str, token: str, call_sid: str) -> str:
    url = f"ws://{node.public.removeprefix('http://')}{STREAM_PATH}"
    signature = RequestValidator(TOKEN).compute_signature(url, {})
    start = {
        "event": "start", "sequenceNumber": "1", "streamSid": "MZ" + "1" * 32,
        "start": {
            "accountSid": SID, "streamSid": "MZ" + "1" * 32, "callSid": call_sid, "tracks": ["inbound"],
            "customParameters": {"job": job_id, "token": token},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }  # fmt: skip
    async with cluster.http.ws_connect(url, headers={"X-Twilio-Signature": signature}) as ws:
        await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send_str(json.dumps(start))
        msg = await ws.receive()
        if msg.type == aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.POLICY_VIOLATION:
            return "refused"
        return "admitted"


async def test_a_dead_node_s_call_is_left_to_lease_recovery_which_asks_twilio(cluster: Cluster) -> None:
    a = cluster.nodes["node-a"]
    phone = "+14155550105"
    cluster.twilio.program(phone, Behavior.BUSY)
    await a.store.enqueue(call_request(phone=phone), due_at=utcnow(), max_attempts=3)
    [job] = await a.store.claim_due("node-gone", limit=1, lease_seconds=0.001)  # its lease has run out
    # The gone node's call: placed with node A's URLs (as if A restarted under another name).
    call_sid = await a.dispatcher.placer.place_call(job)
    job = await a.store.set_call_sid(job.id, call_sid)
    before = await _snapshot(a.store, job.id)
    [call] = [c for c in cluster.twilio.calls.values() if c.sid == call_sid]
    await call.done.wait()  # initiated, ringing and its final "busy" all reached node A
    assert [status for _, _, status in call.callbacks] == [204, 204, 204]
    assert await _snapshot(a.store, job.id) == before and a.sessions == []
    # Lease recovery asks Twilio what became of the call, then settles it.
    await a.dispatcher.recover()
    taken = await a.store.get(job.id)
    history = [(h.reason, h.owner) for h in await a.store.history(job.id)]
    assert ("lease taken over from node-gone", "node-a") in history
    assert taken.state is JobState.QUEUED and taken.outcome is not None
    assert taken.outcome.kind is OutcomeKind.BUSY  # Twilio's real status
    assert any(m == "GET" and p.endswith(f"/Calls/{call_sid}.json") for m, p, _, _ in cluster.twilio.requests)


async def test_a_call_back_is_taken_by_the_node_it_reaches_and_streams_to_it(cluster: Cluster) -> None:
    a, b = cluster.nodes["node-a"], cluster.nodes["node-b"]
    phone = "+14155550106"
    job = await a.store.enqueue(call_request(phone=phone), due_at=_later_hours(2), max_attempts=3)
    call = cluster.twilio.call_in(phone, OUR_NUMBER, f"{b.public}{INCOMING_PATH}")
    await call.done.wait()
    assert _stream_of_twiml(call.twiml or "") == stream_url(b.public)
    history = await b.store.history(job.id)
    assert ("the business called back", "node-b") in [(h.reason, h.owner) for h in history]
    assert [j for j, _ in b.sessions] == [job.id] and a.sessions == []


def _stream_of_twiml(twiml: str) -> str:
    start = twiml.index('url="') + len('url="')
    return twiml[start : twiml.index('"', start)]


def _later_hours(n: int) -> datetime:
    return utcnow() + timedelta(hours=n)


async def test_a_second_node_under_a_running_node_s_name_refuses_to_start(db_url: str) -> None:
    world = await SandboxWorld(base=Settings(_env_file=None)).start()  # type: ignore[call-arg]
    running: list[Concierge] = []

    async def start(owner: str) -> Concierge:
        sock = bind("127.0.0.1", 0)
        port = sock.getsockname()[1]
        settings = world.settings(public_base_url=f"http://127.0.0.1:{port}", port=port, database_url=db_url)
        app = Concierge(
            settings, clock=OffsetClock(), graph_credential=sandbox_graph_credential(), owner=owner
        )
        try:
            await app.start(sock)
        except BaseException:
            await app.stop(grace=0)
            sock.close()
            raise
        running.append(app)
        return app

    try:
        first = await start("node-a")
        await start("node-b")
        with pytest.raises(ConfigError, match="already named 'node-a'"):
            await start("node-a")
        await first.stop(grace=0)
        running.remove(first)
        await start("node-a")  # the name is free again once its node is gone
    finally:
        for app in running:
            await app.stop(grace=0)
        await world.stop()
