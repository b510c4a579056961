"""One sandbox Twilio call: dialling, signed callbacks, and the bidirectional media stream.

Why one "audio clock": every 20 ms / pace the pump plays up to 160 bytes of the app's buffered
audio to the callee and sends the callee's next 160-byte frame to the app. The callee, marks,
time limit and stream drop all count these frames, so results never depend on pace or load.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from twilio.request_validator import RequestValidator

from sandbox.callee import Beep, Callee, CalleeScript, Say
from sandbox.ear import Ear, HeardTurn
from sandbox.frame_clock import FrameClock

FINAL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_DEFAULT_VOICEMAIL = "Hi, you have reached the front desk. Please leave a message after the beep."


class Behavior(StrEnum):
    """What the dialled number does."""

    ANSWER = "answer"
    NO_ANSWER = "no-answer"
    BUSY = "busy"
    FAIL = "fail"
    VOICEMAIL = "voicemail"


@dataclass(frozen=True)
class Program:
    """How a number behaves when dialled (see ``SandboxTwilio.program``)."""

    behavior: Behavior = Behavior.ANSWER
    script: CalleeScript | None = None
    drop_stream_after: float | None = None
    amd: str = "human"


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _rfc2822_now() -> str:
    return email.utils.format_datetime(datetime.now(UTC))


@dataclass
class SandboxCall:
    """Everything one call did on the wire (for assertions) plus its live state."""

    sid: str
    account_sid: str
    to: str
    from_: str
    params: dict[str, list[str]]
    program: Program
    status: str = "queued"
    twiml: str | None = None
    stream_params: dict[str, str] = field(default_factory=dict)
    received: list[dict[str, Any]] = field(default_factory=list)  # the app's messages, media excepted
    clears: int = 0
    marks_echoed: list[str] = field(default_factory=list)
    callbacks: list[tuple[str, dict[str, str], int]] = field(default_factory=list)
    twiml_updates: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ended_by: str = ""
    duration: int = 0
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_at: datetime | None = None  # when dialling began (Twilio's start_time; empty while queued)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    hangup_requested: asyncio.Event = field(default_factory=asyncio.Event)
    callee: Callee = field(init=False)
    #: How the callee heard each assistant turn, timed by the sandbox (``sandbox.ear``).
    ear: Ear = field(default_factory=Ear)
    #: "inbound": the callee called our number (``SandboxTwilio.call_in``); else we dialled it.
    direction: str = "outbound-api"
    #: The words of ``<Say>`` verbs in the call's TwiML (Twilio's own text-to-speech).
    twiml_said: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        script = self.program.script
        if script is None and self.program.behavior is Behavior.VOICEMAIL:
            script = CalleeScript([Say(_DEFAULT_VOICEMAIL)])
        self.callee = Callee(script)

    @property
    def heard(self) -> list[str]:
        return self.callee.heard

    @property
    def said(self) -> list[str]:
        return self.callee.said

    @property
    def heard_turns(self) -> list[HeardTurn]:
        return self.ear.turns

    @property
    def digits_heard(self) -> str:
        return self.callee.digits_heard

    @property
    def recorded(self) -> str:
        """What an answering machine recorded: the assistant's words heard after its ``Beep``."""
        return " ".join(self.callee.recorded)

    @property
    def beeps(self) -> bool:
        """The callee is a machine that beeps: async AMD reports when the beep has played."""
        return any(isinstance(step, Beep) for step in self.callee.script.steps)

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.params.get(name)
        return values[0] if values else default

    def to_json(self, base_uri: str) -> dict[str, Any]:
        """The Call resource as the REST API returns it."""
        stamp = email.utils.format_datetime(self.created_at)
        started = email.utils.format_datetime(self.started_at) if self.started_at else None
        return {
            "sid": self.sid, "account_sid": self.account_sid, "to": self.to, "to_formatted": self.to,
            "from": self.from_, "from_formatted": self.from_, "status": self.status,
            "direction": self.direction, "api_version": "2010-04-01", "date_created": stamp,
            "date_updated": _rfc2822_now(), "start_time": started, "end_time": None,
            "duration": str(self.duration) if self.status in FINAL_STATUSES else None,
            "price": None, "price_unit": "USD", "answered_by": None, "forwarded_from": None,
            "caller_name": None, "parent_call_sid": None, "phone_number_sid": None,
            "queue_time": "0", "trunk_sid": None, "group_sid": None, "annotation": None,
            "uri": f"{base_uri}/{self.sid}.json", "subresource_uris": {},
        }  # fmt: skip


