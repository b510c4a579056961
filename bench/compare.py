"""Concierge side by side with Pipecat, on the same calls, sandbox and ear (``python -m bench.compare``).

Each variant answers the same scripted receptionist (``bench.sandbox_proc``'s ``interrupt``
callee), the same number of calls started over the same ramp, against fresh sandbox children
with the same provider delays:

* ``concierge``: the product, in this process, exactly as ``bench.latency`` runs it, with its
  defaults: the fixed opening (disclosure + errand, pre-rendered, no model round) and the cached
  acknowledgements on;
* ``concierge_plain`` (only when named in ``--variants``): the same with ``FIXED_OPENING`` and
  ``ACKNOWLEDGEMENTS`` off, so the model words every turn as Pipecat's does (not in the ratios);
* ``pipecat``: ``bench/peers/pipecat_bot.py`` in ``.venv-peer`` (Deepgram Nova STT, Silero VAD,
  smart-turn), dialled by the sandbox Twilio as Pipecat's outbound example dials;
* ``pipecat_flux``: the same bot with Pipecat's Deepgram Flux STT service.

Measured for all of them the same way: the sandbox's ear (heard gap and content gap, p50/p95),
CPU ms per second of call (the bot's whole process tree), peak RSS (the same tree), and the
largest concurrency held on a short ladder under the same limits (every call booked, every call
heard answering as many turns as the first round's calls, heard gap p95 within a budget).

    python -m bench.compare --calls 5                     # table
    python -m bench.compare --calls 5 --json              # one JSON object with the ratios
    python -m bench.compare --provider-latency published  # provider delays replayed
    python -m bench.compare --levels ''                   # no ladder
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import psutil
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from agent.prompts import build_system_prompt
from agent.tools import BookingTools
from bench.harness import PUBLISHED, Bench, SandboxShards, errand, peak_rss_mb
from bench.latency import Round, heard
from concierge.settings import Settings
from demo.world import GRAPH_TOKEN

ROOT = Path(__file__).resolve().parent.parent
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"
PEER_BOT = ROOT / "bench" / "peers" / "pipecat_bot.py"
VARIANTS = ("concierge", "pipecat", "pipecat_flux")
#: Optional variants (``--variants``): Concierge with the settings Pipecat has no counterpart for off.
CONCIERGE_PLAIN = {"fixed_opening": False, "acknowledgements": False}
#: A ladder step holds when its heard gap p95 stays within this (plus the replayed provider delays).
MAX_GAP_P95_MS = 1500.0


@dataclass
class Measure:
    """One round of one variant, as the sandbox and the OS saw it."""

    calls: int
    heard: list[dict[str, Any]] = field(default_factory=list)  # per call: seconds, turns
    booked: int = 0
    cpu_ms: float = 0.0
    rss_mb: float = 0.0
    seconds: float = 0.0
    #: calls still not over when the round's ``--timeout`` ran out (their turns so far are counted)
    unfinished: int = 0

    @property
    def call_seconds(self) -> float:
        return sum(float(c.get("seconds", 0.0)) for c in self.heard)

    def turns_per_call(self) -> list[int]:
        return [len(c["turns"]) for c in self.heard]


def summarize(m: Measure) -> dict[str, Any]:
    """The figures of one round (the ear's distributions come from ``bench.latency.heard``)."""
    r = Round(m.calls, heard=m.heard)
    return {
        "calls": m.calls,
        "booked": m.booked,
        "unfinished": m.unfinished,
        "turns_heard": sum(m.turns_per_call()),
        "heard_gap_ms": heard(r, "gap_ms"),
        "heard_content_gap_ms": heard(r, "content_gap_ms"),
        "cpu_ms_per_call_second": round(m.cpu_ms / m.call_seconds, 3) if m.call_seconds else None,
        "peak_rss_mb": round(m.rss_mb, 1),
        "call_seconds": round(m.call_seconds, 1),
        "wall_seconds": round(m.seconds, 1),
    }


def holds(d: dict[str, Any], *, turns_per_call: int, max_gap_p95_ms: float) -> bool:
    """Every call booked and answered every turn the first round's calls were, gap p95 in budget."""
    p95 = d["heard_gap_ms"]["p95"]
    return (
        d["booked"] == d["calls"]
        and not d.get("unfinished")
        and d["turns_heard"] >= turns_per_call * d["calls"]
        and p95 is not None
        and p95 <= max_gap_p95_ms
    )


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, rounded; None when either side is missing or b is zero."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


RATIO_KEYS = (
    ("heard_gap_p50", ("heard_gap_ms", "p50")),
    ("heard_gap_p95", ("heard_gap_ms", "p95")),
    ("heard_content_gap_p50", ("heard_content_gap_ms", "p50")),
    ("heard_content_gap_p95", ("heard_content_gap_ms", "p95")),
    ("cpu_ms_per_call_second", ("cpu_ms_per_call_second",)),
    ("peak_rss_mb", ("peak_rss_mb",)),
    ("max_calls", ("max_calls",)),
)


def _get(d: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)  # type: ignore[assignment]
    return d


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Concierge / each Pipecat variant, per figure (below 1: Concierge is lower)."""
    ours = results.get("concierge")
    out: dict[str, dict[str, float | None]] = {}
    for name, theirs in results.items():
        if name.startswith("concierge") or ours is None or "error" in theirs:
            continue
        out[f"concierge/{name}"] = {k: ratio(_get(ours, p), _get(theirs, p)) for k, p in RATIO_KEYS}
    return out


def table(result: dict[str, Any]) -> str:
    """One table: a row per figure, a column per variant, then the ratios."""
    variants: dict[str, dict[str, Any]] = result["variants"]
    names = list(variants)

    def f(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:,.1f}" if isinstance(v, float) else str(v)

    rows: list[tuple[str, list[str]]] = [("", names)]
    for label, path in (
        ("calls / booked", None),
        ("calls unfinished", ("unfinished",)),
        ("heard gap p50 ms", ("heard_gap_ms", "p50")),
        ("heard gap p95 ms", ("heard_gap_ms", "p95")),
        ("content gap p50 ms", ("heard_content_gap_ms", "p50")),
        ("content gap p95 ms", ("heard_content_gap_ms", "p95")),
        ("CPU ms / call-second", ("cpu_ms_per_call_second",)),
        ("peak RSS MB", ("peak_rss_mb",)),
        ("max calls held", ("max_calls",)),
    ):
        cells = []
        for n in names:
            d = variants[n]
            if "error" in d:
                cells.append("error" if path is None else "-")
            elif path is None:
                cells.append(f"{d['calls']} / {d['booked']}")
            else:
                cells.append(f(_get(d, path)))
        rows.append((label, cells))
    for pair, values in result["ratios"].items():
        rows.append((pair, [""]))
        rows.extend((f"  {k}", [f(v)]) for k, v in values.items())
    width = max(len(label) for label, _ in rows)
    col = max(12, *(len(c) for _, cells in rows for c in cells))
    return "\n".join(f"{label:<{width}}  " + "".join(f" {c:>{col}}" for c in cells) for label, cells in rows)


# -- running the variants ----------------------------------------------------------------------


async def run_concierge(
    args: argparse.Namespace, n: int, *, settings: dict[str, Any] | None = None
) -> Measure:
    """One round of the product, as ``bench.latency`` runs it (``settings``: overrides of its defaults)."""
    latencies = PUBLISHED if args.provider_latency == "published" else {}
    async with Bench(numbers=n, latencies=latencies, settings=settings) as bench:
        r = await bench.round(n, ramp=args.ramp)
        booked = sum(1 for j in r.jobs if "booked" in str(j.outcome).lower())
        return Measure(
            calls=n, heard=r.heard, booked=booked, cpu_ms=r.cpu_ms, rss_mb=peak_rss_mb(), seconds=r.seconds
        )


def peer_spec(hello: dict[str, Any], *, stt: str, numbers: list[str]) -> dict[str, Any]:
    """What the Pipecat bot needs: the sandbox's URLs and keys, our prompt and tool schemas."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    today = date.today()
    request = errand(numbers[0], 0, today=today)
    tools = BookingTools(request, calendar=None)  # type: ignore[arg-type]
    creds, ep = hello["creds"], hello["endpoints"]
    return {
        "stt": stt,
        # opening=None: Pipecat speaks only what the model says, so the model discloses itself.
        "system_prompt": build_system_prompt(request, assistant_name=settings.assistant_name, today=today),
        "tools": tools.schemas(),
        "model": settings.anthropic_model,
        "tts_voice": settings.deepgram_tts_model,
        "twilio_base_url": ep["twilio"],
        "twilio_account_sid": creds["twilio_account_sid"],
        "twilio_auth_token": creds["twilio_auth_token"],
        "deepgram_ws_url": ep["deepgram"],
        "deepgram_api_key": creds["deepgram_api_key"],
        "anthropic_base_url": ep["anthropic"],
        "anthropic_api_key": creds["anthropic_api_key"],
        "graph_base_url": ep["graph"],
        "graph_user_id": creds["graph_user_id"],
        "graph_token": GRAPH_TOKEN,
        "business_tz": request.business_tz,
    }


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def tree_cpu_ms(pid: int) -> float:
    """User + system CPU of a process and all its children, ms."""
    total = 0.0
    for p in _tree(pid):
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total * 1000.0


def tree_peak_rss_mb(pid: int) -> float:
    """Summed peak resident memory (``VmHWM``) of a process and its children."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError, psutil.Error):
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
    return total / 1024.0


async def run_pipecat(args: argparse.Namespace, n: int, *, stt: str) -> Measure:
    """One round of the Pipecat bot: fresh sandbox children, the bot in its own venv, n calls."""
    latencies = PUBLISHED if args.provider_latency == "published" else {}
    shards = SandboxShards(numbers=n, pace=1.0, latencies=latencies)
    bot: asyncio.subprocess.Process | None = None
    with tempfile.TemporaryDirectory(prefix="concierge-peer-") as tmp:
        try:
            hello = await shards.start()
            numbers = hello["numbers"]
            spec_path = Path(tmp) / "spec.json"
            spec_path.write_text(json.dumps(peer_spec(hello, stt=stt, numbers=numbers)))
            bot = await asyncio.create_subprocess_exec(
                str(PEER_PYTHON), str(PEER_BOT), "--spec", str(spec_path), "--log-level", args.peer_log,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert bot.stdout is not None
            async with asyncio.timeout(120):
                line = await bot.stdout.readline()
            if not line:
                raise RuntimeError("the Pipecat bot exited before listening (see its stderr)")
            port = json.loads(line)["port"]
            await shards.command("reset")
            return await _pipecat_round(args, n, hello, port, bot, shards)
        finally:
            if bot is not None:
                if bot.stdin is not None:
                    bot.stdin.close()
                try:
                    async with asyncio.timeout(15):
                        await bot.wait()
                except TimeoutError:
                    bot.kill()
                    await bot.wait()
            await shards.stop()


async def _pipecat_round(
    args: argparse.Namespace,
    n: int,
    hello: dict[str, Any],
    port: int,
    bot: asyncio.subprocess.Process,
    shards: SandboxShards,
) -> Measure:
    pid = bot.pid
    assert bot.stdout is not None
    creds = hello["creds"]
    http = AsyncTwilioHttpClient()
    client = Client(creds["twilio_account_sid"], creds["twilio_auth_token"], http_client=http)
    client.api.base_url = hello["endpoints"]["twilio"]
    cpu0 = tree_cpu_ms(pid)
    t0 = time.monotonic()
    sids = []
    try:
        # What the example's /dialout endpoint does: Calls.create with the bot's /twiml URL.
        for i, number in enumerate(hello["numbers"][:n]):
            call = await client.calls.create_async(
                to=number, from_="+14155550100", url=f"http://127.0.0.1:{port}/twiml", method="POST"
            )
            sids.append(call.sid)
            if args.ramp and i + 1 < n:
                await asyncio.sleep(args.ramp / n)
        deadline = t0 + args.timeout
        while True:
            states = [(await client.calls(sid).fetch_async()).status for sid in sids]
            unfinished = sum(
                s not in ("completed", "busy", "failed", "no-answer", "canceled") for s in states
            )
            if not unfinished:
                break
            if time.monotonic() > deadline:  # reported, not raised: what was heard still counts
                logging.warning(
                    "Pipecat: %d of %d calls still running after %.0f s", unfinished, n, args.timeout
                )
                break
            await asyncio.sleep(1.0)
        # The bot writes a call's booking once the call is over (as our dispatcher does), then says so.
        ended = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(1.0, deadline - time.monotonic())):
                while ended < n - unfinished and (line := await bot.stdout.readline()):
                    ended += "ended" in json.loads(line)
    finally:
        await http.close()
    seconds = time.monotonic() - t0
    cpu = tree_cpu_ms(pid) - cpu0
    rss = tree_peak_rss_mb(pid)
    answers = await asyncio.gather(*(c.command("heard") for c in shards.children))
    calls = [c for a in answers for c in a["calls"]]
    booked = sum(a.get("booked", 0) for a in answers)
    return Measure(
        calls=n, heard=calls, booked=booked, cpu_ms=cpu, rss_mb=rss, seconds=seconds, unfinished=unfinished
    )


async def measure(args: argparse.Namespace, variant: str, n: int) -> Measure:
    if variant == "concierge":
        return await run_concierge(args, n)
    if variant == "concierge_plain":
        return await run_concierge(args, n, settings=CONCIERGE_PLAIN)
    return await run_pipecat(args, n, stt="flux" if variant == "pipecat_flux" else "nova")


async def run_variant(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    """The --calls round, then the ladder: the largest level held (the --calls round counts)."""
    budget = args.max_gap_p95_ms
    if args.provider_latency == "published":
        budget += sum(PUBLISHED.values())
    m = await measure(args, variant, args.calls)
    d = summarize(m)
    per_call = max(1, min(m.turns_per_call(), default=1))  # what every call of this round was heard
    held = args.calls if holds(d, turns_per_call=per_call, max_gap_p95_ms=budget) else 0
    steps = [{"calls": args.calls, "ok": bool(held), "heard_gap_p95_ms": d["heard_gap_ms"]["p95"]}]
    for level in args.levels:
        if not held or level <= args.calls:
            break
        s = summarize(await measure(args, variant, level))
        ok = holds(s, turns_per_call=per_call, max_gap_p95_ms=budget)
        gap = s["heard_gap_ms"]["p95"]
        cpu = s["cpu_ms_per_call_second"]
        steps.append({"calls": level, "ok": ok, "heard_gap_p95_ms": gap, "cpu_ms_per_call_second": cpu})
        if not ok:
            break
        held = level
    d["max_calls"] = held
    d["ladder"] = {"limits": {"max_heard_gap_p95_ms": budget, "turns_per_call": per_call}, "steps": steps}
    return d


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0], "pipecat_ai": None}
    site = ROOT / ".venv-peer" / "lib"
    for dist in site.glob("python*/site-packages/pipecat_ai-*.dist-info"):
        out["pipecat_ai"] = dist.name.removesuffix(".dist-info").split("-")[1]
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    for variant in args.variants:
        if not variant.startswith("concierge") and not PEER_PYTHON.exists():
            results[variant] = {"error": "no .venv-peer: run `make bench-peer`"}
            continue
        try:
            results[variant] = await run_variant(args, variant)
        except Exception as e:  # one variant failing still reports the others
            logging.exception("variant %s failed", variant)
            results[variant] = {"error": repr(e)}
    return {
        "calls": args.calls,
        "provider_latency": args.provider_latency,
        "ramp_seconds": args.ramp,
        "variants": results,
        "ratios": ratios(results),
        "versions": versions(),
        "machine": {"nproc": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--calls", type=int, default=5, help="concurrent calls per variant (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--provider-latency", choices=["zero", "published"], default="zero")
    p.add_argument("--ramp", type=float, default=3.0, help="seconds over which calls are started")
    p.add_argument(
        "--levels", type=lambda s: [int(x) for x in s.split(",") if x], default=[10, 20],
        help="concurrency ladder after the --calls round, stops at the first level not held ('' = none)",
    )  # fmt: skip
    p.add_argument("--max-gap-p95-ms", type=float, default=MAX_GAP_P95_MS,
                   help="ladder: heard gap p95 budget (plus replayed delays with 'published')")  # fmt: skip
    p.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS),
                   help="comma-separated, of concierge, concierge_plain, pipecat, pipecat_flux")  # fmt: skip
    p.add_argument("--peer-log", default="WARNING", help="the Pipecat bot's log level (its stderr)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds a round may take")
    args = p.parse_args(argv)
    unknown = set(args.variants) - {*VARIANTS, "concierge_plain"}
    if unknown:
        p.error(f"unknown variants: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
