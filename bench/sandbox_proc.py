"""The sandbox world in its own process, for the benchmark (``python -m bench.sandbox_proc``).

Why a separate process: the sandbox paces every call's audio (one 20 ms tick per call), runs the
scripted callees, transcribes and synthesises. In the same process it would share the event loop
and the CPU with the Concierge, and "server overhead" would measure the sandbox's pacing loops as
much as our own code. Here it runs beside the product, on loopback only.

Protocol: one JSON line on stdout once every service listens (endpoints, credentials, the
programmed numbers); then one command per stdin line — ``stats`` answers a JSON line with this
process's event-loop lag and CPU time, ``reset`` zeroes them and forgets the calendar events booked
so far — and end of input stops the world.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import date

import psutil

from concierge.demo_env import SandboxWorld
from concierge.settings import Settings
from sandbox import scenarios
from sandbox.callee import CalleeScript
from sandbox.twilio import Behavior

#: Numbers the bench dials: +1 415 555 2000, 2001, ... (one per concurrent call).
FIRST_NUMBER = 14155552000
SCENARIO = "interrupt"
LAG_TICK = 0.005


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

    def stats(self) -> dict[str, float]:
        s = sorted(self.samples) or [0.0]
        return {
            "loop_lag_ms_p50": round(s[len(s) // 2], 3),
            "loop_lag_ms_p99": round(s[min(len(s) - 1, int(len(s) * 0.99))], 3),
            "loop_lag_ms_max": round(s[-1], 3),
            "cpu_ms": round((self._cpu() - self.cpu0) * 1000.0, 1),
            "rss_mb": round(self.proc.memory_info().rss / 2**20, 1),
        }


async def serve(args: argparse.Namespace) -> None:
    world = SandboxWorld(
        pace=args.pace,
        stt_latency_ms=args.stt_latency_ms,
        tts_ttfb_ms=args.tts_ttfb_ms,
        llm_ttft_ms=args.llm_ttft_ms,
        base=Settings(_env_file=None),  # type: ignore[call-arg]
    )
    await world.start()
    meter = LagMeter()
    lag_task = asyncio.create_task(meter.run())
    try:
        today = date.today()
        scenario = scenarios.build(SCENARIO, today=today)
        world.graph.busy = list(scenario.busy)
        script = bench_script(today=today)
        dialled = numbers(args.numbers)
        for number in dialled:
            world.twilio.program(number, Behavior.ANSWER, script)
        hello = {
            "endpoints": world.endpoints(),
            "deepgram_http_url": world.deepgram.http_url,
            "creds": world.creds,
            "numbers": dialled,
            "pid": psutil.Process().pid,
        }
        print(json.dumps(hello), flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode().strip():
            if line == "stats":
                stats = meter.stats() | {"calls": len(world.twilio.calls), "at": time.monotonic()}
                print(json.dumps(stats), flush=True)
            elif line == "reset":
                meter.reset()
                world.graph.events.clear()  # bookings of the last round would make the offer busy
                print(json.dumps({"ok": True}), flush=True)
    finally:
        lag_task.cancel()
        await asyncio.gather(lag_task, return_exceptions=True)
        await world.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sandbox_proc", description=__doc__)
    p.add_argument("--numbers", type=int, default=20, help="how many numbers to program")
    p.add_argument("--pace", type=float, default=1.0)
    p.add_argument("--stt-latency-ms", type=float, default=0.0)
    p.add_argument("--tts-ttfb-ms", type=float, default=0.0)
    p.add_argument("--llm-ttft-ms", type=float, default=0.0)
    asyncio.run(serve(p.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
