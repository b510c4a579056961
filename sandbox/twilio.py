"""Sandbox Twilio: the Calls REST API, dialling with signed callbacks, media streams, a scripted callee.

Why: the product places calls with the real ``twilio`` SDK (``client.api.base_url`` pointed here),
answers signed webhooks and a media-stream websocket exactly as it would with Twilio, and the
scripted callee (``sandbox.callee``) plays the business. Tests program what each number does.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, date, datetime
from enum import StrEnum
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from sandbox.callee import CalleeScript
from sandbox.frame_clock import FrameClock
from sandbox.twilio_call import FINAL_STATUSES, Behavior, CallRunner, Program, SandboxCall, new_sid

__all__ = ["Behavior", "LostAnswer", "SandboxCall", "SandboxTwilio"]

_API = "/2010-04-01/Accounts/{account}/Calls"
_ERRORS = {
    400: (21201, "Bad Request"),
    401: (20003, "Authenticate"),
    404: (20404, "The requested resource was not found"),
    429: (20429, "Too Many Requests"),
    500: (20500, "Internal Server Error"),
    503: (20503, "Service Unavailable"),
}


class LostAnswer(StrEnum):
    """How a create's answer is lost after the call was really created (``lose_next_create_answer``)."""

    HANG = "hang"  # never answer: the client times out (answer held until ``stop``)
    DROP = "drop"  # close the connection without an answer: a transport error


def _error(status: int, message: str | None = None) -> web.Response:
    code, default = _ERRORS.get(status, (20500, "Error"))
    body = {
        "code": code,
        "message": message or default,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)


