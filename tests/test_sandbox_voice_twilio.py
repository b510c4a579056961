"""Sandbox Twilio driven by the REAL twilio SDK (async client), with a small signed-webhook app here."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import warnings
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from sandbox.callee import CalleeScript, HangUp, Interrupt, Pause, Say, WaitDigits, WaitTurn
from sandbox.speech import SpeechDecoder, VoiceStart, WordHeard, encode_speech, silence
from sandbox.twilio import Behavior, LostAnswer, SandboxTwilio

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

# twilio 9.13's AsyncTwilioHttpClient still passes aiohttp.BasicAuth / auth= (deprecated in aiohttp 3.14):
# third-party, raised inside the SDK on every request.
pytestmark = [
    pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'auth' parameter is deprecated:DeprecationWarning"),
]

SID = "AC" + "0" * 32
TOKEN = "secret-token"
TO, FROM, OTHER = "+14155550100", "+14155550199", "+14155550123"
ALL_EVENTS = ["initiated", "ringing", "answered", "completed"]


def tones(digits: str) -> bytes:
    """A tiny local DTMF generator (100 ms tones, 60 ms gaps)."""
    freqs = {"1": (697, 1209), "2": (697, 1336), "#": (941, 1477), "5": (770, 1336)}
    out = b""
    for d in digits:
        lo, hi = freqs[d]
        pcm = b"".join(
            int(
                5000 * (math.sin(2 * math.pi * lo * i / 8000) + math.sin(2 * math.pi * hi * i / 8000))
            ).to_bytes(2, "little", signed=True)
            for i in range(800)
        )
        out += audioop.lin2ulaw(pcm, 2) + silence(0.06)
    return out


class Stream:
    """The app side of one media-stream websocket."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.changed = asyncio.Event()
        self.closed = False
        self.inbound = bytearray()
        self.decoder = SpeechDecoder()
        self.callee_words: list[str] = []
        self.voice_frames: list[int] = []  # chunk numbers of frames with callee voice

    def record(self, data: dict[str, Any]) -> None:
        self.messages.append(data)
        if data["event"] == "media":
            audio = base64.b64decode(data["media"]["payload"])
            self.inbound += audio
            for e in self.decoder.feed(audio):
                if isinstance(e, WordHeard):
                    self.callee_words.append(e.word)
                elif isinstance(e, VoiceStart):
                    self.voice_frames.append(int(data["media"]["chunk"]))
        self.changed.set()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["event"] == name]

    async def until(self, predicate: Any, limit: float = 10.0) -> None:
        async with asyncio.timeout(limit):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    async def send(self, message: dict[str, Any]) -> None:
        sid = self.events("start")[0]["streamSid"]
        await self.ws.send_str(json.dumps({**message, "streamSid": sid}))

    async def play(self, audio: bytes, size: int = 640) -> None:
        for i in range(0, len(audio), size):
            payload = base64.b64encode(audio[i : i + size]).decode()
            await self.send({"event": "media", "media": {"payload": payload}})


