"""The person's Outlook calendar through Microsoft Graph (the real msgraph-sdk).

Free/busy comes from ``getSchedule``; the booking becomes an event whose
``transactionId`` is the job id, so however often a create is retried (a lost
answer, a crashed dispatcher) Graph keeps exactly one event. The SDK's own
retry handler is turned off: it would sleep through Retry-After inside a call
without our knowing; ``storage.retry`` honours Retry-After up to a cap and
otherwise hands a retryable error to the caller. SDK errors are mapped onto
``storage.errors``.
"""

from __future__ import annotations

import asyncio
import re
import warnings
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import ClientAuthenticationError
from kiota_abstractions.api_error import APIError
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_abstractions.native_response_handler import NativeResponseHandler
from kiota_authentication_azure.azure_identity_authentication_provider import (
    AzureIdentityAuthenticationProvider,
)
from kiota_http.middleware.options import ResponseHandlerOption, RetryHandlerOption
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.models.body_type import BodyType
from msgraph.generated.models.date_time_time_zone import DateTimeTimeZone
from msgraph.generated.models.event import Event
from msgraph.generated.models.item_body import ItemBody
from msgraph.generated.models.location import Location
from msgraph.generated.users.item.calendar.get_schedule.get_schedule_post_request_body import (
    GetSchedulePostRequestBody,
)
from msgraph.graph_request_adapter import options as graph_default_options
from msgraph_core import GraphClientFactory

# The generated request builders emit DeprecationWarnings (their own deprecated config classes) when
# first imported, which the SDK does lazily mid-request. Import them here, once, with those warnings
# silenced, so they neither leak into logs at call time nor trip ``filterwarnings = error``.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import kiota_abstractions.default_query_parameters  # noqa: F401
    import msgraph.generated.users.item.calendar.calendar_request_builder  # noqa: F401
    import msgraph.generated.users.item.calendar.get_schedule.get_schedule_request_builder  # noqa: F401
    import msgraph.generated.users.item.events.events_request_builder  # noqa: F401
    import msgraph.generated.users.item.user_item_request_builder  # noqa: F401
    import msgraph.generated.users.users_request_builder  # noqa: F401

from storage import text as bounds
from storage.errors import ProviderConnectionError, ProviderError, ProviderStatusError, ProviderTimeoutError
from storage.models import Booking, CallRequest
from storage.retry import Backoff, retry, retry_after_header

PROVIDER = "graph"
SCOPES = ["https://graph.microsoft.com/.default"]
_FREE = {"free", "workingelsewhere", "unknown"}
T = TypeVar("T")
#: Three tries, 0.5 s then ~1 s with up to 25 % jitter; a Retry-After up to 10 s is waited out, a
#: longer one ends the tries at once (too long to hold a caller: the caller retries later).
GRAPH_RETRY = Backoff(
    max_attempts=3, base_delay=0.5, jitter=0.25, max_retry_after=10.0, clamp_retry_after=False
)


def build_graph_client(
    tenant_id: str,
    client_id: str,
    client_secret: str,
    base_url: str,
    credential: AsyncTokenCredential | None = None,
    *,
    sdk_max_retries: int = 0,
) -> GraphServiceClient:
    """A ``GraphServiceClient`` for ``base_url`` (e.g. ``https://graph.microsoft.com/v1.0`` or the sandbox).

    App-only: by default an ``azure.identity.aio.ClientSecretCredential`` (the service runs unattended,
    reaching ``/users/{id}`` with the Calendars.ReadWrite application permission). Tests pass a fake
    async credential. ``sdk_max_retries`` configures kiota's RetryHandler (off: ``GraphCalendar`` retries).
    """
    if credential is None:
        from azure.identity.aio import ClientSecretCredential

        credential = ClientSecretCredential(tenant_id, client_id, client_secret)
    options = {
        **graph_default_options,
        RetryHandlerOption.get_key(): RetryHandlerOption(max_retries=sdk_max_retries, delay=0),
    }
    # Our own transport: the SDK's AsyncGraphTransport wrapper does not close the transport it wraps,
    # so ``close_graph_client`` closes it explicitly (otherwise sockets leak at shutdown).
    transport = httpx.AsyncHTTPTransport(http2=_has_h2())
    http_client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(30.0, connect=10.0))
    http_client = GraphClientFactory.create_with_default_middleware(client=http_client, options=options)
    adapter = GraphRequestAdapter(
        AzureIdentityAuthenticationProvider(credential, scopes=SCOPES), client=http_client
    )
    adapter.base_url = base_url.rstrip("/")
    client = GraphServiceClient(request_adapter=adapter)
    _OWNED[client] = (http_client, transport)
    return client


