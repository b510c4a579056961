"""``concierge playground``: try Concierge in a browser, playing the business yourself.

One page on loopback shows the three things a newcomer wants to see at once: the
chat with the bot (as in Telegram), the live phone call, and the person's
calendar with each turn's latency. Everything goes through the real product
started against the sandbox world (``demo.world.SandboxWorld``): the chat pane
writes to the sandbox Telegram, which python-telegram-bot polls; the lines you
type as the receptionist become sandbox speech on the Twilio media stream, which
the product hears through its speech-to-text like any scripted callee; what the
assistant says is what the sandbox Twilio decodes from the audio the product
sent. Nothing takes a shortcut into the product's internals except reading its
job store for the page (errand states and per-turn timings).

With ``ANTHROPIC_API_KEY`` set the conversation and intake models are real
Claude (telephony, speech, calendar and chat stay in the sandbox); without it
the sandbox model answers. The page says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from aiohttp import WSMsgType, web

from concierge.app import Concierge, bind
from concierge.clock import OffsetClock
from concierge.settings import Settings
from demo.runner import MESSAGE
from demo.world import DEMO_TELEGRAM_USER, SandboxWorld, sandbox_graph_credential
from sandbox import scenarios
from sandbox.callee import HangUp, Press, Say
from sandbox.twilio import Behavior, SandboxCall
from sandbox.twilio_call import FINAL_STATUSES, Program
from storage.models import JobState, Turn

STATIC = Path(__file__).with_name("playground")
DEFAULT_PORT = 8321
#: The person in the chat pane (the sandbox Telegram user the demo writes as).
USER = DEMO_TELEGRAM_USER
#: "you": the page's typed lines are the callee; otherwise a scenario's scripted receptionist.
YOU = "you"
#: A person typing needs longer than a receptionist talking before the assistant asks
#: "are you still there?": the product's silence timeout, for the playground only.
SILENCE_TIMEOUT_SECONDS = 45.0
_POLL_SECONDS = 0.1
_DTMF_KEYS = frozenset("0123456789*#")
_SANDBOXED_URLS = (
    "telegram_api_base_url",
    "slack_api_base_url",
    "twilio_api_base_url",
    "deepgram_http_url",
    "deepgram_ws_url",
    "graph_base_url",
)


@dataclass(frozen=True)
class ModelChoice:
    """Which conversation and intake model answers, and the settings that select it.

    Attributes:
        real: True when the model is reached outside the sandbox (a key was brought).
        label: what the page shows.
        overrides: settings fields to apply on top of the sandbox world's.
    """

    real: bool
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)


def model_choice(base: Settings) -> ModelChoice:
    """Real Claude when ``ANTHROPIC_API_KEY`` is set, the sandbox model otherwise.

    Why only the model: it is the one service a newcomer can try for real without cost
    or risk to anyone else; calls, speech, calendar and chat stay in the sandbox. An
    ``ANTHROPIC_BASE_URL`` set alongside the key (a gateway) is honoured; set alone it is
    ignored, as the sandbox model needs no address.
    """
    if not base.anthropic_api_key:
        return ModelChoice(
            False, f"sandbox model (stand-in for {base.anthropic_model}; no ANTHROPIC_API_KEY)"
        )
    url = base.anthropic_base_url
    where = "" if "anthropic_base_url" not in base.model_fields_set else f" via {url}"
    return ModelChoice(
        True,
        f"Claude {base.anthropic_model}{where} (your ANTHROPIC_API_KEY)",
        {"anthropic_api_key": base.anthropic_api_key, "anthropic_base_url": url},
    )


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def sandbox_problems(settings: Settings, choice: ModelChoice) -> list[str]:
    """Why these settings could reach a real outside service (empty: everything is sandboxed).

    The playground must never place a real call, send a real chat message or write a
    real calendar: every such address must be loopback. Only the model may be remote,
    and only when a key was brought for it.
    """
    names = list(_SANDBOXED_URLS)
    if not choice.real:
        names.append("anthropic_base_url")
    return [
        f"{name.upper()} is {getattr(settings, name)!r}, not the local sandbox"
        for name in names
        if not _is_loopback(str(getattr(settings, name)))
    ]


def _local(dt: datetime, zone: ZoneInfo) -> str:
    return dt.astimezone(zone).strftime("%a %d %b %H:%M")


def _graph_time(value: dict[str, str]) -> datetime:
    """A Graph ``dateTimeTimeZone`` (as the sandbox stores it) as an aware datetime."""
    return datetime.fromisoformat(value["dateTime"]).replace(tzinfo=ZoneInfo(value.get("timeZone") or "UTC"))


def _turn_latency(turn: Turn) -> dict[str, Any] | None:
    """End of callee speech → first model token → first audio out, in ms from the speech end."""
    lat = turn.latency
    if lat is None:
        return None
    start = lat.speech_end if lat.speech_end is not None else lat.stt_final
    if start is None:
        return None

    def ms(at: float | None) -> float | None:
        return None if at is None else round((at - start) * 1000.0, 1)

    return {
        "stt_final_ms": ms(lat.stt_final),
        "first_token_ms": ms(lat.llm_first_token),
        "first_audio_ms": ms(lat.first_audio_out),
    }


class Playground:
    """The page's server: one sandbox world, one product, and the websocket that shows both."""

    def __init__(self, world: SandboxWorld, app: Concierge, clock: OffsetClock, choice: ModelChoice) -> None:
        self.world = world
        self.app = app
        self.clock = clock
        self.choice = choice
        self.zone = ZoneInfo(app.settings.person_timezone)
        self.callee = YOU
        self.notices: list[str] = []
        self._chat: dict[int, dict[str, Any]] = {}  # message id → bubble, in order of appearance
        self._sent_seen = 0
        self._docs = 0
        self._lines: dict[str, list[dict[str, str]]] = {}  # call sid → lines in the order they happened
        self._counts: dict[tuple[str, str], int] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._last = ""
        self._changed = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self.web = web.Application()
        self.web.router.add_get("/", self._index)
        self.web.router.add_get("/ws", self._ws)
        self.web.router.add_static("/static", STATIC)
        today = datetime.now(self.zone).date()
        # The calendar starts with the demo's clash (next Tuesday 1:30-3 PM): offer Tuesday at
        # 2 PM to see the assistant refuse a slot, or add your own busy times.
        self.world.graph.busy = list(scenarios.build("clash", today=today, tz=str(self.zone)).busy)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for ws in list(self._sockets):
            await ws.close()

    # ------------------------------------------------------------------ what the page shows

    async def state(self) -> dict[str, Any]:
        """Everything the page renders, as one JSON-able snapshot."""
        self._read_chat()
        calls = sorted(self.world.twilio.calls.values(), key=lambda c: c.created_at)
        for call in calls:
            self._read_call(call)
        jobs = await self.app.store.list(user_id=str(USER), limit=10)
        turns: list[dict[str, Any]] = []
        for job in reversed(jobs):
            for t in await self.app.store.turns(job.id):
                lat = _turn_latency(t)
                if lat is not None:
                    turns.append({"job": job.id, "speaker": str(t.speaker), "text": t.text, **lat})
        live = self._live_call()
        return {
            "model": {"real": self.choice.real, "label": self.choice.label},
            "message": MESSAGE,
            "chat": list(self._chat.values()),
            "callee": self.callee,
            "callees": [{"name": YOU, "description": "you type the receptionist's lines"}]
            + [
                {"name": sc.name, "description": sc.description}
                for sc in (scenarios.build(n, today=date.today()) for n in scenarios.NAMES)
            ],
            "calls": [
                {
                    "sid": c.sid,
                    "to": c.to,
                    "status": c.status,
                    "ended_by": c.ended_by,
                    "live": c is live,
                    "lines": self._lines.get(c.sid, []),
                    "hearing": c.callee.hearing if c.status not in FINAL_STATUSES else "",
                    "heard": [t.to_json() for t in c.heard_turns],
                }
                for c in calls
            ],
            "jobs": [{"id": j.id, "state": str(j.state), "attempts": j.attempts} for j in jobs],
            "calendar": self._calendar(),
            "latency": turns,
            "notices": self.notices[-5:],
        }

    def _read_chat(self) -> None:
        sent = self.world.telegram.sent
        for s in sent[self._sent_seen :]:
            if s.chat_id != USER:
                continue
            buttons = [{"label": label, "data": data} for label, data in s.buttons]
            if s.method == "editMessageText" and s.message_id in self._chat:
                bubble = self._chat[s.message_id]
                bubble.update(text=s.text or "", buttons=buttons, edited=bubble["edited"] + 1)
            elif s.method == "sendDocument" and s.document:
                name, content = s.document
                self._chat[s.message_id] = {
                    "id": s.message_id, "from": "bot", "text": s.caption or "", "buttons": [],
                    "edited": 0, "file": {"name": name, "text": content.decode("utf-8", "replace")},
                }  # fmt: skip
            else:
                self._chat[s.message_id] = {
                    "id": s.message_id, "from": "bot", "text": s.text or "", "buttons": buttons, "edited": 0,
                }  # fmt: skip
        self._sent_seen = len(sent)

    def _read_call(self, call: SandboxCall) -> None:
        """Interleave what the callee said and heard in the order the poller saw them happen."""
        lines = self._lines.setdefault(call.sid, [])
        for who, said in (("callee", call.said), ("assistant", call.heard)):
            seen = self._counts.get((call.sid, who), 0)
            lines += [{"who": who, "text": text} for text in said[seen:]]
            self._counts[(call.sid, who)] = len(said)

    def _live_call(self) -> SandboxCall | None:
        live = [c for c in self.world.twilio.calls.values() if c.status not in FINAL_STATUSES]
        return max(live, key=lambda c: c.created_at) if live else None

    def _calendar(self) -> list[dict[str, Any]]:
        """The busy times (editable) and the events the product created, in time order."""
        items = [self._item(f"b{i}", "Busy", s, e, None) for i, (s, e) in enumerate(self.world.graph.busy)]
        for ev in self.world.graph.events:
            start, end = _graph_time(ev["start"]), _graph_time(ev["end"])
            items.append(
                self._item(f"e{ev['id']}", ev.get("subject") or "Event", start, end, ev.get("webLink"))
            )
        return sorted(items, key=lambda i: str(i["at"]))

    def _item(
        self, item: str, title: str, start: datetime, end: datetime, link: str | None
    ) -> dict[str, Any]:
        local_end = end.astimezone(self.zone)
        return {
            "id": item,
            "title": title,
            "start": _local(start, self.zone),
            "end": f"{local_end:%H:%M}",
            "at": start.astimezone(UTC).isoformat(),
            "link": link,
        }

    # ------------------------------------------------------------------ polling

    async def _poll_forever(self) -> None:
        while True:
            await self._tick()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_POLL_SECONDS):
                    await self._changed.wait()
            self._changed.clear()

    async def _tick(self) -> None:
        await self._drive_jobs()
        snapshot = json.dumps(await self.state())
        if snapshot != self._last:
            self._last = snapshot
            for ws in list(self._sockets):
                with contextlib.suppress(ConnectionError):
                    await ws.send_str(snapshot)

    async def _drive_jobs(self) -> None:
        """Fast-forward the product's clock to a queued errand's next attempt (as the demo does).

        Why: the errand waits for the shop's opening hours; nobody trying the playground in the
        evening wants to wait until morning. Scripted receptionists are also set per attempt here.
        """
        for job in await self.app.store.list(user_id=str(USER), limit=10):
            if job.state is not JobState.QUEUED:
                continue
            self._program(job.attempts + 1)
            if job.next_attempt_at > self.clock.now():
                local = job.next_attempt_at.astimezone(ZoneInfo(job.request.business_tz))
                self.notices.append(
                    f"The shop is closed now: fast-forwarded to {local:%a %d %b %H:%M} its time."
                )
                self.clock.jump_to(job.next_attempt_at)
                self.app.dispatcher.wake()

    def _program(self, attempt: int) -> None:
        """What the next call's callee does: nothing scripted (you type), or a scenario's receptionist."""
        if self.callee == YOU:
            self.world.twilio.default_program = None
            return
        sc = scenarios.build(self.callee, today=datetime.now(self.zone).date(), tz=str(self.zone))
        a = sc.attempt(attempt)
        amd = a.amd or ("machine_end_beep" if a.behavior is Behavior.VOICEMAIL else "human")
        self.world.twilio.default_program = Program(a.behavior, a.script, amd=amd)

    # ------------------------------------------------------------------ what the page does

    async def handle(self, msg: dict[str, Any]) -> str | None:
        """One action from the page; returns a notice for the page when it cannot be done."""
        kind = msg.get("type")
        tg = self.world.telegram
        if kind == "chat":
            text = str(msg.get("text", "")).strip()
            if not text:
                return None
            mid = tg.user_message(USER, USER, text)
            self._chat[mid] = {"id": mid, "from": "you", "text": text, "buttons": [], "edited": 0}
        elif kind == "press":
            mid = int(msg.get("message", 0))
            if mid not in self._chat:
                return "That message is gone."
            tg.press_button(USER, USER, mid, str(msg.get("data", "")))
        elif kind in ("say", "dtmf", "hangup"):
            return self._on_line(kind, str(msg.get("text", "")).strip())
        elif kind == "callee":
            name = str(msg.get("name", YOU))
            if name != YOU and name not in scenarios.NAMES:
                return f"Unknown callee {name!r}."
            self.callee = name
            self._program(1)
        elif kind == "busy_add":
            return self._add_busy(msg)
        elif kind == "busy_remove":
            return self._remove(str(msg.get("id", "")))
        return None

    def _on_line(self, kind: str, text: str) -> str | None:
        call = self._live_call()
        if call is None:
            return "No call in progress: the errand's call starts after Confirm."
        if call.program.script is not None:
            return (
                f"This call is played by the scripted receptionist ({self.callee}); pick 'you' for the next."
            )
        steps = call.callee.script.steps  # the callee reads its script frame by frame: appended = said next
        if kind == "say" and text:
            steps.append(Say(text))
        elif kind == "dtmf":
            if text not in _DTMF_KEYS:
                return f"{text!r} is not a phone key."
            steps.append(Press(text))
        elif kind == "hangup":
            steps.append(HangUp())
        return None

    def _add_busy(self, msg: dict[str, Any]) -> str | None:
        try:
            day = date.fromisoformat(str(msg["date"]))
            start = datetime.combine(day, time.fromisoformat(str(msg["start"])), self.zone)
            end = datetime.combine(day, time.fromisoformat(str(msg["end"])), self.zone)
        except (KeyError, ValueError):
            return "A busy time needs a date, a start and an end."
        if end <= start:
            return "The end must be after the start."
        self.world.graph.busy.append((start, end))
        return None

    def _remove(self, item: str) -> str | None:
        graph = self.world.graph
        if item.startswith("b") and item[1:].isdigit() and int(item[1:]) < len(graph.busy):
            del graph.busy[int(item[1:])]
        else:
            graph.events[:] = [e for e in graph.events if f"e{e['id']}" != item]
        return None

    # ------------------------------------------------------------------ HTTP

    async def _index(self, _request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20)
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await ws.send_str(json.dumps(await self.state()))
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    action = json.loads(msg.data)
                except ValueError:
                    continue
                problem = await self.handle(action) if isinstance(action, dict) else None
                if problem:
                    self.notices.append(problem)
                self._changed.set()
        finally:
            self._sockets.discard(ws)
        return ws


