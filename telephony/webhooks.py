"""Twilio's side of a call reaching us: signed callbacks and the media-stream websocket.

Every request must carry a valid ``X-Twilio-Signature`` (403 otherwise, with no
state change). The stream websocket additionally proves it belongs to a call we
placed with the one-time token from the TwiML (refused with a policy close
otherwise). Status callbacks arrive in any order and may repeat, so every
handler is idempotent and each call reports exactly one outcome.

A call *to* our number (the business calling back) reaches ``INCOMING_PATH``, the
number's Voice URL, which the operator sets in Twilio's console. The caller's
``From`` is matched to its open errand (``receiver``), which moves straight to
in_call; the answer is the same ``<Connect><Stream>`` TwiML as an outbound call's,
and the call goes on like one. A caller with no open errand hears a short fixed
message (with the disclosure) and the call ends.

A call's ``CallSession`` is created at the first callback (``initiated`` —
while the phone rings), so its Deepgram sockets are open before the callee
answers; the websocket is attached to it when Twilio connects the stream.

Every callback URL carries the nonce of the attempt that placed the call. A
callback whose nonce is the job's current one records its CallSid for that
attempt if none is recorded yet: so a call whose create answer was lost
(timeout, dropped connection, crash) is still known, and the dispatcher adopts
it instead of dialling a second time.

Several nodes may share one database (``node``: this server's lease name). A
call's URLs point at the node that placed it, but a callback or stream can still
reach another node (a shared proxy, a node that restarted under another name).
A node acts only on calls whose errand's lease it holds: for a call leased to
another node (live, or dead and waiting for lease recovery, which asks Twilio
what became of the call before acting) a callback is acknowledged with 204 and
changes nothing — no session, so no "media stream never connected" hang-up, no
outcome, no CallSid recorded — and its media stream is refused without using up
the stream token. A call *to* our number is taken by whichever node receives it
(``receiver`` leases the errand to that node).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import parse_qsl

from aiohttp import WSCloseCode, WSMsgType, web
from multidict import MultiDict

from storage.errors import JobNotFound, ProviderError
from storage.models import CallOutcome, Job, JobState, OutcomeKind, Turn
from storage.ports import OutcomeSink
from telephony import media_stream
from telephony.security import SIGNATURE_HEADER, TwilioSignatures, token_matches
from telephony.twilio_rest import (
    AMD_PATH,
    INCOMING_PATH,
    STATUS_PATH,
    STREAM_PATH,
    say_and_hang_up_twiml,
    stream_twiml,
    stream_url,
    token_sha256,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
START_TIMEOUT = 10.0
#: AMD results after which a machine is recording (``DetectMessageEnd``: the greeting has ended with
#: a beep, or with silence and no beep). ``machine_end_other`` (the end was not recognised: we could
#: be talking over the greeting), ``machine_start`` and ``fax`` are hung up on, leaving nothing.
LEAVE_MESSAGE_AFTER = frozenset({"machine_end_beep", "machine_end_silence"})
_UNANSWERED = {
    "busy": (OutcomeKind.BUSY, "the line was busy"),
    "no-answer": (OutcomeKind.NO_ANSWER, "nobody answered"),
    "failed": (OutcomeKind.ERROR, "the call failed"),
    "canceled": (OutcomeKind.ERROR, "the call was cancelled before it was answered"),
}


class SessionLike(Protocol):
    """What the webhooks need of a call session (``telephony.session.CallSession``)."""

    async def run(self) -> tuple[CallOutcome, list[Turn]]: ...
    async def attach(self, ws: web.WebSocketResponse, start: media_stream.Start) -> None: ...
    def end(self, reason: str, outcome: CallOutcome | None = None, *, hang_up: bool = False) -> None: ...
    def machine_beeped(self, fallback: CallOutcome) -> None: ...


SessionFactory = Callable[[Job, str], SessionLike]


class _Store(Protocol):
    async def get(self, job_id: str) -> Job: ...
    async def find_by_call_sid(self, call_sid: str) -> Job | None: ...
    async def update_meta(self, job_id: str, **values: Any) -> Job: ...
    async def set_call_sid(self, job_id: str, call_sid: str) -> Job: ...


class CallReceiver(Protocol):
    """Takes up a call back (``concierge.dispatcher.Dispatcher.call_received``)."""

    async def call_received(self, phone: str, call_sid: str, token_sha256: str) -> Job | None: ...


class _HangUpper(Protocol):
    async def hang_up(self, call_sid: str) -> None: ...


@dataclass(eq=False)
class _Call:
    job_id: str
    call_sid: str
    session: SessionLike | None = None
    task: asyncio.Task[None] | None = None
    attached: bool = False
    answered: bool = False
    reported: bool = False
    extra: dict[str, str] = field(default_factory=dict)


def _current_nonce(job: Job, nonce: str | None) -> bool:
    """The callback belongs to the call placed for the job's current attempt."""
    return bool(nonce) and job.dial_nonce == nonce


