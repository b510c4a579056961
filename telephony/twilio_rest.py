"""Placing, inspecting and ending calls with the real Twilio SDK (async client).

Implements ``storage.ports.CallPlacer``. The call's TwiML connects a two-way
media stream whose ``<Parameter>``s carry the job id and a one-time token; only
the token's SHA-256 is stored (in job meta, before the call exists), so the
stream websocket can prove it belongs to the call we placed.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client
from twilio.twiml.voice_response import Connect, VoiceResponse

from storage.errors import ProviderConnectionError, ProviderError, ProviderStatusError, ProviderTimeoutError
from storage.models import Job

PROVIDER = "twilio"
STREAM_PATH = "/twilio/stream"
STATUS_PATH = "/twilio/status"
AMD_PATH = "/twilio/amd"
VOICE_PATH = "/twilio/voice"
STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]
#: Twilio error code for "Call is not in-progress" (hanging up an ended call).
_NOT_IN_PROGRESS = 21220


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
        http_timeout: seconds per REST request.
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

    def _url(self, path: str, job_id: str) -> str:
        return f"{self.public_base_url}{path}?job={quote(job_id, safe='')}"

    async def place_call(self, job: Job) -> str:
        """Create the call; returns its CallSid.

        Raises:
            ProviderError: creation failed (``retryable`` per status).
        """
        token = secrets.token_urlsafe(32)
        # Stored before the call exists: the stream may connect before create returns.
        await self._store.update_meta(job.id, stream_token_sha256=token_sha256(token))
        twiml = stream_twiml(self.public_base_url, job.id, token)
        try:
            call = await self._twilio().calls.create_async(
                to=job.request.phone,
                from_=self._from,
                twiml=twiml,
                status_callback=self._url(STATUS_PATH, job.id),
                status_callback_event=STATUS_EVENTS,
                status_callback_method="POST",
                timeout=self._ring_timeout,
                machine_detection="DetectMessageEnd",
                async_amd="true",
                async_amd_status_callback=self._url(AMD_PATH, job.id),
                async_amd_status_callback_method="POST",
                time_limit=self._max_call_seconds,
            )
        except (TwilioRestException, *_TRANSPORT_ERRORS) as e:
            raise map_twilio_error(e, "create call") from e
        if not call.sid:
            raise ProviderConnectionError("twilio create call: answer without a sid", provider=PROVIDER)
        return str(call.sid)

    async def call_status(self, call_sid: str) -> str:
        """Twilio's current status of the call (for crash reconciliation)."""
        try:
            call = await self._twilio().calls(call_sid).fetch_async()
        except (TwilioRestException, *_TRANSPORT_ERRORS) as e:
            raise map_twilio_error(e, "fetch call") from e
        return str(call.status)

    async def hang_up(self, call_sid: str) -> None:
        """End the call; a call that already ended is not an error."""
        try:
            await self._twilio().calls(call_sid).update_async(status="completed")
        except TwilioRestException as e:
            if e.status == 400 and e.code == _NOT_IN_PROGRESS:
                return
            raise map_twilio_error(e, "hang up") from e
        except _TRANSPORT_ERRORS as e:
            raise map_twilio_error(e, "hang up") from e
