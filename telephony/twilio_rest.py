"""Placing, inspecting and ending calls with the real Twilio SDK (async client).

Implements ``storage.ports.CallPlacer``. The call's TwiML connects a two-way
media stream whose ``<Parameter>``s carry the job id and a one-time token; only
the token's SHA-256 is stored (in job meta, before the call exists), so the
stream websocket can prove it belongs to the call we placed.

Each create also carries a per-attempt nonce in its callback URLs (stored with
the attempt before the create): Twilio has no idempotency key for calls, so when
a create's answer is lost the ``initiated`` callback (matched by nonce) or the
Calls list (:meth:`TwilioCallPlacer.find_calls`) is how the dispatcher learns
that the call exists, instead of dialling a second time.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlencode

import aiohttp
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client
from twilio.twiml.voice_response import Connect, VoiceResponse

from storage.errors import ProviderConnectionError, ProviderError, ProviderStatusError, ProviderTimeoutError
from storage.models import Job, utcnow
from storage.ports import FoundCall

PROVIDER = "twilio"
STREAM_PATH = "/twilio/stream"
STATUS_PATH = "/twilio/status"
AMD_PATH = "/twilio/amd"
#: The number's Voice URL (set by the operator in Twilio's console): calls *to* our number.
INCOMING_PATH = "/twilio/incoming"
STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
#: Twilio error code for "Call is not in-progress" (hanging up an ended call).
_NOT_IN_PROGRESS = 21220
#: Enough to see every call one attempt could have made to one number.
_FIND = 50


class _MetaStore(Protocol):
    async def update_meta(self, job_id: str, **values: Any) -> Any: ...


def token_sha256(token: str) -> str:
    """What is stored for a stream token (the token itself never is)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def stream_url(public_base_url: str) -> str:
    """The media-stream websocket URL for a public base (wss:// for https://, ws:// for http://)."""
    base = public_base_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + STREAM_PATH
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :] + STREAM_PATH
    raise ValueError(f"PUBLIC_BASE_URL must start with http:// or https://, got {public_base_url!r}")


def stream_twiml(public_base_url: str, job_id: str, token: str) -> str:
    """``<Connect><Stream>`` TwiML carrying the job id and the one-time token."""
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url(public_base_url))
    stream.parameter(name="job", value=job_id)
    stream.parameter(name="token", value=token)
    response.append(connect)
    return str(response)


def say_and_hang_up_twiml(words: str) -> str:
    """``<Say>`` then ``<Hangup>``: a short fixed answer to a call we cannot take up."""
    response = VoiceResponse()
    response.say(words)
    response.hangup()
    return str(response)


def new_nonce() -> str:
    """A per-attempt nonce for the callback URLs (not a secret: the callbacks are signed)."""
    return secrets.token_urlsafe(12)


def map_twilio_error(e: BaseException, what: str) -> ProviderError:
    """Translate SDK / transport errors into our retry-aware tree."""
    if isinstance(e, TwilioRestException):
        return ProviderStatusError(
            f"twilio {what}: HTTP {e.status} code {e.code}: {e.msg}", provider=PROVIDER, status=int(e.status)
        )
    if isinstance(e, asyncio.TimeoutError | TimeoutError):
        return ProviderTimeoutError(f"twilio {what}: timed out", provider=PROVIDER)
    return ProviderConnectionError(f"twilio {what}: {e!r}", provider=PROVIDER)


_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


