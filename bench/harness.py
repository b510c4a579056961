"""The benchmark's moving parts: the sandbox child process, the Concierge under test, one round.

The Concierge runs in this process exactly as ``concierge serve`` builds it (aiohttp routes,
dispatcher, call sessions, SQLite store); only the chat front ends are left out (errands go straight
to ``dispatcher.submit``). Everything outside it runs in ``bench.sandbox_proc`` on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psutil

from concierge import warmup
from concierge.app import Concierge, bind
from concierge.clock import SystemClock
from concierge.settings import Settings
from demo.world import sandbox_graph_credential
from storage.models import (
    BookingWindow,
    CallRequest,
    ChatOrigin,
    Job,
    JobState,
    Platform,
    Speaker,
    TurnLatency,
)
from telephony.frame_stats import CallMetrics, FrameStats

#: How the sandbox world is spread over child processes (``--shards``): service groups per process.
SHARDS: dict[int, list[str]] = {
    1: ["twilio,deepgram,anthropic,graph"],
    2: ["twilio", "deepgram,anthropic,graph"],
    3: ["twilio", "deepgram", "anthropic,graph"],
}

#: Figures taken from published provider latencies (see bench/README.md for the sources).
PUBLISHED = {"stt_latency_ms": 250.0, "llm_ttft_ms": 600.0, "tts_ttfb_ms": 200.0}
#: Delay on every Flux message. Deepgram publishes Flux's end-of-turn latency (~260 ms) from the
#: end of speech to the event's receipt, i.e. turn decision and delivery together; the sandbox's
#: silence rule already takes 280 ms at ``eot_threshold`` 0.7, so nothing is added on top.
PUBLISHED_FLUX_STT_MS = 0.0


def published(stt_model: str | None = None) -> dict[str, float]:
    """The provider delays ``--provider-latency published`` replays for this STT model.

    ``None`` is the product's default model (Flux). Nova keeps ``PUBLISHED``'s 250 ms: its turn
    end is the sandbox's fixed endpointing silence, and the delay stands for the transcription.
    """
    if stt_model is None or stt_model.startswith("flux"):
        return {**PUBLISHED, "stt_latency_ms": PUBLISHED_FLUX_STT_MS}
    return dict(PUBLISHED)


class SandboxProcess:
    """``python -m bench.sandbox_proc`` as a child: start, ask for stats, stop."""

    def __init__(self, *, numbers: int, pace: float, latencies: dict[str, float], services: str = "") -> None:
        self.args = ["--numbers", str(numbers), "--pace", str(pace)]
        if services:
            self.args += ["--services", services]
        for key, value in latencies.items():
            self.args += [f"--{key.replace('_', '-')}", str(value)]
        self.proc: asyncio.subprocess.Process | None = None
        self.hello: dict[str, Any] = {}

    async def start(self) -> dict[str, Any]:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.sandbox_proc", *self.args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self.hello = await self._read()
        return self.hello

    async def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        async with asyncio.timeout(60):
            line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the sandbox process exited before answering")
        result: dict[str, Any] = json.loads(line)
        return result

    async def command(self, name: str) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(name.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self._read()

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            async with asyncio.timeout(15):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


_PER_PROCESS = ("services", "loop_lag_ms_p99", "loop_lag_ms_max", "cpu_ms", "gc_pause_ms_max")


class SandboxShards:
    """The sandbox world spread over several ``SandboxProcess`` children, one per service group.

    Answers like one child: ``start()`` merges the hellos (each child's endpoints), ``stats``
    reports the worst loop lag and the summed CPU of all children, plus each child's own line.
    """

    def __init__(self, *, numbers: int, pace: float, latencies: dict[str, float], shards: int = 3) -> None:
        self.children = [
            SandboxProcess(numbers=numbers, pace=pace, latencies=latencies, services=group)
            for group in SHARDS[shards]
        ]

    async def start(self) -> dict[str, Any]:
        hellos = await asyncio.gather(*(c.start() for c in self.children))
        hello: dict[str, Any] = {**hellos[0], "endpoints": {}}
        for h in hellos:
            hello["endpoints"].update(h["endpoints"])
            if "deepgram_http_url" in h:
                hello["deepgram_http_url"] = h["deepgram_http_url"]
        return hello

    async def command(self, name: str) -> dict[str, Any]:
        answers = await asyncio.gather(*(c.command(name) for c in self.children))
        if name != "stats":
            return {"ok": all(a.get("ok") for a in answers)}
        worst = max(answers, key=lambda a: a.get("loop_lag_ms_p99", 0.0))
        return {
            "loop_lag_ms_p50": max(a["loop_lag_ms_p50"] for a in answers),
            "loop_lag_ms_p99": worst["loop_lag_ms_p99"],
            "loop_lag_ms_max": max(a["loop_lag_ms_max"] for a in answers),
            "cpu_ms": round(sum(a["cpu_ms"] for a in answers), 1),
            "rss_mb": round(sum(a["rss_mb"] for a in answers), 1),
            "processes": [{k: a[k] for k in _PER_PROCESS} for a in answers],
        }

    async def heard(self) -> list[dict[str, Any]]:
        """Every call of the round as the sandbox's ear heard it (``sandbox.ear.HeardTurn``)."""
        answers = await asyncio.gather(*(c.command("heard") for c in self.children))
        return [call for a in answers for call in a["calls"]]

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.children))