class WebhookApp:
    """Our side of Twilio for these tests: validates every signature and records what arrives."""

    def __init__(self) -> None:
        self.validator = RequestValidator(TOKEN)
        self.posts: dict[str, list[dict[str, str]]] = {"status": [], "amd": [], "voice": []}
        self.bad_signatures = 0
        self.streams: asyncio.Queue[Stream] = asyncio.Queue()
        self.all_streams: list[Stream] = []
        self.base = ""
        self.changed = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def stream_url(self) -> str:
        return self.base.replace("http://", "ws://") + "/stream"

    def twiml(self, **params: str) -> str:
        inner = "".join(f'<Parameter name="{k}" value="{v}"/>' for k, v in params.items())
        return f'<Response><Connect><Stream url="{self.stream_url}">{inner}</Stream></Connect></Response>'

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{kind}", self._post)
        app.router.add_get("/stream", self._stream)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        for s in self.all_streams:
            await s.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _post(self, request: web.Request) -> web.Response:
        params = {k: str(v) for k, v in (await request.post()).items()}
        url = f"{self.base}{request.path_qs}"
        if not self.validator.validate(url, params, request.headers.get("X-Twilio-Signature", "")):
            self.bad_signatures += 1
            return web.Response(status=403)
        self.posts[request.match_info["kind"]].append(params)
        self.changed.set()
        if request.match_info["kind"] == "voice":
            return web.Response(text=self.twiml(job="url-mode"), content_type="text/xml")
        return web.Response(text="")

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if not self.validator.validate(self.stream_url, {}, request.headers.get("X-Twilio-Signature", "")):
            self.bad_signatures += 1
            return web.Response(status=403)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        stream = Stream(ws)
        self.all_streams.append(stream)
        self.streams.put_nowait(stream)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                stream.record(json.loads(msg.data))
        stream.closed = True
        stream.changed.set()
        return ws

    async def wait_posts(self, kind: str, n: int) -> list[dict[str, str]]:
        async with asyncio.timeout(10):
            while len(self.posts[kind]) < n:
                self.changed.clear()
                await self.changed.wait()
        return self.posts[kind]


@pytest.fixture
async def env() -> AsyncIterator[tuple[SandboxTwilio, WebhookApp, Client]]:
    sandbox = SandboxTwilio(account_sid=SID, auth_token=TOKEN, pace=8.0, ring_seconds=0.05)
    app = WebhookApp()
    await sandbox.start()
    await app.start()
    http = AsyncTwilioHttpClient()
    client = Client(SID, TOKEN, http_client=http)
    client.api.base_url = sandbox.base_url
    try:
        yield sandbox, app, client
    finally:
        await http.close()
        await sandbox.stop()
        await app.stop()


async def create(client: Client, app: WebhookApp, **kw: Any) -> Any:
    args: dict[str, Any] = dict(
        to=TO, from_=FROM, status_callback=f"{app.base}/status", status_callback_event=ALL_EVENTS
    )
    if "url" not in kw:
        args["twiml"] = app.twiml(job="42", attempt="1")
    return await client.calls.create_async(**(args | kw))


async def test_answered_call_streams_plays_and_calls_back_in_order(env: Any) -> None:
    sandbox, app, client = env
    script = CalleeScript([WaitTurn(), Say("I can do Tuesday"), WaitTurn(contains="thanks"), HangUp()])
    sandbox.program(TO, script=script)
    created = await create(client, app)
    assert created.sid.startswith("CA") and len(created.sid) == 34 and created.status == "queued"
    call = await sandbox.wait_for_call()
    assert call.sid == created.sid and call.params["StatusCallbackEvent"] == ALL_EVENTS
    stream = await app.streams.get()
    await stream.until(lambda: len(stream.events("media")) >= 3)
    connected, start, *_ = stream.messages
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start["start"]["customParameters"] == {"job": "42", "attempt": "1"} == call.stream_params
    assert start["start"]["callSid"] == call.sid and start["start"]["tracks"] == ["inbound"]
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    media = stream.events("media")[:3]
    assert [m["sequenceNumber"] for m in media] == ["2", "3", "4"]
    assert [(m["media"]["chunk"], m["media"]["timestamp"]) for m in media] == [
        ("1", "0"),
        ("2", "20"),
        ("3", "40"),
    ]
    assert all(len(base64.b64decode(m["media"]["payload"])) == 160 for m in media)

    await stream.play(encode_speech("Hello, this is an AI assistant"))
    await stream.send({"event": "mark", "mark": {"name": "greeting"}})
    await stream.until(lambda: stream.events("mark"))
    assert stream.events("mark")[0]["mark"] == {"name": "greeting"}
    await stream.until(lambda: stream.callee_words == ["I", "can", "do", "Tuesday"])
    await stream.play(encode_speech("Tuesday it is, thanks!") + silence(0.1))
    await stream.until(lambda: stream.closed)
    assert stream.messages[-1]["event"] == "stop"
    assert stream.messages[-1]["stop"] == {"accountSid": SID, "callSid": call.sid}
    await asyncio.wait_for(call.done.wait(), 5)
    assert call.heard == ["Hello, this is an AI assistant", "Tuesday it is, thanks!"]
    assert call.said == ["I can do Tuesday"] and call.ended_by == "callee" and call.errors == []
    assert call.marks_echoed == ["greeting"] and call.status == "completed"
    statuses = await app.wait_posts("status", 4)
    assert [p["CallStatus"] for p in statuses] == ["initiated", "ringing", "in-progress", "completed"]
    assert [p["SequenceNumber"] for p in statuses] == ["0", "1", "2", "3"]
    assert int(statuses[-1]["CallDuration"]) >= 4 and statuses[0]["CallbackSource"] == "call-progress-events"
    assert all(p["CallSid"] == call.sid and p["To"] == TO and p["From"] == FROM for p in statuses)
    assert app.bad_signatures == 0 and [c[2] for c in call.callbacks] == [200] * 4
    fetched = await client.calls(call.sid).fetch_async()
    assert fetched.status == "completed"