class TwilioCallPlacer:
    """``CallPlacer`` over Twilio's REST API.

    Args:
        store: where the stream token's hash goes (``JobStore.update_meta``).
        account_sid, auth_token, from_number: Twilio credentials and caller id.
        public_base_url: where Twilio reaches our webhooks (https://… in production).
        api_base_url: Twilio REST base (``https://api.twilio.com`` or the sandbox).
        max_call_seconds: hard cap on call length (Twilio ``TimeLimit``).
        ring_timeout: seconds to let the phone ring (Twilio ``Timeout``).
        http_timeout: seconds per REST request (enforced here: the SDK's async client
            does not pass its own timeout on to aiohttp).
        now: wall time in UTC; the dial start it stamps is compared with Twilio's own clock
            (the Calls list's ``StartTime``), so it must be real time, not a test's fake clock.
    """

    def __init__(
        self,
        store: _MetaStore,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str,
        public_base_url: str,
        api_base_url: str = "https://api.twilio.com",
        max_call_seconds: int = 600,
        ring_timeout: int = 30,
        http_timeout: float = 15.0,
        now: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._from = from_number
        self.public_base_url = public_base_url.rstrip("/")
        self._api_base_url = api_base_url.rstrip("/")
        self._max_call_seconds = max_call_seconds
        self._ring_timeout = ring_timeout
        self._http_timeout = http_timeout
        self._now = now
        self._client: Client | None = None
        self._http: AsyncTwilioHttpClient | None = None

    def _twilio(self) -> Client:
        # Built lazily: the async HTTP client's aiohttp session binds to the running loop.
        if self._client is None:
            self._http = AsyncTwilioHttpClient(timeout=self._http_timeout)
            self._client = Client(self._account_sid, self._auth_token, http_client=self._http)
            self._client.api.base_url = self._api_base_url
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP session (call on shutdown)."""
        if self._http is not None:
            await self._http.close()
        self._http = None
        self._client = None

    @property
    def from_number(self) -> str:
        """Our caller id (the ``From`` of every call we place)."""
        return self._from

    def _url(self, path: str, job_id: str, nonce: str) -> str:
        return f"{self.public_base_url}{path}?{urlencode({'job': job_id, 'nonce': nonce})}"

    async def place_call(self, job: Job) -> str:
        """Create the call; returns its CallSid.

        Before the create, the stream token's hash and the attempt's nonce and start
        time are stored with the job: the stream may connect, and the ``initiated``
        callback arrive, before the create returns (or if its answer is lost).

        Raises:
            ProviderError: creation failed (``retryable`` per status). A timeout or
                transport error (not an HTTP status) means the call may exist all the same.
        """
        token, nonce = secrets.token_urlsafe(32), new_nonce()
        await self._store.update_meta(
            job.id,
            stream_token_sha256=token_sha256(token),
            call_nonce=nonce,
            call_nonce_attempt=job.attempts,
            dial_started_at=self._now(),
        )
        twiml = stream_twiml(self.public_base_url, job.id, token)
        try:
            async with asyncio.timeout(self._http_timeout):
                call = await self._twilio().calls.create_async(
                    to=job.request.phone,
                    from_=self._from,
                    twiml=twiml,
                    status_callback=self._url(STATUS_PATH, job.id, nonce),
                    status_callback_event=STATUS_EVENTS,
                    status_callback_method="POST",
                    timeout=self._ring_timeout,
                    machine_detection="DetectMessageEnd",
                    async_amd="true",
                    async_amd_status_callback=self._url(AMD_PATH, job.id, nonce),
                    async_amd_status_callback_method="POST",
                    time_limit=self._max_call_seconds,
                )
        except (TwilioRestException, *_TRANSPORT_ERRORS) as e:
            raise map_twilio_error(e, "create call") from e
        if not call.sid:
            raise ProviderConnectionError("twilio create call: answer without a sid", provider=PROVIDER)
        return str(call.sid)

    async def find_calls(self, to: str, *, started_after: datetime) -> list[FoundCall]:
        """Our calls (``From`` = our caller id) to ``to`` that may have begun since ``started_after``.

        Two reads of Twilio's Calls list: ``StartTime>`` for calls that started dialling
        (filtered here again to the second, since Twilio documents the filter by day),
        and ``Status=queued`` for calls that have no start time yet.

        Raises:
            ProviderError: Twilio could not be asked; whether a call exists is unknown.
        """
        after = started_after.astimezone(UTC)
        calls = self._twilio().calls
        try:
            async with asyncio.timeout(self._http_timeout):
                started = await calls.list_async(to=to, from_=self._from, start_time_after=after, limit=_FIND)
                queued = await calls.list_async(to=to, from_=self._from, status="queued", limit=_FIND)
        except (TwilioRestException, *_TRANSPORT_ERRORS) as e:
            raise map_twilio_error(e, "list calls") from e
        found: dict[str, FoundCall] = {}
        for call in [*started, *queued]:
            start = call.start_time
            if call.sid and (start is None or start >= after.replace(microsecond=0)):
                found[str(call.sid)] = FoundCall(str(call.sid), str(call.status), start)
        return list(found.values())

    async def call_status(self, call_sid: str) -> str:
        """Twilio's current status of the call (for crash reconciliation)."""
        try:
            async with asyncio.timeout(self._http_timeout):
                call = await self._twilio().calls(call_sid).fetch_async()
        except (TwilioRestException, *_TRANSPORT_ERRORS) as e:
            raise map_twilio_error(e, "fetch call") from e
        return str(call.status)

    async def hang_up(self, call_sid: str) -> None:
        """End the call; a call that already ended is not an error."""
        try:
            async with asyncio.timeout(self._http_timeout):
                await self._twilio().calls(call_sid).update_async(status="completed")
        except TwilioRestException as e:
            if e.status == 400 and e.code == _NOT_IN_PROGRESS:
                return
            raise map_twilio_error(e, "hang up") from e
        except _TRANSPORT_ERRORS as e:
            raise map_twilio_error(e, "hang up") from e