_OWNED: weakref.WeakKeyDictionary[GraphServiceClient, tuple[httpx.AsyncClient, httpx.AsyncHTTPTransport]] = (
    weakref.WeakKeyDictionary()
)


def _has_h2() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:
        return False
    return True


async def close_graph_client(client: GraphServiceClient) -> None:
    """Close the connection pool of a client made by ``build_graph_client`` (idempotent)."""
    owned = _OWNED.pop(client, None)
    if owned is not None:
        http_client, transport = owned
        await http_client.aclose()
        await transport.aclose()


def _parse_graph_dt(value: Any) -> datetime:
    """A ``dateTimeTimeZone`` object of Graph's JSON (``{"dateTime": ..., "timeZone": ...}``)."""
    date_time = value.get("dateTime") if isinstance(value, dict) else None
    if not isinstance(date_time, str) or not date_time:
        raise ProviderStatusError(
            "Graph returned a schedule item without a time", provider=PROVIDER, status=502
        )
    text = re.sub(r"(\.\d{6})\d+", r"\1", date_time.rstrip("Z"))
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=ZoneInfo(str(value.get("timeZone") or "UTC")))
    return dt


def _objects(value: Any) -> list[dict[str, Any]]:
    """The JSON objects of a Graph array (anything else in it, or no array, is skipped)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _raise_for_status(response: Any) -> Any:
    """A raw Graph answer (``NativeResponseHandler``) → its JSON body, or the ``APIError`` kiota
    would have raised (so ``GraphCalendar._call`` retries and maps it the same way)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        err = body.get("error") if isinstance(body, dict) else None
        detail = err.get("message") if isinstance(err, dict) else None
        error = APIError(detail or f"Graph answered {response.status_code}")
        error.response_status_code = response.status_code
        error.response_headers = dict(response.headers)
        raise error
    return body


_GRAPH_ERRORS = (APIError, httpx.HTTPError, ClientAuthenticationError)


def to_provider_error(exc: BaseException) -> ProviderError:
    """The one Graph mapper: an msgraph/kiota/httpx/azure exception onto ``storage.errors``.

    A throttled or failing answer carries its ``Retry-After`` along for ``storage.retry``.
    """
    if isinstance(exc, APIError):  # ODataError is an APIError
        status = exc.response_status_code or 500
        detail = getattr(getattr(exc, "error", None), "message", None) or exc.message or type(exc).__name__
        return ProviderStatusError(
            f"Graph answered {status}: {detail}",
            provider=PROVIDER,
            status=status,
            retry_after=retry_after_header(exc.response_headers),
        )
    if isinstance(exc, httpx.TimeoutException):
        return ProviderTimeoutError(f"Graph timed out: {exc}", provider=PROVIDER)
    if isinstance(exc, httpx.HTTPError):
        return ProviderConnectionError(f"Graph unreachable: {exc!r}", provider=PROVIDER)
    if isinstance(exc, ClientAuthenticationError):
        return ProviderStatusError(f"Graph sign-in failed: {exc}", provider=PROVIDER, status=401)
    return ProviderError(f"Graph failed: {exc!r}", provider=PROVIDER, retryable=False)


@dataclass(frozen=True)
class EventContent:
    """The words of a booked appointment's calendar event."""

    subject: str
    body: str
    location: str


#: The label that marks callee words in an event body as untrusted.
CALL_EXCERPT_LABEL = "From the call (the business's words as noted by the assistant, not checked):"


def event_content(request: CallRequest, booking: Booking) -> EventContent:
    """Subject, body and location of the calendar event for ``booking``.

    Everything but the labelled excerpt comes from the errand (service, business, phone) and the
    confirmed time: the person asked for those. The booking's notes were written by the model
    from what the callee said, so they appear only under ``CALL_EXCERPT_LABEL``, bounded and
    without links (a payment link from a callee must not land in the person's calendar).
    """
    service = bounds.bounded(request.service, bounds.NAME)
    business = bounds.bounded(request.business_name, bounds.NAME)
    start = booking.start.astimezone(ZoneInfo(request.business_tz))
    end = booking.end.astimezone(ZoneInfo(request.business_tz))
    when = f"{start:%A %d %B %Y, %H:%M}–{end:%H:%M} ({request.business_tz})"
    lines = [
        f"{service.capitalize()} at {business}, {request.phone}.",
        f"When: {when}.",
        f"Booked by phone for {bounds.bounded(request.person_name, bounds.NAME)} by Concierge.",
    ]
    notes = bounds.without_links(bounds.bounded(booking.notes, bounds.NOTES))
    if notes:
        lines += ["", CALL_EXCERPT_LABEL, f"  «{notes}»"]
    return EventContent(
        subject=f"{service.capitalize()} at {business}",
        body="\n".join(lines),
        location=f"{business} ({request.phone})",
    )