async def test_barge_in_clear_keeps_only_played_words(env: Any) -> None:
    sandbox, app, client = env
    sandbox.program(TO, script=CalleeScript([Interrupt(after_words=2, text="wait, stop")]))
    await create(client, app)
    call = await sandbox.wait_for_call()
    stream = await app.streams.get()
    await stream.until(lambda: stream.events("start"))
    # slow speech (1 word/s of audio): the clear surely lands inside word three
    await stream.play(encode_speech("one two three four five six", words_per_second=1.0))
    await stream.send({"event": "mark", "mark": {"name": "reply-1"}})
    await stream.until(lambda: stream.voice_frames)
    await stream.send({"event": "clear"})
    await stream.until(lambda: stream.events("mark"))
    await stream.until(lambda: stream.callee_words == ["wait,", "stop"])
    await client.calls(call.sid).update_async(status="completed")
    await asyncio.wait_for(call.done.wait(), 5)
    assert call.clears == 1 and call.marks_echoed == ["reply-1"]
    assert call.heard == ["one two"] and call.said == ["wait, stop"]
    assert call.ended_by == "api" and stream.messages[-1]["event"] == "stop"
    assert stream.voice_frames[0] == 2 * 50 + 1  # the callee started right after word two: audio time


@pytest.mark.parametrize(
    ("behavior", "final"),
    [(Behavior.NO_ANSWER, "no-answer"), (Behavior.BUSY, "busy"), (Behavior.FAIL, "failed")],
)
async def test_unanswered_calls_end_without_stream(env: Any, behavior: Behavior, final: str) -> None:
    sandbox, app, client = env
    sandbox.program(TO, behavior)
    await create(client, app)
    call = await sandbox.wait_for_call()
    await asyncio.wait_for(call.done.wait(), 5)
    statuses = [p["CallStatus"] for p in app.posts["status"]]
    expected = ["initiated", final] if behavior is Behavior.FAIL else ["initiated", "ringing", final]
    assert statuses == expected and call.status == final
    assert app.posts["status"][-1]["CallDuration"] == "0"
    assert app.all_streams == [] and call.twiml is not None


async def test_voicemail_async_amd_and_rest_hangup(env: Any) -> None:
    sandbox, app, client = env
    sandbox.program(TO, Behavior.VOICEMAIL, CalleeScript([Say("Leave a message after the beep")]))
    await create(
        client,
        app,
        machine_detection="DetectMessageEnd",
        async_amd="true",
        async_amd_status_callback=f"{app.base}/amd",
    )
    call = await sandbox.wait_for_call()
    amd = await app.wait_posts("amd", 1)
    assert amd[0]["AnsweredBy"] == "machine_end_beep" and amd[0]["CallSid"] == call.sid
    stream = await app.streams.get()
    await stream.until(lambda: len(stream.callee_words) == 6)
    await client.calls(call.sid).update_async(status="completed")
    await stream.until(lambda: stream.closed)
    await asyncio.wait_for(call.done.wait(), 5)
    assert stream.messages[-1]["event"] == "stop" and call.ended_by == "api"
    assert app.posts["status"][-1]["CallStatus"] == "completed"


