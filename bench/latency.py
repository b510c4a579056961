"""Latency and concurrency benchmark of the audio path (``python -m bench.latency``).

N concurrent calls go through the real ``Concierge`` (aiohttp media streams, call sessions, the
Deepgram/Anthropic/Graph SDKs, the dispatcher and its SQLite store) against the sandbox services
running in a child process (``bench.sandbox_proc``), all on loopback. Each call is the scripted
receptionist of the ``interrupt`` scenario: four assistant turns, one of them cut off by a barge-in.

Figures, never assertions (see bench/README.md for what each one means):

    python -m bench.latency                      # 20 calls, zero-latency providers
    python -m bench.latency --json               # the same, one JSON object on stdout
    python -m bench.latency --provider-latency published   # plus a voice-to-voice estimate
    python -m bench.latency --max-calls          # raise concurrency until the targets break
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any

from bench.harness import SHARDS, STAGES, Bench, Round, peak_rss_mb, published

#: --max-calls stops when p99 server overhead exceeds this, or frames fall behind.
MAX_P99_OVERHEAD_MS = 20.0
#: A frame "fell behind real time" when it arrives later than this behind the audio clock.
MAX_FRAME_LAG_MS = 100.0


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100.0 * len(s) + 0.5) - 1))
    return round(s[k], 3)


def _dist(values: list[float], *ps: int) -> dict[str, float | None]:
    out: dict[str, float | None] = {f"p{p}": pct(values, p) for p in ps}
    out["max"] = round(max(values), 3) if values else None
    return out


#: Turn kinds the sandbox's ear tells apart (``sandbox.ear``).
HEARD_KINDS = ("opening", "answer", "tool", "barge_in")


def heard(r: Round, key: str) -> dict[str, Any]:
    """One heard figure (``gap_ms`` or ``content_gap_ms``): p50/p95 over every turn and per kind.

    ``n`` counts the turns that have the figure (a turn whose reply never got past its fixed
    phrases has no content gap).
    """
    turns = [t for call in r.heard for t in call["turns"]]

    def dist(kind: str | None) -> dict[str, Any]:
        values = [t[key] for t in turns if t[key] is not None and kind in (None, t["kind"])]
        return {**_dist(values, 50, 95), "n": len(values)}

    return {**dist(None), "by_kind": {kind: dist(kind) for kind in HEARD_KINDS}}


def stages(r: Round) -> dict[str, dict[str, Any]]:
    """Per turn kind, the p50 of each stage of the heard gap (``bench.harness.STAGES``), and of the
    heard gap of the same turns (``n`` of them). p50s of parts need not add up to the p50 of the whole.
    """
    out: dict[str, dict[str, Any]] = {}
    for kind in HEARD_KINDS:
        per = r.stages.get(kind, {})
        gaps = per.get("heard_gap", [])
        out[kind] = {"n": len(gaps), "heard_gap": pct(gaps, 50)}
        out[kind].update({name: pct(per.get(name, []), 50) for name in STAGES})
    return out


def report(r: Round, *, provider_latency: str, latencies: dict[str, float] | None = None) -> dict[str, Any]:
    """The JSON object of one round."""
    audio_s = r.audio_seconds
    out: dict[str, Any] = {
        "calls": r.calls,
        "turns": len(r.overheads),
        "outcomes": _count(str(j.state) for j in r.jobs),
        "server_overhead_ms": _dist(r.overheads, 50, 95, 99),
        "overhead_split_ms": {
            "stt_final_to_llm_first_token": _dist(r.to_llm, 50, 99),
            "llm_first_token_to_tts_first_byte": _dist(r.to_tts, 50, 99),
            "tts_first_byte_to_first_frame_out": _dist(r.to_out, 50, 99),
        },
        "barge_in_ms": {**_dist(r.barge_ins, 50, 99), "n": len(r.barge_ins)},
        "frame_jitter_ms": {
            "p50": r.frames.get("forward_ms_p50"),
            "p99": r.frames.get("forward_ms_p99"),
            "max": r.frames.get("forward_ms_max"),
        },
        "frame_lag_ms": {"p99": r.frames.get("lag_ms_p99"), "max": r.frames.get("lag_ms_max")},
        "frames": r.frames.get("frames", 0),
        "heard_gap_ms": heard(r, "gap_ms"),
        "heard_content_gap_ms": heard(r, "content_gap_ms"),
        "stages_ms": stages(r),
        "early_requests": {
            "started": r.prepared_started,
            "discarded": r.prepared_discarded,
            "discard_rate": (
                round(r.prepared_discarded / r.prepared_started, 3) if r.prepared_started else None
            ),
        },
        "cpu_ms_per_call_second": round(r.cpu_ms / audio_s, 3) if audio_s else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "wall_seconds": round(r.seconds, 1),
        "provider_latency": provider_latency,
        "sandbox_shards": len(r.sandbox.get("processes", [])) or 1,
        "sandbox_process": r.sandbox,
        "machine": {"nproc": os.cpu_count(), "cpu": _cpu_model(), "python": sys.version.split()[0]},
    }
    if provider_latency == "published":
        out["provider_latency_ms"] = dict(latencies or {})
        out["voice_to_voice_ms"] = _dist(r.voice_to_voice, 50, 95)
    return out


def keeps_up(
    r: Round, *, max_p99_ms: float = MAX_P99_OVERHEAD_MS, max_lag_ms: float = MAX_FRAME_LAG_MS
) -> bool:
    """p99 server overhead within budget and no frame behind real time."""
    p99 = pct(r.overheads, 99)
    lag = r.frames.get("lag_ms_max", 0.0)
    return p99 is not None and p99 <= max_p99_ms and lag <= max_lag_ms


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def table(d: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)

    def dist(d: dict[str, Any]) -> str:
        return "  ".join(f"{k} {f(v)}" for k, v in d.items())

    sp = d["sandbox_process"]
    rows = [
        ("calls / assistant turns", f"{d['calls']} / {d['turns']}   outcomes {d['outcomes']}"),
        ("server overhead ms", dist(d["server_overhead_ms"])),
        ("  STT final → LLM token", dist(d["overhead_split_ms"]["stt_final_to_llm_first_token"])),
        ("  LLM token → TTS byte", dist(d["overhead_split_ms"]["llm_first_token_to_tts_first_byte"])),
        ("  TTS byte → frame out", dist(d["overhead_split_ms"]["tts_first_byte_to_first_frame_out"])),
        ("barge-in reaction ms", dist(d["barge_in_ms"])),
        ("frame jitter ms", f"{dist(d['frame_jitter_ms'])}  ({d['frames']} frames)"),
        ("frame lag ms", dist(d["frame_lag_ms"])),
        ("early model requests", dist(d["early_requests"])),
        ("cpu ms per call-second", f(d["cpu_ms_per_call_second"])),
        ("peak RSS MB", f(d["peak_rss_mb"])),
        ("sandbox process", f"loop lag p99 {f(sp.get('loop_lag_ms_p99'))} ms, cpu {f(sp.get('cpu_ms'))} ms"),
    ]
    for key, label in (("heard_gap_ms", "heard gap ms"), ("heard_content_gap_ms", "heard content gap ms")):
        h = d[key]
        rows.append((label, f"p50 {f(h['p50'])}  p95 {f(h['p95'])}  n {h['n']}  (sandbox's ear)"))
        for kind, k in h["by_kind"].items():
            rows.append((f"  {kind}", f"p50 {f(k['p50'])}  p95 {f(k['p95'])}  n {k['n']}"))
    rows.append(("heard gap by stage, p50 ms", "  ".join(f"{i + 1} {n}" for i, n in enumerate(STAGES))))
    for kind, st in d["stages_ms"].items():
        cells = "  ".join(f"{i + 1}: {f(st[n])}" for i, n in enumerate(STAGES))
        rows.append((f"  {kind}", f"{cells}  = {f(st['heard_gap'])}  n {st['n']}"))
    if "voice_to_voice_ms" in d:
        rows.append(("voice-to-voice ms", dist(d["voice_to_voice_ms"]) + "  (published provider latencies)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    latencies = published(args.stt_model) if args.provider_latency == "published" else {}
    if latencies and args.stt_latency_ms is not None:
        latencies["stt_latency_ms"] = args.stt_latency_ms

    def bench_for(numbers: int) -> Bench:
        return Bench(
            numbers=numbers, pace=args.pace, latencies=latencies, shards=args.shards,
            freeze=args.freeze, stt_model=args.stt_model,
            settings={} if args.eager_eot is None else {"deepgram_eager_eot_threshold": args.eager_eot},
        )  # fmt: skip

    if not args.max_calls:
        async with bench_for(args.calls) as bench:
            r = await bench.round(args.calls, ramp=args.ramp)
        return report(r, provider_latency=args.provider_latency, latencies=latencies)
    levels = [n for n in args.levels if n <= args.ceiling]
    held: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = []
    async with bench_for(max(levels)) as bench:
        for n in levels:
            r = await bench.round(n, ramp=args.ramp)
            d = report(r, provider_latency=args.provider_latency, latencies=latencies)
            ok = keeps_up(r, max_p99_ms=args.max_p99_ms, max_lag_ms=args.max_lag_ms)
            steps.append({
                "calls": n, "ok": ok, "server_overhead_ms": d["server_overhead_ms"],
                "frame_lag_ms": d["frame_lag_ms"], "cpu_ms_per_call_second": d["cpu_ms_per_call_second"],
                "sandbox_process": d["sandbox_process"],
            })  # fmt: skip
            if not args.json:
                print(f"--- {n} calls: {'held' if ok else 'NOT held'}\n{table(d)}\n", flush=True)
            if not ok:
                break
            held = d
    limits = {"max_p99_server_overhead_ms": args.max_p99_ms, "max_frame_lag_ms": args.max_lag_ms}
    return {"max_calls": held["calls"] if held else 0, "limits": limits, "at_max": held, "steps": steps}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--calls", type=int, default=20, help="concurrent calls (default 20)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--provider-latency", choices=["zero", "published"], default="zero")
    p.add_argument("--max-calls", action="store_true", help="find the largest concurrency that keeps up")
    p.add_argument(
        "--levels",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[20, 40, 60, 80, 100, 120, 150, 200],
        help="concurrency steps for --max-calls",
    )
    p.add_argument(
        "--max-p99-ms",
        type=float,
        default=MAX_P99_OVERHEAD_MS,
        help="--max-calls: p99 server overhead a round may reach (default 20)",
    )
    p.add_argument(
        "--max-lag-ms",
        type=float,
        default=MAX_FRAME_LAG_MS,
        help="--max-calls: how far behind real time a frame may arrive (default 100)",
    )
    p.add_argument("--ceiling", type=int, default=200, help="highest concurrency --max-calls tries")
    p.add_argument("--ramp", type=float, default=3.0, help="seconds over which calls are started")
    p.add_argument(
        "--shards",
        type=int,
        choices=sorted(SHARDS),
        default=3,
        help="sandbox child processes: 1 all services, 2 Twilio | the rest, 3 Twilio | Deepgram | "
        "Anthropic+Graph (default)",
    )
    p.add_argument("--pace", type=float, default=1.0, help="sandbox audio pace (1.0 = real time)")
    p.add_argument(
        "--stt-model", default=None,
        help="DEEPGRAM_STT_MODEL for the product (default: the settings default); flux-general-en "
        "uses /v2/listen and starts the model on EagerEndOfTurn",
    )  # fmt: skip
    p.add_argument(
        "--eager-eot", type=float, default=None,
        help="DEEPGRAM_EAGER_EOT_THRESHOLD for the product (Flux; default: the settings default); "
        "lower starts the model earlier and discards more early requests (see early_requests)",
    )  # fmt: skip
    p.add_argument(
        "--stt-latency-ms", type=float, default=None,
        help="with --provider-latency published: the delay on every Deepgram message instead of the "
        "published one (0 for Flux, 250 for Nova; 250 replays the figure used before for Flux too)",
    )  # fmt: skip
    p.add_argument(
        "--no-freeze", dest="freeze", action="store_false",
        help="skip gc.freeze() after start-up (as `concierge serve` does it); for in-process callers",
    )  # fmt: skip
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result, indent=2))
    elif not args.max_calls:
        print(table(result))
    else:
        print(f"largest concurrency held: {result['max_calls']} calls")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