class SandboxTwilio:
    """Local Twilio: REST on 127.0.0.1, one :class:`CallRunner` task per created call."""

    def __init__(
        self, *, account_sid: str, auth_token: str, pace: float = 1.0, ring_seconds: float = 0.2
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.pace = pace
        self._clock = FrameClock(pace)  # one audio clock for all of this server's media streams
        self.ring_seconds = ring_seconds
        self.calls: dict[str, SandboxCall] = {}
        self.requests: list[tuple[str, str, dict[str, list[str]], int]] = []  # method, path, form, status
        self.base_url = ""
        self._programs: dict[str, Program] = {}
        #: What a number nobody programmed does (None: answer with an empty script).
        self.default_program: Program | None = None
        self._fail_next: list[int] = []
        self._lose_next: list[LostAnswer] = []
        self.lost_answers: list[str] = []  # sids of calls whose create answer was lost
        self.answer_lost = asyncio.Event()  # set each time a create answer is lost
        self._release = asyncio.Event()  # frees held answers at stop
        self._new_calls: asyncio.Queue[SandboxCall] = asyncio.Queue()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind 127.0.0.1 on a free port and open the client session used for callbacks/streams."""
        app = web.Application()
        app.router.add_post(_API.format(account="{account}") + ".json", self._create)
        app.router.add_get(_API.format(account="{account}") + ".json", self._list)
        app.router.add_get(_API.format(account="{account}") + "/{sid}.json", self._fetch)
        app.router.add_post(_API.format(account="{account}") + "/{sid}.json", self._update)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        # Every live call holds one media-stream websocket on this session: no pool limit
        # (aiohttp's default of 100 would make the 101st call wait and end before it began).
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30), connector=aiohttp.TCPConnector(limit=0)
        )

    async def stop(self) -> None:
        """Hang up every live call, cancel every task, close every socket."""
        self._release.set()
        for call in self.calls.values():
            call.hangup_requested.set()
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._clock.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> SandboxTwilio:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def program(
        self,
        to_number: str,
        behavior: Behavior = Behavior.ANSWER,
        script: CalleeScript | None = None,
        *,
        drop_stream_after: float | None = None,
        amd: str | None = None,
    ) -> None:
        """Decide what happens when ``to_number`` is dialled (default: ANSWER with an empty script).

        VOICEMAIL answers, reports ``machine_end_beep`` to async AMD (unless ``amd`` names another result)
        and plays ``script`` as the greeting. A script with a ``Beep`` gets the AMD result right
        after the beep, as Twilio's ``DetectMessageEnd`` does, and records what follows it
        (``SandboxCall.recorded``); without one, the result comes just after answering.
        """
        if amd is None:
            amd = "machine_end_beep" if behavior is Behavior.VOICEMAIL else "human"
        self._programs[to_number] = Program(behavior, script, drop_stream_after, amd)

    def fail_next_create(self, status: int = 500) -> None:
        """The next Calls.json POST answers ``status`` with a Twilio error body."""
        self._fail_next.append(status)

    def lose_next_create_answer(self, how: LostAnswer = LostAnswer.HANG) -> None:
        """The next Calls.json POST creates the call (it rings as programmed) but its answer is lost.

        The product then cannot tell from the create whether the call exists: the fault that a
        blind retry turns into a second call.
        """
        self._lose_next.append(how)

    def call_in(
        self, from_number: str, to_number: str, voice_url: str, script: CalleeScript | None = None
    ) -> SandboxCall:
        """``from_number`` calls ``to_number`` (ours): as Twilio does, POST the number's signed Voice
        URL (``CallStatus=ringing``, ``Direction=inbound``) and run the TwiML it answers, the
        stream's far end being ``script`` (the caller). Await ``call.done`` for the end."""
        call = SandboxCall(
            sid=new_sid("CA"),
            account_sid=self.account_sid,
            to=to_number,
            from_=from_number,
            params={"Url": [voice_url]},
            program=Program(Behavior.ANSWER, script),
            direction="inbound",
        )
        self.calls[call.sid] = call
        self._start(call)
        return call

    def _start(self, call: SandboxCall) -> None:
        assert self._http is not None
        runner = CallRunner(
            call, http=self._http, auth_token=self.auth_token, pace=self.pace, ring_seconds=self.ring_seconds,
            clock=self._clock,
        )  # fmt: skip
        task = asyncio.get_running_loop().create_task(runner.run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_for_call(self, timeout: float = 10) -> SandboxCall:  # noqa: ASYNC109 (contract)
        """The next created call (in creation order)."""
        async with asyncio.timeout(timeout):
            return await self._new_calls.get()

    # ------------------------------------------------------------------ REST

    def _authorized(self, request: web.Request) -> bool:
        try:
            auth = aiohttp.BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            return False
        return (
            auth.login == self.account_sid
            and auth.password == self.auth_token
            and request.match_info["account"] == self.account_sid
        )

    def _calls_uri(self) -> str:
        return _API.format(account=self.account_sid)

    async def _form(self, request: web.Request) -> dict[str, list[str]]:
        form: dict[str, list[str]] = {}
        for key, value in (await request.post()).items():
            form.setdefault(key, []).append(str(value))
        return form

    def _log(self, request: web.Request, form: dict[str, list[str]], status: int) -> None:
        self.requests.append((request.method, request.path, form, status))

    async def _create(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        if not self._authorized(request):
            self._log(request, form, 401)
            return _error(401)
        if self._fail_next:
            status = self._fail_next.pop(0)
            self._log(request, form, status)
            return _error(status)
        to, from_ = form.get("To", [""])[0], form.get("From", [""])[0]
        if not to or not from_ or not (form.get("Twiml") or form.get("Url")):
            self._log(request, form, 400)
            return _error(400, "A 'To', 'From' and 'Url' or 'Twiml' are required")
        call = SandboxCall(
            sid=new_sid("CA"),
            account_sid=self.account_sid,
            to=to,
            from_=from_,
            params=form,
            program=self._programs.get(to) or self.default_program or Program(),
            twiml=form["Twiml"][0] if form.get("Twiml") else None,
        )
        self.calls[call.sid] = call
        self._start(call)
        self._new_calls.put_nowait(call)
        if self._lose_next:
            return await self._lose_answer(request, form, call, self._lose_next.pop(0))
        self._log(request, form, 201)
        return web.json_response(call.to_json(self._calls_uri()), status=201)

    async def _lose_answer(
        self, request: web.Request, form: dict[str, list[str]], call: SandboxCall, how: LostAnswer
    ) -> web.Response:
        self._log(request, form, 0)
        self.lost_answers.append(call.sid)
        self.answer_lost.set()
        if how is LostAnswer.DROP:
            if request.transport is not None:
                request.transport.close()
        else:
            await self._release.wait()
        return web.json_response(call.to_json(self._calls_uri()), status=201)  # nobody reads it

    async def _list(self, request: web.Request) -> web.Response:
        """Read multiple Call resources: ``To``, ``From``, ``Status``, ``StartTime`` (``=``, ``<``, ``>``).

        Newest first, paged with ``PageSize`` / ``Page`` in Twilio's list envelope. A ``StartTime``
        filter never matches a call that has not started dialling (its ``start_time`` is empty).
        """
        if not self._authorized(request):
            self._log(request, {}, 401)
            return _error(401)
        query = request.query
        try:
            keys = ("StartTime", "StartTime<", "StartTime>")
            tests = [_start_test(key, query[key]) for key in keys if key in query]
            page_size = max(1, min(1000, int(query.get("PageSize", "50"))))
            page = max(0, int(query.get("Page", "0")))
        except ValueError:
            self._log(request, {}, 400)
            return _error(400, "Invalid filter or paging value")
        calls = [
            c
            for c in sorted(self.calls.values(), key=lambda c: c.created_at, reverse=True)
            if query.get("To", c.to) == c.to
            and query.get("From", c.from_) == c.from_
            and query.get("Status", c.status) == c.status
            and all(test(c.started_at) for test in tests)
        ]
        start = page * page_size
        chunk = calls[start : start + page_size]
        filters = {k: v for k, v in query.items() if k not in ("Page", "PageSize", "PageToken")}

        def uri(n: int) -> str:
            return f"{self._calls_uri()}.json?" + urlencode({**filters, "PageSize": page_size, "Page": n})

        self._log(request, {k: [v] for k, v in query.items()}, 200)
        return web.json_response({
            "calls": [c.to_json(self._calls_uri()) for c in chunk],
            "end": start + max(len(chunk) - 1, 0),
            "first_page_uri": uri(0),
            "next_page_uri": uri(page + 1) if start + page_size < len(calls) else None,
            "page": page,
            "page_size": page_size,
            "previous_page_uri": uri(page - 1) if page > 0 else None,
            "start": start,
            "uri": uri(page),
        })  # fmt: skip

    def _find(self, request: web.Request) -> SandboxCall | None:
        return self.calls.get(request.match_info["sid"])

    async def _fetch(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            self._log(request, {}, 401)
            return _error(401)
        call = self._find(request)
        status = 200 if call else 404
        self._log(request, {}, status)
        if call is None:
            return _error(404)
        return web.json_response(call.to_json(self._calls_uri()))

    async def _update(self, request: web.Request) -> web.Response:
        form = await self._form(request)
        if not self._authorized(request):
            self._log(request, form, 401)
            return _error(401)
        call = self._find(request)
        if call is None:
            self._log(request, form, 404)
            return _error(404)
        wanted = form.get("Status", [""])[0]
        if wanted in ("completed", "canceled") and call.status not in FINAL_STATUSES:
            call.hangup_requested.set()
        for twiml in form.get("Twiml", []):
            call.twiml_updates.append(twiml)
            call.callee.hear_digits(_play_digits(twiml))
        self._log(request, form, 200)
        return web.json_response(call.to_json(self._calls_uri()))


def _start_test(key: str, value: str) -> Callable[[datetime | None], bool]:
    """One ``StartTime`` filter: a ``YYYY-MM-DD`` date (UTC) or a full UTC date-time as the SDK sends.

    ``StartTime`` alone means "on that day" (or at that instant); ``StartTime>`` on or after and
    ``StartTime<`` on or before (a bare date stands for its midnight).
    """
    day: date | None = None
    try:
        at = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        day = date.fromisoformat(value)
        at = datetime(day.year, day.month, day.day, tzinfo=UTC)

    def test(started: datetime | None) -> bool:
        if started is None:
            return False
        started = started.replace(microsecond=0)
        if key == "StartTime>":
            return started >= at
        if key == "StartTime<":
            return started <= at
        return started.date() == day if day is not None else started == at

    return test


def _play_digits(twiml: str) -> str:
    """Digits of ``<Play digits="...">`` (``w`` = wait is dropped)."""
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError:
        return ""
    digits = "".join(play.get("digits", "") for play in root.iter("Play"))
    return re.sub(r"[^0-9A-D*#]", "", digits)