async def test_time_limit_url_mode_and_pause(env: Any) -> None:
    sandbox, app, client = env
    sandbox.program(TO, script=CalleeScript([Pause(1.0), Say("hi")]))
    await create(client, app, url=f"{app.base}/voice", time_limit=2)
    call = await sandbox.wait_for_call()
    stream = await app.streams.get()
    await asyncio.wait_for(call.done.wait(), 5)
    await stream.until(lambda: stream.closed)
    assert call.ended_by == "time_limit" and stream.messages[-1]["event"] == "stop"
    assert len(stream.events("media")) == 100  # two seconds of 20 ms frames
    assert stream.voice_frames == [51]  # Pause(1.0) = exactly 50 silent frames
    assert call.stream_params == {"job": "url-mode"}
    voice = app.posts["voice"][0]
    assert voice["CallSid"] == call.sid and voice["CallStatus"] == "in-progress"
    assert app.posts["status"][-1]["CallDuration"] == "2"


async def test_digits_from_audio_and_play_twiml(env: Any) -> None:
    sandbox, app, client = env
    sandbox.program(TO, script=CalleeScript([WaitDigits("12#"), WaitDigits("5"), Say("got it"), HangUp()]))
    await create(client, app)
    call = await sandbox.wait_for_call()
    stream = await app.streams.get()
    await stream.until(lambda: stream.events("start"))
    await stream.play(tones("12#"))
    await stream.until(lambda: call.digits_heard == "12#")
    await client.calls(call.sid).update_async(twiml='<Response><Play digits="w5"/></Response>')
    await stream.until(lambda: stream.closed)
    assert call.digits_heard == "12#5" and call.said == ["got it"] and call.ended_by == "callee"
    assert call.heard == [] and call.twiml_updates == ['<Response><Play digits="w5"/></Response>']


async def test_script_timeout_hangs_up_with_error(env: Any) -> None:
    sandbox, app, client = env
    sandbox.program(TO, script=CalleeScript([WaitTurn(contains="hello", timeout=0.5)]))
    await create(client, app)
    call = await sandbox.wait_for_call()
    await asyncio.wait_for(call.done.wait(), 5)
    assert call.ended_by == "callee" and "timed out" in call.errors[0]


async def test_drop_stream_after_then_completed_later(env: Any) -> None:
    sandbox, app, client = env
    sandbox.program(TO, drop_stream_after=0.5)
    await create(client, app)
    call = await sandbox.wait_for_call()
    stream = await app.streams.get()
    await stream.until(lambda: stream.closed)
    assert stream.events("stop") == [] and len(stream.events("media")) == 25
    assert call.status == "in-progress"
    await asyncio.wait_for(call.done.wait(), 5)
    assert call.ended_by == "drop" and app.posts["status"][-1]["CallStatus"] == "completed"


async def test_rest_errors(env: Any) -> None:
    sandbox, app, client = env
    bad_http = AsyncTwilioHttpClient()
    try:
        bad = Client(SID, "wrong", http_client=bad_http)
        bad.api.base_url = sandbox.base_url
        with pytest.raises(TwilioRestException) as err:
            await create(bad, app)
        assert err.value.status == 401 and err.value.code == 20003
    finally:
        await bad_http.close()
    sandbox.fail_next_create(503)
    with pytest.raises(TwilioRestException) as err:
        await create(client, app)
    assert err.value.status == 503
    with pytest.raises(TwilioRestException) as err:
        await client.calls("CA" + "f" * 32).fetch_async()
    assert err.value.status == 404
    assert sandbox.calls == {} and [r[3] for r in sandbox.requests] == [401, 503, 404]