class TwilioWebhooks:
    """Routes ``/twilio/*`` onto an aiohttp application.

    Args:
        store: the job store (lookup, token hash in meta).
        sink: receives answered / outcome events (the dispatcher).
        auth_token: Twilio auth token (signature key).
        public_base_url: the URL Twilio reaches us at; signatures are computed over it.
        session_factory: ``(job, call_sid) -> session`` (the app injects agent, speech, placer).
        placer: hangs up calls that have no session (rare: a voicemail detected very early).
        voicemail_message: on a machine that has finished its greeting (``LEAVE_MESSAGE_AFTER``)
            the session's agent leaves its message before hanging up; off: hang up at once.
        max_body_bytes: larger callbacks are refused with 413.
        receiver: matches a call to our number to its errand; None answers every such call with
            ``unknown_caller_message``.
        unknown_caller_message: said (``<Say>``) to a caller with no open errand before hanging up.
        node: this server's lease name (the dispatcher's owner); calls leased to another name are
            left to their node (see the module docstring). ``None``: a single server that acts
            on every call.
    """

    def __init__(
        self,
        store: _Store,
        sink: OutcomeSink,
        *,
        auth_token: str,
        public_base_url: str,
        session_factory: SessionFactory,
        placer: _HangUpper | None = None,
        voicemail_message: bool = False,
        max_body_bytes: int = MAX_BODY_BYTES,
        receiver: CallReceiver | None = None,
        unknown_caller_message: str = "Sorry, there is nothing to follow up for this number. Goodbye.",
        node: str | None = None,
    ) -> None:
        self._store = store
        self._sink = sink
        self._sig = TwilioSignatures(auth_token=auth_token, public_base_url=public_base_url)
        self._public = public_base_url.rstrip("/")
        self._stream_url = stream_url(self._public)
        self._factory = session_factory
        self._placer = placer
        self._max_body = max_body_bytes
        self._voicemail_message = voicemail_message
        self._receiver = receiver
        self._unknown_caller = unknown_caller_message
        self._node = node
        self._calls: dict[str, _Call] = {}
        self._token_lock = asyncio.Lock()
        self._closing = False

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(STATUS_PATH, self.status)
        app.router.add_post(AMD_PATH, self.amd)
        app.router.add_post(INCOMING_PATH, self.incoming)
        app.router.add_get(STREAM_PATH, self.stream)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, _app: web.Application) -> None:
        await self.close()

    async def close(self) -> None:
        """End every live call (hanging up) and wait for the sessions to report."""
        self._closing = True
        tasks = [c.task for c in self._calls.values() if c.task is not None and not c.task.done()]
        for call in self._calls.values():
            if call.session is not None:
                call.session.end("server shutting down", hang_up=True)
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def join(self) -> None:
        """Wait until every session that is running now has ended and reported."""
        tasks = [c.task for c in self._calls.values() if c.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    def active_calls(self) -> int:
        return sum(1 for c in self._calls.values() if c.task is not None and not c.task.done())

    # --- request plumbing ---------------------------------------------------------------------

    async def _signed_form(self, request: web.Request) -> MultiDict[str] | web.Response:
        if request.content_length is not None and request.content_length > self._max_body:
            return web.Response(status=413, text="body too large")
        body = bytearray()
        while chunk := await request.content.read(16384):
            body += chunk
            if len(body) > self._max_body:
                return web.Response(status=413, text="body too large")
        try:
            params = MultiDict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            return web.Response(status=400, text="bad form")
        url = self._sig.public_url(request.raw_path)
        if not self._sig.valid(url, params, request.headers.get(SIGNATURE_HEADER)):
            log.warning("twilio webhook %s: invalid or missing signature", request.path)
            return web.Response(status=403, text="invalid signature")
        return params

    async def _job_for(self, request: web.Request, call_sid: str) -> Job | None:
        job_id = request.query.get("job")
        try:
            job = await self._store.get(job_id) if job_id else await self._store.find_by_call_sid(call_sid)
        except JobNotFound:
            return None
        if job is None or self._foreign(job, call_sid):
            return None
        nonce = request.query.get("nonce")
        if nonce:
            # Our calls' callbacks name their attempt: one of an earlier attempt's call (its
            # final "completed" after a recovery hung it up, say) must never end the current
            # attempt, whose call may be ringing with no CallSid recorded yet.
            if not _current_nonce(job, nonce):
                return None
            if call_sid:
                job = await self._record_call_sid(job, call_sid)
        elif call_sid and (
            job.dial_nonce is not None  # the current attempt's call is ours: its callbacks carry its nonce
            or (job.meta.call_sid_attempt is not None and job.current_call_sid != call_sid)
        ):
            return None  # no nonce (a call back to us): only the current attempt's recorded call
        if job.call_sid and call_sid and job.call_sid != call_sid:
            return None  # a late callback of an earlier attempt
        return job

    def _foreign(self, job: Job, call_sid: str) -> bool:
        """The errand is leased to another node: its call is that node's (or lease recovery's) to handle.

        Decided from the database row just read, never from what this process remembers:
        another node may hold a call this one has never seen.
        """
        if self._node is None or job.lease_owner is None or job.lease_owner == self._node:
            return False
        if job.state.is_active:
            log.info(
                "call %s of errand %s is held by node %s, not %s: acknowledged, left to it",
                call_sid or "?", job.id, job.lease_owner, self._node,
            )  # fmt: skip
        return True

    async def _record_call_sid(self, job: Job, call_sid: str) -> Job:
        """The current attempt's call, seen here first: record its CallSid (the create may never answer)."""
        if job.state is not JobState.DIALING or job.current_call_sid is not None:
            return job
        log.info("errand %s: call %s known from its callback before the create answered", job.id, call_sid)
        return await self._store.set_call_sid(job.id, call_sid)

    async def _call(self, job: Job, call_sid: str) -> _Call | None:
        """This call's entry; a new one only while the call may still be live.

        An entry is dropped as soon as its call has reported (see :meth:`_report`), so a late
        or repeated callback finds none. The job is read again *after* seeing no entry: a
        report that dropped one has committed its outcome by then, so a finished call shows
        as such and is neither brought back into memory nor reported a second time. An active
        job with no entry is a call this process never saw (e.g. placed before a restart).
        """
        call = self._calls.get(call_sid)
        if call is not None:
            return call
        try:
            fresh = await self._store.get(job.id)
        except JobNotFound:
            return None
        if not fresh.state.is_active or (fresh.call_sid and fresh.call_sid != call_sid):
            return None
        if self._foreign(fresh, call_sid):
            return None
        return self._calls.setdefault(call_sid, _Call(job.id, call_sid))

    def _ensure_session(self, call: _Call, job: Job) -> SessionLike | None:
        if call.session is None and not call.reported and not self._closing and job.state.is_active:
            call.session = self._factory(job, call.call_sid)
            call.task = asyncio.create_task(self._run_session(call, call.session))
        return call.session

    async def _run_session(self, call: _Call, session: SessionLike) -> None:
        try:
            outcome, turns = await session.run()
        except Exception as e:  # the errand must still get a result
            log.exception("call %s: session crashed", call.call_sid)
            outcome, turns = CallOutcome(OutcomeKind.ERROR, summary=f"call failed: {e}"), []
        await self._report(call, outcome, turns)

    async def _report(self, call: _Call, outcome: CallOutcome, turns: list[Turn] | None = None) -> None:
        if call.reported:
            return
        call.reported = True
        if outcome.call_sid is None:
            outcome = replace(outcome, call_sid=call.call_sid)
        try:
            await self._sink.report_outcome(call.job_id, outcome, turns or [])
        finally:
            # Reported is finished, whichever of the session and Twilio's final callback came
            # first: nothing of the call stays in memory. (If the sink failed, the job is still
            # active and a later callback makes a fresh entry that reports again.)
            if self._calls.get(call.call_sid) is call:
                del self._calls[call.call_sid]

    # --- routes -------------------------------------------------------------------------------

    async def _callback(self, request: web.Request, field: str) -> tuple[Job, str, str] | web.Response:
        """A signed Twilio callback's job, CallSid and ``field``, or the answer to give at once."""
        params = await self._signed_form(request)
        if isinstance(params, web.Response):
            return params
        call_sid = params.get("CallSid", "")
        job = await self._job_for(request, call_sid)
        if job is None or not call_sid:
            return web.Response(status=204)
        return job, call_sid, params.get(field, "")

    async def status(self, request: web.Request) -> web.StreamResponse:
        """Call progress: answered → in_call; unanswered → outcome; completed → end the session."""
        found = await self._callback(request, "CallStatus")
        if isinstance(found, web.Response):
            return found
        job, call_sid, status = found
        call = await self._call(job, call_sid)
        if call is None:
            return web.Response(status=204)  # a finished call's late or repeated callback
        if status in ("queued", "initiated", "ringing"):
            self._ensure_session(call, job)
        elif status == "in-progress":
            self._ensure_session(call, job)
            if not call.answered:
                call.answered = True
                await self._sink.call_answered(job.id, call_sid)
        elif status in _UNANSWERED:
            kind, summary = _UNANSWERED[status]
            if call.session is not None:
                call.session.end(f"call {status}", CallOutcome(kind, summary=summary))
            else:
                await self._report(call, CallOutcome(kind, summary=summary))
        elif status == "completed":
            if call.session is not None and call.task is not None and not call.task.done():
                call.session.end("call completed")  # its runner reports the agent's outcome
            else:
                await self._report(call, CallOutcome(OutcomeKind.ERROR, summary="call ended before a result"))
        return web.Response(status=204)

    async def amd(self, request: web.Request) -> web.StreamResponse:
        """Answering-machine detection: a machine is voicemail (a message if on, hang up, retry later)."""
        found = await self._callback(request, "AnsweredBy")
        if isinstance(found, web.Response):
            return found
        job, call_sid, answered_by = found
        if answered_by.startswith("machine") or answered_by == "fax":
            call = await self._call(job, call_sid)
            if call is None:
                return web.Response(status=204)
            summary = f"reached an answering machine ({answered_by})"
            outcome = CallOutcome(OutcomeKind.VOICEMAIL, summary=summary)
            if call.session is not None and self._voicemail_message and answered_by in LEAVE_MESSAGE_AFTER:
                call.session.machine_beeped(outcome)
            elif call.session is not None:
                call.session.end("voicemail", outcome, hang_up=True)
            else:
                if self._placer is not None:
                    with contextlib.suppress(ProviderError):
                        await self._placer.hang_up(call_sid)
                await self._report(call, outcome)
        return web.Response(status=204)

    async def incoming(self, request: web.Request) -> web.StreamResponse:
        """A call to our number (the Voice URL): take up the caller's open errand, or say goodbye.

        Callee-local hours and do-not-call do not apply: they restrict calls we place.
        """
        params = await self._signed_form(request)
        if isinstance(params, web.Response):
            return params
        call_sid, caller = params.get("CallSid", ""), params.get("From", "")
        job: Job | None = None
        token = secrets.token_urlsafe(32)
        if self._receiver is not None and call_sid and caller and not self._closing:
            job = await self._receiver.call_received(caller, call_sid, token_sha256(token))
        if job is None:
            log.info("call %s from %s: no open errand for that number", call_sid, caller)
            return web.Response(text=say_and_hang_up_twiml(self._unknown_caller), content_type="text/xml")
        call = self._calls.setdefault(call_sid, _Call(job.id, call_sid, answered=True))
        self._ensure_session(call, job)
        return web.Response(text=stream_twiml(self._public, job.id, token), content_type="text/xml")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """The bidirectional media stream of one call."""
        if not self._sig.valid_stream(self._stream_url, request.headers.get(SIGNATURE_HEADER)):
            log.warning("twilio stream: invalid or missing signature")
            return web.Response(status=403, text="invalid signature")
        ws = web.WebSocketResponse(timeout=2.0, max_msg_size=1 << 20)
        await ws.prepare(request)
        try:
            start = await self._read_start(ws)
            call = await self._admit(start) if start is not None else None
            if start is None or call is None or call.session is None:
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"stream refused")
                return ws
            call.attached = True
            await call.session.attach(ws, start)
        finally:
            if not ws.closed:
                await ws.close()
        return ws

    async def _read_start(self, ws: web.WebSocketResponse) -> media_stream.Start | None:
        try:
            async with asyncio.timeout(START_TIMEOUT):
                async for msg in ws:
                    if msg.type != WSMsgType.TEXT:
                        return None
                    ev = media_stream.parse(msg.data)
                    if isinstance(ev, media_stream.Start):
                        return ev
                    if not isinstance(ev, media_stream.Connected):
                        return None
        except TimeoutError:
            return None
        return None

    async def _admit(self, start: media_stream.Start) -> _Call | None:
        """Check the start's job and one-time token; consume the token on success."""
        job_id = start.custom_parameters.get("job", "")
        token = start.custom_parameters.get("token")
        async with self._token_lock:
            try:
                job = await self._store.get(job_id) if job_id else None
            except JobNotFound:
                job = None
            if job is None or not job.state.is_active:
                log.warning("twilio stream refused: job %r not in a call", job_id)
                return None
            if job.call_sid and job.call_sid != start.call_sid:
                log.warning("twilio stream refused: call sid mismatch for job %s", job_id)
                return None
            if self._foreign(job, start.call_sid):
                return None  # the token stays: it is the holding node's to check
            if not token_matches(token, job.meta.stream_token_sha256):
                log.warning("twilio stream refused: bad or reused token for job %s", job_id)
                return None
            call = self._calls.get(start.call_sid)
            if call is not None and (call.attached or call.reported):
                return None
            await self._store.update_meta(job.id, stream_token_sha256=None)  # one use only
        call = await self._call(job, start.call_sid)
        if call is not None:
            self._ensure_session(call, job)
        return call