def bench_settings(
    hello: dict[str, Any],
    *,
    port: int,
    db_path: str,
    stt_model: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Settings pointing the product at the child's services; no chat front ends."""
    ep = hello["endpoints"]
    creds = dict(hello["creds"])
    for chat_key in ("telegram_bot_token", "slack_bot_token", "slack_signing_secret"):
        creds[chat_key] = ""
    update: dict[str, Any] = {
        **creds,
        "twilio_api_base_url": ep["twilio"],
        "public_base_url": f"http://127.0.0.1:{port}",
        "host": "127.0.0.1",
        "port": port,
        "deepgram_http_url": hello["deepgram_http_url"],
        "deepgram_ws_url": ep["deepgram"],
        "anthropic_base_url": ep["anthropic"],
        "graph_base_url": ep["graph"],
        "database_url": f"sqlite:///{db_path}",
        "default_business_hours": "mon-sun 00:00-24:00",
        "max_concurrent_calls": 10_000,
        "max_queued_per_user": 10_000,
        "errands_per_user_per_hour": 10_000,
        "max_calls_per_number_per_day": 10_000,  # rounds re-dial the same numbers
        "silence_timeout_seconds": 6.0,
        "person_timezone": "America/Los_Angeles",
    }
    if stt_model:
        update["deepgram_stt_model"] = stt_model
    update.update(overrides or {})
    base = Settings(_env_file=None)  # type: ignore[call-arg]
    return base.model_copy(update=update)


def errand(number: str, i: int, *, today: date) -> CallRequest:
    """The errand the bench receptionist expects: a haircut next week, afternoons."""
    monday = today + timedelta(days=7 - today.weekday())
    from datetime import time as tod

    return CallRequest(
        business_name="Joe's Barbershop",
        phone=number,
        business_tz="America/Los_Angeles",
        service="haircut",
        person_name="Alex Doe",
        person_tz="America/Los_Angeles",
        window=BookingWindow(monday, monday + timedelta(days=6), tod(12, 0), tod(17, 0), 30),
        origin=ChatOrigin(platform=Platform.CLI, chat_id=f"bench-{i}", user_id=f"bench-{i}"),
    )


@dataclass
class Round:
    """What one round of ``calls`` concurrent calls measured."""

    calls: int
    jobs: list[Job] = field(default_factory=list)
    overheads: list[float] = field(default_factory=list)
    barge_ins: list[float] = field(default_factory=list)
    voice_to_voice: list[float] = field(default_factory=list)
    #: server overhead split: STT final → first LLM token → first TTS byte → first frame out
    to_llm: list[float] = field(default_factory=list)
    to_tts: list[float] = field(default_factory=list)
    to_out: list[float] = field(default_factory=list)
    frames: dict[str, float] = field(default_factory=dict)
    #: per call, its turns as the sandbox heard them: {"sid", "to", "turns": [{kind, gap_ms, ...}]}
    heard: list[dict[str, Any]] = field(default_factory=list)
    #: per heard turn kind, per stage of its heard gap (``STAGES``): milliseconds, one per turn
    stages: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: early model requests (eager end of turn) started / thrown away (``CallMetrics``)
    prepared_started: int = 0
    prepared_discarded: int = 0
    cpu_ms: float = 0.0
    seconds: float = 0.0
    sandbox: dict[str, Any] = field(default_factory=dict)

    @property
    def audio_seconds(self) -> float:
        return self.frames.get("frames", 0) * 0.02


class Bench:
    """The product under test plus its sandbox child; ``round(n)`` runs n concurrent calls."""

    def __init__(
        self,
        *,
        numbers: int,
        pace: float = 1.0,
        latencies: dict[str, float] | None = None,
        shards: int = 3,
        freeze: bool = True,
        stt_model: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.freeze = freeze
        self.stt_model = stt_model
        self.settings = settings or {}  # product settings to override (e.g. the eager threshold)
        self._prepared = [0, 0]
        self.child = SandboxShards(numbers=numbers, pace=pace, latencies=latencies or {}, shards=shards)
        self.app: Concierge | None = None
        self._frames = FrameStats()  # this round's calls, merged as each one reports (on_call_metrics)
        self._tmp = tempfile.TemporaryDirectory(prefix="concierge-bench-")
        self.numbers: list[str] = []

    async def __aenter__(self) -> Bench:
        try:
            hello = await self.child.start()
            self.numbers = hello["numbers"]
            sock = bind("127.0.0.1", 0)
            port = sock.getsockname()[1]
            db_path = str(Path(self._tmp.name) / "bench.db")
            settings = bench_settings(
                hello, port=port, db_path=db_path, stt_model=self.stt_model, overrides=self.settings
            )
            self.app = Concierge(
                settings,
                clock=SystemClock(),
                graph_credential=sandbox_graph_credential(),
                owner="bench",
                call_metrics=self.on_call_metrics,
            )
            await self.app.start(sock)  # includes concierge.warmup.warm_up()
            if self.freeze:
                warmup.freeze_heap()  # as `concierge serve` does
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self.app is not None:
            with contextlib.suppress(Exception):
                await self.app.stop(grace=10)
            self.app = None
        await self.child.stop()
        self._tmp.cleanup()

    def on_call_metrics(self, metrics: CallMetrics) -> None:
        """The app's metrics sink: each ended call's inbound frame timing joins the round's totals."""
        self._frames.merge(metrics.frames)
        self._prepared[0] += metrics.prepared_started
        self._prepared[1] += metrics.prepared_discarded

    async def round(self, calls: int, *, ramp: float = 3.0, timeout: float = 180.0) -> Round:  # noqa: ASYNC109
        """Submit ``calls`` errands (spread over ``ramp`` seconds) and wait until all are final."""
        assert self.app is not None
        app = self.app
        if calls > len(self.numbers):
            raise ValueError(f"only {len(self.numbers)} numbers are programmed")
        result = Round(calls)
        self._frames = FrameStats()
        self._prepared = [0, 0]
        await self.child.command("reset")
        proc = psutil.Process()
        cpu0 = sum(proc.cpu_times()[:2])
        t0 = time.monotonic()
        today = date.today()
        for i in range(calls):
            result.jobs.append(await app.dispatcher.submit(errand(self.numbers[i], i, today=today)))
            if ramp and i + 1 < calls:
                await asyncio.sleep(ramp / calls)
        deadline = t0 + timeout
        ids = [j.id for j in result.jobs]
        # One query a second while the calls run, not one per call: the harness shares the app's
        # loop, and a read per call (each a hand-off to the SQLite thread and back) stalled it.
        open_states = [s for s in JobState if not s.is_final]
        while (await app.store.list(states=open_states, limit=1)) or app.webhooks.active_calls():
            if time.monotonic() > deadline:
                raise TimeoutError(f"round of {calls} calls still running after {timeout:.0f} s")
            await asyncio.sleep(1.0)
        result.seconds = time.monotonic() - t0
        result.cpu_ms = (sum(proc.cpu_times()[:2]) - cpu0) * 1000.0
        jobs = [await app.store.get(i) for i in ids]
        result.jobs = jobs
        result.frames = self._frames.summary()
        result.prepared_started, result.prepared_discarded = self._prepared
        result.sandbox = await self.child.command("stats")
        result.heard = await self.child.heard()
        marks: dict[str, list[TurnLatency]] = {}
        for job in jobs:
            turns = await app.store.turns(job.id)
            marks[job.request.phone] = [
                t.latency for t in turns if t.speaker is Speaker.ASSISTANT and t.latency is not None
            ]
            for turn in turns:
                lat = turn.latency
                if turn.speaker is not Speaker.ASSISTANT or lat is None:
                    continue
                if lat.server_overhead_ms is not None:
                    result.overheads.append(lat.server_overhead_ms)
                    _split(result, lat)
                if lat.barge_in_ms is not None:
                    result.barge_ins.append(lat.barge_in_ms)
                if lat.speech_end is not None and lat.first_audio_out is not None:
                    result.voice_to_voice.append((lat.first_audio_out - lat.speech_end) * 1000.0)
        for call in result.heard:
            for heard_turn in call["turns"]:
                _stages(result, heard_turn, marks.get(call["to"], []))
        return result


#: The heard gap cut at the product's own marks, in order (``stages_ms`` in ``bench.latency``):
#: the callee's last voiced frame (ear) → STT final → first model token (the first ``Say``) → first
#: TTS byte (or the cached phrase taken) → first media frame sent to Twilio → first audio heard (ear).
STAGES = (
    "voice_end_to_stt_final",
    "stt_final_to_first_token",
    "first_token_to_tts_first_byte",
    "tts_first_byte_to_frame_out",
    "frame_out_to_heard",
)

#: A product's first frame is matched to the ear's first audio if sent at most this long after it
#: (the two processes read one monotonic clock; sending comes before receipt, up to rounding).
_MATCH_SLACK_S = 0.005


def _stages(result: Round, heard_turn: dict[str, Any], marks: list[TurnLatency]) -> None:
    """Add one heard turn's stages: the product turn whose first frame went out inside its gap.

    The two ends come from the sandbox's ear, the cuts from the product's ``TurnLatency`` marks, all
    on ``time.monotonic`` (one clock for every process of the machine), so the stages add up to the
    heard gap. A turn without a match (its first heard audio was a reply started earlier) is left out.
    """
    end, first = heard_turn.get("end_at"), heard_turn.get("first_at")
    if end is None or first is None:
        return
    sent = [
        m
        for m in marks
        if m.first_audio_out is not None and end <= m.first_audio_out <= first + _MATCH_SLACK_S
    ]
    if not sent:
        return
    lat = max(sent, key=lambda m: m.first_audio_out or 0.0)
    cuts = (end, lat.stt_final, lat.llm_first_token, lat.tts_first_byte, lat.first_audio_out, first)
    per_kind = result.stages.setdefault(heard_turn["kind"], {})
    per_kind.setdefault("heard_gap", []).append((first - end) * 1000.0)
    for name, a, b in zip(STAGES, cuts, cuts[1:], strict=False):  # len(cuts) == len(STAGES) + 1
        if a is not None and b is not None:
            per_kind.setdefault(name, []).append((b - a) * 1000.0)


def _split(result: Round, lat: TurnLatency) -> None:
    marks = (lat.stt_final, lat.llm_first_token, lat.tts_first_byte, lat.first_audio_out)
    for out, a, b in zip((result.to_llm, result.to_tts, result.to_out), marks, marks[1:], strict=False):
        if a is not None and b is not None:
            out.append((b - a) * 1000.0)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
