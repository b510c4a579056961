"""A local stand-in for the Microsoft Graph calendar endpoints Concierge uses.

``POST /v1.0/users/{id}/calendar/getSchedule`` (free/busy) and
``POST /v1.0/users/{id}/events`` (idempotent on ``transactionId``, like Graph).
msgraph-sdk sends camelCase JSON; Graph's docs show PascalCase — both are read.
A bearer token is required. Faults (429/503 with ``Retry-After``) can be
injected, including the nasty one: the create takes effect but the answer is
lost, so the client retries.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

Span = tuple[datetime, datetime]

#: A few Windows zone names Outlook uses, for tolerance.
_WINDOWS_ZONES = {
    "pacific standard time": "America/Los_Angeles",
    "eastern standard time": "America/New_York",
    "central standard time": "America/Chicago",
    "gmt standard time": "Europe/London",
    "w. europe standard time": "Europe/Berlin",
    "utc": "UTC",
}


@dataclass
class _Fault:
    status: int
    retry_after: float | None
    apply_first: bool


def _zone(name: str | None) -> ZoneInfo:
    name = (name or "UTC").strip().strip('"')
    try:
        return ZoneInfo(_WINDOWS_ZONES.get(name.lower(), name))
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _get(d: dict[str, Any], key: str) -> Any:
    """A body key in camelCase or PascalCase (or any case)."""
    for k, v in d.items():
        if k.lower() == key.lower():
            return v
    return None


def _parse_dttz(d: dict[str, Any]) -> datetime:
    dt = datetime.fromisoformat(str(_get(d, "dateTime")).rstrip("Z")[:26])
    return dt.replace(tzinfo=_zone(_get(d, "timeZone"))) if dt.tzinfo is None else dt


def _dttz(dt: datetime, zone: ZoneInfo) -> dict[str, str]:
    return {"dateTime": dt.astimezone(zone).strftime("%Y-%m-%dT%H:%M:%S.0000000"), "timeZone": str(zone.key)}


def _odata_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


class SandboxGraph:
    """The sandbox Graph server for one mailbox.

    Args:
        user_id: the mailbox id (``/users/{user_id}``); other ids get 404.
        busy: busy spans (aware datetimes) already in the calendar.
        events: pre-existing events (Graph JSON dicts), also counted as busy.
        token: the only bearer token accepted; None accepts any non-empty token.
    """

    def __init__(
        self,
        *,
        user_id: str,
        busy: list[Span] | None = None,
        events: list[dict[str, Any]] | None = None,
        token: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.user_id = user_id
        self.busy: list[Span] = list(busy or [])
        self.events: list[dict[str, Any]] = list(events or [])
        self.token = token
        self.host = host
        self.requests: list[tuple[str, str, Any]] = []
        self._faults: list[_Fault] = []
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._port = 0

    async def start(self) -> None:
        app = web.Application(middlewares=[self._gate])
        base = "/v1.0/users/{uid}"
        app.router.add_post(base + "/calendar/getSchedule", self._get_schedule)
        app.router.add_post(base + "/events", self._create_event)
        app.router.add_post(base + "/calendar/events", self._create_event)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self._port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        """The Graph base URL including ``/v1.0`` (no trailing slash)."""
        return f"http://{self.host}:{self._port}/v1.0"

    def fail_next(
        self, status: int, retry_after: float | None = None, count: int = 1, *, apply_first: bool = False
    ) -> None:
        """Answer the next ``count`` requests with ``status`` (and ``Retry-After``).

        With ``apply_first`` the request takes effect before the error is returned — the
        lost-answer case that ``transactionId`` exists for.
        """
        self._faults.extend([_Fault(status, retry_after, apply_first)] * count)

    # -- plumbing -----------------------------------------------------------------------------------

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        qs = f"?{request.query_string}" if request.query_string else ""
        self.requests.append((request.method, request.path + qs, body))
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        if not token or (self.token is not None and token != self.token):
            return _odata_error(401, "InvalidAuthenticationToken", "Access token is empty or invalid.")
        if request.match_info.get("uid") != self.user_id:  # Graph names the missing mailbox, as here
            uid = request.match_info.get("uid")
            return _odata_error(
                404,
                "Request_ResourceNotFound",
                f"Resource '{uid}' does not exist or one of its queried reference-property objects are "
                "not present.",
            )
        if self._faults:
            fault = self._faults.pop(0)
            if fault.apply_first:
                await handler(request)
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
            code = {429: "TooManyRequests", 503: "ServiceNotAvailable"}.get(fault.status, "generalException")
            return _odata_error(fault.status, code, "sandbox injected fault", headers)
        response: web.StreamResponse = await handler(request)
        return response

    def _all_busy(self) -> list[Span]:
        spans = list(self.busy)
        for e in self.events:
            if str(e.get("showAs", "busy")).lower() != "free":
                spans.append((_parse_dttz(e["start"]), _parse_dttz(e["end"])))
        return sorted(spans)

    @staticmethod
    def _out_zone(request: web.Request) -> ZoneInfo:
        prefer = request.headers.get("Prefer", "")
        for part in prefer.split(","):
            if "outlook.timezone" in part:
                return _zone(part.split("=", 1)[1])
        return ZoneInfo("UTC")

    # -- endpoints ----------------------------------------------------------------------------------

    async def _get_schedule(self, request: web.Request) -> web.Response:
        body = await request.json()
        start, end = _parse_dttz(_get(body, "startTime")), _parse_dttz(_get(body, "endTime"))
        interval = int(_get(body, "availabilityViewInterval") or 30)
        zone = self._out_zone(request)
        spans = [(s, e) for s, e in self._all_busy() if s < end and e > start]
        # One mark per slot a span touches (not every slot against every span: with a week of
        # 15-minute slots and the bookings of a 100-call bench, that was ~40 ms a request).
        step = timedelta(minutes=interval)
        slots = -(-(end - start) // step)
        view = ["0"] * slots
        for s, e in spans:
            first = max(0, (s - start) // step)
            last = min(slots, -(-(e - start) // step))
            view[first:last] = ["2"] * (last - first)
        items = [
            {"isPrivate": False, "status": "busy", "start": _dttz(s, zone), "end": _dttz(e, zone)}
            for s, e in spans
        ]
        value = [
            {"scheduleId": sid, "availabilityView": "".join(view), "scheduleItems": items}
            for sid in (_get(body, "schedules") or [self.user_id])
        ]
        return web.json_response({"value": value})

    async def _create_event(self, request: web.Request) -> web.Response:
        body = await request.json()
        txn = _get(body, "transactionId")
        if txn:
            for existing in self.events:
                if existing.get("transactionId") == txn:
                    return web.json_response(existing, status=201)
        if not _get(body, "start") or not _get(body, "end"):
            return _odata_error(400, "ErrorInvalidRequest", "start and end are required")
        event_id = f"AAMkSandbox{next(self._ids):04d}"
        event = {
            "id": event_id,
            "subject": _get(body, "subject") or "",
            "body": _get(body, "body") or {},
            "start": _get(body, "start"),
            "end": _get(body, "end"),
            "location": _get(body, "location") or {},
            "transactionId": txn,
            "showAs": _get(body, "showAs") or "busy",
            "webLink": f"https://outlook.office365.com/owa/?itemid={event_id}&exvsurl=1&path=/calendar/item",
        }
        self.events.append(event)
        return web.json_response(event, status=201)
