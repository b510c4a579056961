"""The sandbox world in its own process, for the benchmark (``python -m bench.sandbox_proc``).

Why a separate process: the sandbox paces every call's audio (one 20 ms tick per call), runs the
scripted callees, transcribes and synthesises. In the same process it would share the event loop
and the CPU with the Concierge, and "server overhead" would measure the sandbox's pacing loops as
much as our own code. Here it runs beside the product, on loopback only.

``--services`` runs only some of the services, so the bench can spread the world over several
processes (one per service group, see ``bench.harness.SHARDS``): the services talk to each other
only through the product (the callee hears what the product sends to Twilio; Deepgram transcribes
what the product forwards), so each group can live in its own process and the product, which has
one base URL per service, cannot tell.

Protocol: one JSON line on stdout once every service listens (endpoints, credentials, the
programmed numbers); then one command per stdin line — ``stats`` answers a JSON line with this
process's event-loop lag and CPU time, ``reset`` zeroes them and forgets the calendar events booked
so far, ``heard`` answers ``{"calls": [{"sid", "to", "seconds", "turns": [HeardTurn...]}], "booked": N}``:
every call of this round as the sandbox's ear heard it (``sandbox.ear``; empty without the Twilio
service; ``seconds`` of callee audio) and the events booked in this round (0 without the Graph
service) — and end of input stops the world.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import sys
import time
from datetime import date
from typing import Any

import psutil

from concierge.warmup import freeze_heap
from demo.world import DEFAULTS, GRAPH_TOKEN
from sandbox import scenarios
from sandbox.anthropic import SandboxAnthropic
from sandbox.callee import CalleeScript
from sandbox.deepgram import SandboxDeepgram
from sandbox.graph import SandboxGraph
from sandbox.twilio import Behavior, SandboxTwilio

#: Numbers the bench dials: +1 415 555 2000, 2001, ... (one per concurrent call).
FIRST_NUMBER = 14155552000
SCENARIO = "interrupt"
LAG_TICK = 0.005
SERVICES = ("twilio", "deepgram", "anthropic", "graph")


def numbers(count: int) -> list[str]:
    return [f"+{FIRST_NUMBER + i}" for i in range(count)]


def bench_script(*, today: date) -> CalleeScript:
    """The receptionist of the ``interrupt`` scenario: greeting, a barge-in, then the booking.

    Four assistant turns per call: the greeting (cut off after four words), who is calling, the
    answer to the offered slot, the goodbye.
    """
    script = scenarios.build(SCENARIO, today=today).attempt(1).script
    assert script is not None
    return script


class LagMeter:
    """How late this process's event loop wakes up (a proxy for the pump falling behind)."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.proc = psutil.Process()
        self.cpu0 = self._cpu()
        self.gc_max_ms = 0.0  # longest garbage-collector pause (a stall of every call's pump)
        self._gc_start = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_max_ms = max(self.gc_max_ms, (time.perf_counter() - self._gc_start) * 1000.0)

    def _cpu(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_TICK
            await asyncio.sleep(LAG_TICK)
            self.samples.append((loop.time() - due) * 1000.0)

    def reset(self) -> None:
        self.samples.clear()
        self.cpu0 = self._cpu()
        self.gc_max_ms = 0.0

    def stats(self) -> dict[str, float]:
        s = sorted(self.samples) or [0.0]
        return {
            "loop_lag_ms_p50": round(s[len(s) // 2], 3),
            "loop_lag_ms_p99": round(s[min(len(s) - 1, int(len(s) * 0.99))], 3),
            "loop_lag_ms_max": round(s[-1], 3),
            "cpu_ms": round((self._cpu() - self.cpu0) * 1000.0, 1),
            "rss_mb": round(self.proc.memory_info().rss / 2**20, 1),
            "gc_pause_ms_max": round(self.gc_max_ms, 2),
        }


def forget_finished(services: list[Any]) -> None:
    """Drop what earlier rounds' finished calls left behind (their wire logs, callee state).

    The sandbox keeps every call for test assertions; over a ``--max-calls`` run that grew the
    Twilio child's heap round after round, and with it every full collection (a 74 ms pause at
    the 80-call round, after 180 calls of earlier rounds): a stall of every call's media pump.
    """
    for service in services:
        if isinstance(service, SandboxTwilio):
            service.calls = {sid: c for sid, c in service.calls.items() if not c.done.is_set()}
        elif isinstance(service, SandboxDeepgram):
            service.listens[:] = [x for x in service.listens if x.closed_code is None]
            service.speaks[:] = [x for x in service.speaks if x.closed_code is None]


def heard(services: list[Any]) -> list[dict[str, Any]]:
    """Each call's heard turns (``sandbox.ear``), timed by this process's clock."""
    return [
        {
            "sid": call.sid,
            "to": call.to,
            "seconds": round(call.callee.seconds, 2),
            "turns": call.ear.to_json(),
        }  # fmt: skip
        for service in services
        if isinstance(service, SandboxTwilio)
        for call in service.calls.values()
    ]


async def serve(args: argparse.Namespace) -> None:
    wanted = [x for x in args.services.split(",") if x]
    unknown = set(wanted) - set(SERVICES)
    if unknown:
        raise SystemExit(f"unknown services {sorted(unknown)}")
    c = DEFAULTS
    today = date.today()
    scenario = scenarios.build(SCENARIO, today=today)
    dialled = numbers(args.numbers)
    started: list[Any] = []
    endpoints: dict[str, str] = {}
    hello: dict[str, Any] = {"creds": dict(c), "numbers": dialled, "pid": psutil.Process().pid}
    graph: SandboxGraph | None = None
    meter = LagMeter()
    lag_task = asyncio.create_task(meter.run())
    try:
        if "twilio" in wanted:
            twilio = SandboxTwilio(
                account_sid=c["twilio_account_sid"], auth_token=c["twilio_auth_token"], pace=args.pace
            )
            await twilio.start()
            started.append(twilio)
            script = bench_script(today=today)
            for number in dialled:
                twilio.program(number, Behavior.ANSWER, script)
            endpoints["twilio"] = twilio.base_url
        if "deepgram" in wanted:
            deepgram = SandboxDeepgram(
                api_key=c["deepgram_api_key"],
                stt_latency_ms=args.stt_latency_ms,
                tts_ttfb_ms=args.tts_ttfb_ms,
            )
            await deepgram.start()
            started.append(deepgram)
            endpoints["deepgram"] = deepgram.ws_url
            hello["deepgram_http_url"] = deepgram.http_url
        if "anthropic" in wanted:
            anthropic = SandboxAnthropic(api_key=c["anthropic_api_key"], ttft_ms=args.llm_ttft_ms)
            await anthropic.start()
            started.append(anthropic)
            endpoints["anthropic"] = anthropic.base_url
        if "graph" in wanted:
            graph = SandboxGraph(user_id=c["graph_user_id"], token=GRAPH_TOKEN)
            graph.busy = list(scenario.busy)
            await graph.start()
            started.append(graph)
            endpoints["graph"] = graph.base_url
        hello["endpoints"] = endpoints
        freeze_heap()  # as the product does after start-up
        print(json.dumps(hello), flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode().strip():
            if line == "stats":
                print(json.dumps(meter.stats() | {"services": wanted, "at": time.monotonic()}), flush=True)
            elif line == "heard":
                booked = len(graph.events) if graph is not None else 0
                print(json.dumps({"calls": heard(started), "booked": booked}), flush=True)
            elif line == "reset":
                if graph is not None:
                    graph.events.clear()  # bookings of the last round would make the offer busy
                forget_finished(started)
                gc.collect()
                meter.reset()
                print(json.dumps({"ok": True}), flush=True)
    finally:
        lag_task.cancel()
        await asyncio.gather(lag_task, return_exceptions=True)
        for service in reversed(started):
            with contextlib.suppress(Exception):
                await service.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sandbox_proc", description=__doc__)
    p.add_argument("--numbers", type=int, default=20, help="how many numbers to program")
    p.add_argument("--pace", type=float, default=1.0)
    p.add_argument("--services", default=",".join(SERVICES), help="which services this process runs")
    p.add_argument("--stt-latency-ms", type=float, default=0.0)
    p.add_argument("--tts-ttfb-ms", type=float, default=0.0)
    p.add_argument("--llm-ttft-ms", type=float, default=0.0)
    asyncio.run(serve(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