@contextlib.asynccontextmanager
async def open_playground(
    *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, base: Settings | None = None
) -> AsyncIterator[tuple[Playground, str]]:
    """Start the sandbox, the product and the page server; yields the playground and its URL.

    Raises:
        SystemExit: the settings would reach a real outside service (see ``sandbox_problems``).
    """
    base = base or Settings()
    choice = model_choice(base)
    overrides: dict[str, Any] = {
        "silence_timeout_seconds": SILENCE_TIMEOUT_SECONDS,
        "telegram_allowed_users": [str(USER)],
        **choice.overrides,
    }
    world = await SandboxWorld(pace=1.0, base=base).start()
    app: Concierge | None = None
    runner: web.AppRunner | None = None
    pg: Playground | None = None
    try:
        sock = bind("127.0.0.1", 0)
        own = sock.getsockname()[1]
        settings = world.settings(public_base_url=f"http://127.0.0.1:{own}", port=own, **overrides)
        problems = sandbox_problems(settings, choice)
        if problems:
            sock.close()
            raise SystemExit("playground refused: " + "; ".join(problems))
        clock = OffsetClock()
        app = Concierge(
            settings, clock=clock, graph_credential=sandbox_graph_credential(), owner=f"playground:{own}"
        )
        await app.start(sock)
        pg = Playground(world, app, clock, choice)
        runner = web.AppRunner(pg.web, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        pg.start()
        yield pg, f"http://{shown}:{bound}/"
    finally:
        if pg is not None:
            await pg.stop()
        if runner is not None:
            await runner.cleanup()
        if app is not None:
            await app.stop(grace=2)
        await world.stop()


async def serve(host: str, port: int) -> int:
    """``concierge playground``: run until interrupted, printing the URL."""
    if not _is_loopback(f"http://[{host}]/" if ":" in host else f"http://{host}/"):
        print(
            f"warning: --host {host} exposes the playground (and its sandbox chat) beyond this machine",
            file=sys.stderr,
        )
    async with open_playground(host=host, port=port) as (pg, url):
        print(f"Concierge playground: {url}")
        print(f"model: {pg.choice.label}")
        print("Everything else runs in the local sandbox: no calls are placed. Ctrl-C stops.", flush=True)
        stop = asyncio.Event()
        # A service manager's stop ends it as cleanly as Ctrl-C.
        with contextlib.suppress(NotImplementedError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
    return 0