async def test_stop_with_a_live_call_sends_stop_and_completes(env: Any) -> None:
    sandbox, app, client = env
    await create(client, app)
    call = await sandbox.wait_for_call()
    stream = await app.streams.get()
    await stream.until(lambda: len(stream.events("media")) >= 2)
    await sandbox.stop()
    assert call.done.is_set() and call.status == "completed" and call.ended_by == "api"
    await stream.until(lambda: stream.closed)
    assert stream.messages[-1]["event"] == "stop"


async def test_calls_list_filters_and_pages_like_twilio(env: Any) -> None:
    sandbox, app, client = env
    before = datetime.now(UTC) - timedelta(seconds=2)
    for to in (TO, TO, OTHER, TO):
        await create(client, app, to=to)
    await app.wait_posts("status", 4)  # every call has started dialling (initiated)
    mine = sorted((c for c in sandbox.calls.values() if c.to == TO), key=lambda c: c.created_at, reverse=True)

    listed = await client.calls.list_async(to=TO, from_=FROM)
    assert [c.sid for c in listed] == [c.sid for c in mine]  # newest first
    assert all(c.start_time is not None and c.start_time >= before for c in listed)  # RFC 2822 parsed
    paged = await client.calls.list_async(to=TO, from_=FROM, page_size=1)
    assert [c.sid for c in paged] == [c.sid for c in mine]  # followed next_page_uri twice
    assert [c.sid for c in await client.calls.list_async(to=OTHER)] == [
        c.sid for c in sandbox.calls.values() if c.to == OTHER
    ]
    assert len(await client.calls.list_async(to=TO, start_time_after=before)) == 3
    assert await client.calls.list_async(to=TO, start_time_after=datetime.now(UTC) + timedelta(hours=1)) == []
    assert await client.calls.list_async(to=TO, start_time_before=before) == []
    assert await client.calls.list_async(to=TO, from_="+14155550000") == []
    # the raw envelope, with a bare date as Twilio documents the filter
    today = datetime.now(UTC).date().isoformat()
    async with aiohttp.ClientSession(auth=aiohttp.BasicAuth(SID, TOKEN)) as http:
        url = f"{sandbox.base_url}/2010-04-01/Accounts/{SID}/Calls.json"
        async with http.get(url, params={"To": TO, "StartTime>": today, "PageSize": "2"}) as resp:
            page = await resp.json()
    envelope = {"calls", "page", "page_size", "uri", "start", "end"}
    assert set(page) == envelope | {"next_page_uri", "first_page_uri", "previous_page_uri"}
    assert (page["page"], page["page_size"], page["start"], page["end"]) == (0, 2, 0, 1)
    assert page["previous_page_uri"] is None and "Page=1" in page["next_page_uri"]
    assert {"sid", "status", "to", "from", "start_time", "date_created"} <= set(page["calls"][0])


async def test_lost_create_answer_still_places_the_call(env: Any) -> None:
    sandbox, app, client = env
    sandbox.program(TO, Behavior.NO_ANSWER)
    sandbox.lose_next_create_answer(LostAnswer.DROP)
    with pytest.raises(aiohttp.ClientError):
        await create(client, app)
    call = await sandbox.wait_for_call()
    assert sandbox.lost_answers == [call.sid]
    posts = await app.wait_posts("status", 1)
    assert posts[0]["CallSid"] == call.sid and posts[0]["CallStatus"] == "initiated"  # it really rings

    sandbox.lose_next_create_answer(LostAnswer.HANG)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):  # the SDK's own client passes no timeout to aiohttp
            await create(client, app)
    assert len(sandbox.calls) == 2 and len(sandbox.lost_answers) == 2
    await asyncio.wait_for(call.done.wait(), 5)
    assert call.status == "no-answer"