class GraphCalendar:
    """Free/busy and event creation for one mailbox.

    Args:
        client: from ``build_graph_client``.
        user_id: the mailbox (``/users/{user_id}``).
        retry: how transient failures are retried (``GRAPH_RETRY``: a Retry-After longer than
            its cap is not waited out with a caller on the line; the caller retries later).
        sleep: injectable wait.
    """

    def __init__(
        self,
        client: GraphServiceClient,
        user_id: str,
        *,
        retry: Backoff = GRAPH_RETRY,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.user_id = user_id
        self.retry = retry
        self._sleep = sleep

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        async def once() -> T:
            try:
                return await fn()
            except _GRAPH_ERRORS as e:
                raise to_provider_error(e) from e

        return await retry(once, self.retry, sleep=self._sleep)

    async def busy(self, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
        """Busy spans (aware, UTC) overlapping ``start``–``end``, from ``getSchedule``."""
        body = GetSchedulePostRequestBody(
            schedules=[self.user_id],
            start_time=DateTimeTimeZone(
                date_time=start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"), time_zone="UTC"
            ),
            end_time=DateTimeTimeZone(
                date_time=end.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"), time_zone="UTC"
            ),
            availability_view_interval=15,
        )
        config: RequestConfiguration[Any] = RequestConfiguration()
        config.headers.add("Prefer", 'outlook.timezone="UTC"')
        # Read raw, like the created event: kiota's model parse of a week of free/busy took ~15 ms
        # of CPU per read, all of it blocking the event loop every live call's audio runs on.
        config.options = [ResponseHandlerOption(NativeResponseHandler())]
        builder = self.client.users.by_user_id(self.user_id).calendar.get_schedule

        async def post() -> Any:
            return _raise_for_status(await builder.post(body, request_configuration=config))

        answer = await self._call(post)
        if not isinstance(answer, dict):
            raise ProviderStatusError(
                "Graph returned a getSchedule answer that is not a JSON object", provider=PROVIDER, status=502
            )
        spans: list[tuple[datetime, datetime]] = []
        for info in _objects(answer.get("value")):
            for item in _objects(info.get("scheduleItems")):
                status = str(item.get("status") or "busy").lower()
                if status in _FREE:
                    continue
                begin, finish = _parse_graph_dt(item.get("start")), _parse_graph_dt(item.get("end"))
                if begin < end and finish > start:
                    spans.append((begin.astimezone(UTC), finish.astimezone(UTC)))
        return sorted(spans)

    async def create_event(self, *, transaction_id: str, request: CallRequest, booking: Booking) -> str:
        """Create the appointment in the person's calendar; returns its ``webLink``.

        ``transaction_id`` (the job id) makes the create idempotent: Graph returns the
        existing event instead of making a second one. The content is ``event_content``.
        """
        zone = ZoneInfo(request.business_tz)

        def dttz(dt: datetime) -> DateTimeTimeZone:
            return DateTimeTimeZone(
                date_time=dt.astimezone(zone).strftime("%Y-%m-%dT%H:%M:%S"), time_zone=zone.key
            )

        content = event_content(request, booking)
        event = Event(
            subject=content.subject,
            body=ItemBody(content_type=BodyType.Text, content=content.body),
            start=dttz(booking.start),
            end=dttz(booking.end),
            location=Location(display_name=content.location),
            transaction_id=transaction_id,
        )
        builder = self.client.users.by_user_id(self.user_id).events
        # The answer is read raw: kiota's Event parser builds a dict of several hundred field
        # lambdas per parse (5-12 ms on the event loop, a stall for every other live call), and
        # all we keep of the created event is its webLink.
        config: RequestConfiguration[Any] = RequestConfiguration()
        config.options = [ResponseHandlerOption(NativeResponseHandler())]

        async def post() -> Any:
            answer = await builder.post(event, request_configuration=config)
            return _raise_for_status(answer)

        created = await self._call(post)
        link = created.get("webLink") if isinstance(created, dict) else None
        if not isinstance(link, str) or not link:
            raise ProviderStatusError(
                "Graph created an event without a webLink", provider=PROVIDER, status=502
            )
        return link

    async def aclose(self) -> None:
        """Close the SDK's HTTP connection pool."""
        await close_graph_client(self.client)