class CallRunner:
    """Drives one call from queued to a final status."""

    def __init__(
        self,
        call: SandboxCall,
        *,
        http: aiohttp.ClientSession,
        auth_token: str,
        pace: float,
        ring_seconds: float,
        clock: FrameClock,
    ) -> None:
        self.call = call
        self.clock = clock  # the audio clock shared by the calls of one SandboxTwilio
        self.http = http
        self.validator = RequestValidator(auth_token)
        self.pace = pace
        self.ring_seconds = ring_seconds
        self._sequence = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        raw_events = call.params.get("StatusCallbackEvent") or ["completed"]
        self.events = {e for value in raw_events for e in value.split()}

    async def run(self) -> None:
        try:
            await self._dial()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self.call.status in ("queued", "ringing", "in-progress"):
                self.call.status = "completed"  # never leave a call live after its runner ended
            self.call.callee.finish()
            self.call.ear.finish()
            self.call.errors += self.call.callee.errors
            self.call.done.set()

    # ------------------------------------------------------------ callbacks

    def _base_params(self) -> dict[str, str]:
        c = self.call
        return {
            "AccountSid": c.account_sid, "ApiVersion": "2010-04-01", "CallSid": c.sid,
            "CallStatus": c.status, "Called": c.to, "Caller": c.from_, "Direction": c.direction,
            "From": c.from_, "To": c.to,
        }  # fmt: skip

    async def post_signed(self, url: str, params: dict[str, str]) -> str:
        """POST a form signed like Twilio does; record it; return the body (TwiML for voice URLs)."""
        signature = self.validator.compute_signature(url, params)
        status, body = 0, ""
        try:
            async with self.http.post(url, data=params, headers={"X-Twilio-Signature": signature}) as resp:
                status, body = resp.status, await resp.text()
        except aiohttp.ClientError as e:
            self.call.errors.append(f"callback {url} failed: {e!r}")
        self.call.callbacks.append((url, params, status))
        return body if 200 <= status < 300 else ""

    async def _status_callback(self, event: str, call_status: str) -> None:
        url = self.call.param("StatusCallback")
        if not url or event not in self.events:
            return
        params = self._base_params() | {
            "CallStatus": call_status,
            "Timestamp": _rfc2822_now(),
            "SequenceNumber": str(self._sequence),
            "CallbackSource": "call-progress-events",
        }
        if event == "completed":
            params["CallDuration"] = str(self.call.duration)
        self._sequence += 1
        await self.post_signed(url, params)

    async def _finish(self, status: str) -> None:
        self.call.status = status
        await self._status_callback("completed", status)

    async def amd_callback(self, delay: float = 0.1) -> None:
        """Async AMD's result: ``delay`` (audio seconds) after answering, or at once after a beep."""
        await asyncio.sleep(delay / self.pace)
        url = self.call.param("AsyncAmdStatusCallback")
        if url:
            params = {"AccountSid": self.call.account_sid, "CallSid": self.call.sid}
            params |= {"AnsweredBy": self.call.program.amd, "MachineDetectionDuration": "1200"}
            await self.post_signed(url, params)

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        return task

    # ------------------------------------------------------------- dialling

    async def wait_hangup(self, seconds: float) -> bool:
        """Wait up to ``seconds`` (wall); True if the API asked to hang up meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.call.hangup_requested.wait()
        return self.call.hangup_requested.is_set()

    async def _ring_in(self) -> None:
        """An inbound call: POST the number's Voice URL (ringing), then run the TwiML it answers."""
        call = self.call
        call.started_at = datetime.now(UTC)
        call.status = "ringing"
        call.twiml = await self.post_signed(str(call.param("Url")), self._base_params())
        call.status = "in-progress"
        await self._run_twiml()

    async def _run_twiml(self) -> None:
        call = self.call
        call.twiml_said += _says(call.twiml or "")
        stream = _parse_stream(call.twiml or "")
        if stream is None:
            call.ended_by = call.ended_by or "twiml"
        else:
            call.stream_params = stream[1]
            await self._media(stream[0])
        call.duration = max(1, round(call.callee.seconds))
        await self._finish("completed")

    async def _dial(self) -> None:
        if self.call.direction == "inbound":
            return await self._ring_in()
        call, behavior = self.call, self.call.program.behavior
        call.started_at = datetime.now(UTC)
        await self._status_callback("initiated", "initiated")
        if call.hangup_requested.is_set():
            call.ended_by = "api"
            return await self._finish("canceled")
        if behavior is Behavior.FAIL:
            return await self._finish("failed")
        call.status = "ringing"
        await self._status_callback("ringing", "ringing")
        if await self.wait_hangup(self.ring_seconds):
            call.ended_by = "api"
            return await self._finish("canceled")
        if behavior is Behavior.NO_ANSWER:
            return await self._finish("no-answer")
        if behavior is Behavior.BUSY:
            return await self._finish("busy")
        call.status = "in-progress"
        await self._status_callback("answered", "in-progress")
        detection = call.param("MachineDetection")
        asynchronous = (call.param("AsyncAmd") or "false").lower() == "true"
        if detection and asynchronous and not call.beeps:
            self.spawn(self.amd_callback())
        if call.twiml is None and call.param("Url"):
            params = self._base_params()
            if detection and not asynchronous:
                params["AnsweredBy"] = call.program.amd
            call.twiml = await self.post_signed(str(call.param("Url")), params)
        await self._run_twiml()

    # ----------------------------------------------------------------- media

    async def _media(self, url: str) -> None:
        call = self.call
        parts = urlsplit(url)
        if parts.hostname not in _LOOPBACK:
            call.errors.append(f"stream url {url} is not loopback: refused")
            call.ended_by = "stream_error"
            return
        # No TLS on loopback: wss:// and https:// URLs are dialled as ws://, but signed as written.
        ws_url = urlunsplit(("ws", parts.netloc, parts.path, parts.query, ""))
        signature = self.validator.compute_signature(url, {})
        try:
            ws = await self.http.ws_connect(ws_url, headers={"X-Twilio-Signature": signature}, autoping=True)
        except (aiohttp.ClientError, aiohttp.WSServerHandshakeError) as e:
            call.errors.append(f"stream connect failed: {e!r}")
            call.ended_by = "stream_error"
            return
        from sandbox.twilio_stream import MediaPump  # the pump imports this module's types

        try:
            await MediaPump(self, ws).run()
        finally:
            if not ws.closed:
                await ws.close()


def _says(twiml: str) -> list[str]:
    """The text of each ``<Say>`` verb, in order."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError:
        return []
    return [(say.text or "").strip() for say in root.iter("Say")]


def _parse_stream(twiml: str) -> tuple[str, dict[str, str]] | None:
    """``<Connect><Stream url>`` with its ``<Parameter>``s, or None."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError:
        return None
    for stream in root.iter("Stream"):
        url = stream.get("url")
        if url:
            params = {p.get("name", ""): p.get("value", "") for p in stream.iter("Parameter")}
            return url, params
    return None
