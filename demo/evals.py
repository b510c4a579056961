"""``concierge eval``: every scenario end to end against the configured model, the rules checked.

Each run starts a fresh sandbox world (Telegram, Twilio, Deepgram, Graph on loopback) and the
real product, and drives one errand with ``demo.runner.run_scenario``. The model is whatever the
settings name (``model_choice``): the sandbox's phone model by default, real Claude once
ANTHROPIC_API_KEY is set. Either way the product talks to it through a recording tap
(``demo.model_tap``), so the model's rounds and usage are read the same way for both. Every
run becomes an ``eval_rules.Record``; the rules judge it; the report gives each scenario's pass
rate per rule over the runs, the median turns, the median heard gap (measured by the sandbox
Twilio's ear, outside the product) and the tokens per call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from concierge.settings import Settings
from demo import eval_rules
from demo.eval_rules import DEFAULT_BOUNDS, Bounds, Line, Record, Round, Verdict
from demo.model_tap import Exchange, ModelTap
from sandbox import scenarios

#: The red-team callees (SECURITY.md), all in the default set.
RED_TEAM = ("calendar_ask", "opt_out", "injection", "whole_day", "past_slot")
ALL = (*scenarios.NAMES, *scenarios.RED_TEAM)


@dataclass(frozen=True)
class ModelChoice:
    """Which model the product talks to during an eval.

    Attributes:
        sandbox: the sandbox's rule-following phone model (and intake model).
        base_url: the real Messages API's base URL (unused for the sandbox).
        model: the model name sent.
    """

    sandbox: bool
    base_url: str = ""
    model: str = ""

    def describe(self) -> str:
        return "the sandbox model" if self.sandbox else f"{self.model} at {self.base_url}"


def model_choice(settings: Settings) -> ModelChoice:
    """The sandbox model unless ANTHROPIC_API_KEY is set; then the configured one.

    With only the key set, ANTHROPIC_BASE_URL keeps its default and that is real Claude, while
    Twilio, Deepgram, Graph and the chat stay in the sandbox. A pure function of the settings,
    so which model an eval uses is tested by configuration alone.
    """
    if not settings.anthropic_api_key:
        return ModelChoice(sandbox=True, model=settings.anthropic_model)
    return ModelChoice(sandbox=False, base_url=settings.anthropic_base_url, model=settings.anthropic_model)


@dataclass
class RunResult:
    """One errand of one scenario: its record, the verdicts, and what the report measures."""

    scenario: str
    record: Record
    verdicts: dict[str, Verdict]
    heard_gaps_ms: list[float]
    tokens_in: int
    tokens_out: int
    calls: int
    seconds: float
    error: str = ""
    judge: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.error and all(v.ok is not False for v in self.verdicts.values())


def _said(exchange: Exchange) -> str:
    messages = exchange.request.get("messages") or []
    if not messages:
        return ""
    content = messages[-1].get("content")
    if isinstance(content, str):
        return content
    return " ".join(b.get("text", "") for b in content or [] if b.get("type") == "text").strip()


def _phone_rounds(exchanges: list[Exchange]) -> list[Exchange]:
    """The call's model rounds (the chat intake's, which offer ``record_errand``, left out)."""
    return [
        x
        for x in exchanges
        if not any(t.get("name") == "record_errand" for t in x.request.get("tools") or []) and x.status == 200
    ]


def _event_span(event: dict[str, Any]) -> tuple[datetime, datetime]:
    def at(value: dict[str, Any]) -> datetime:
        stamp = str(value.get("dateTime") or value.get("date_time"))[:19]
        zone = str(value.get("timeZone") or value.get("time_zone") or "UTC")
        return datetime.fromisoformat(stamp).replace(tzinfo=ZoneInfo(zone))

    return at(event["start"]), at(event["end"])


def build_record(run: Any, exchanges: list[Exchange], errand_text: str) -> Record:
    """A ``Record`` from what ``demo.runner.run_scenario`` returned and the tap recorded."""
    from storage.models import Speaker

    sc, job = run.scenario, run.job
    outcome = job.outcome
    booking = outcome.booking if outcome else None
    req = job.request
    return Record(
        scenario=sc.name,
        expect_state=sc.expect_state,
        expect_start=sc.expect_start,
        expect_outcome=sc.expect_outcome,
        state=str(job.state),
        outcome=str(outcome.kind) if outcome else None,
        errand_text=" ".join(
            [errand_text, req.business_name, req.phone, req.service, req.person_name, req.notes]
        ),
        window=req.window,
        person_tz=req.person_tz,
        business_tz=req.business_tz,
        lines=[
            Line("assistant" if t.speaker is Speaker.ASSISTANT else "callee", t.text, t.at, t.interrupted)
            for t in run.turns
        ],
        rounds=[Round(_said(x), list(x.blocks), x.complete) for x in _phone_rounds(exchanges)],
        busy=list(sc.busy),
        booking=(booking.start, booking.end) if booking else None,
        events=[_event_span(e) for e in run.events if e.get("transactionId") == job.id],
    )


async def run_one(
    name: str,
    *,
    base: Settings,
    choice: ModelChoice,
    pace: float,
    bounds: Bounds,
    timeout: float = 180.0,  # noqa: ASYNC109
) -> RunResult:
    """Run scenario ``name`` once in a fresh sandbox world and judge it."""
    import time

    from concierge.app import Concierge, bind
    from concierge.clock import OffsetClock
    from demo.runner import MESSAGE, SCRIPTED_PERSON_WAIT, run_scenario
    from demo.world import SandboxWorld, sandbox_graph_credential

    t0 = time.monotonic()
    world = await SandboxWorld(pace=pace, base=base).start()
    tap = await ModelTap(world.anthropic.base_url if choice.sandbox else choice.base_url).start()
    app: Concierge | None = None
    try:
        sock = bind("127.0.0.1", 0)
        port = sock.getsockname()[1]
        settings = world.settings(
            public_base_url=f"http://127.0.0.1:{port}",
            port=port,
            anthropic_base_url=tap.base_url,
            silence_timeout_seconds=6.0,
            live_ask_timeout=SCRIPTED_PERSON_WAIT,
        )
        clock = OffsetClock()
        app = Concierge(
            settings, clock=clock, graph_credential=sandbox_graph_credential(), owner=f"eval:{port}"
        )
        await app.start(sock)
        run = await run_scenario(world, app, clock, name, timeout=timeout)
    except Exception as e:  # one scenario's crash is that run's failure, not the whole eval's
        return _crashed(name, e, time.monotonic() - t0)
    finally:
        if app is not None:
            await app.stop(grace=5)
        await tap.stop()
        await world.stop()
    record = build_record(run, tap.exchanges, MESSAGE)
    verdicts = eval_rules.check(record)
    verdicts["within_bounds"] = eval_rules.within_bounds(record, bounds)
    rounds = _phone_rounds(tap.exchanges)
    answered = sum(1 for c in run.calls if c.heard_turns or c.heard) or 1
    return RunResult(
        scenario=name,
        record=record,
        verdicts=verdicts,
        heard_gaps_ms=[t.gap_ms for c in run.calls for t in c.heard_turns],
        tokens_in=sum(_tokens_in(x.usage) for x in rounds) // answered,
        tokens_out=sum(x.usage.get("output_tokens", 0) for x in rounds) // answered,
        calls=len(run.calls),
        seconds=time.monotonic() - t0,
    )


def _tokens_in(usage: dict[str, int]) -> int:
    keys = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    return sum(int(usage.get(k) or 0) for k in keys)


def _crashed(name: str, error: BaseException, seconds: float) -> RunResult:
    from storage.models import BookingWindow

    empty = Record(
        name, "", "crashed", "", BookingWindow(datetime.now().date(), datetime.now().date()), "UTC", "UTC"
    )
    failed = {rule: Verdict(False, f"the run crashed: {error!r}") for rule in eval_rules.RULES}
    return RunResult(name, empty, failed, [], 0, 0, 0, seconds, error=repr(error))


# -- the report ------------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(results: list[RunResult]) -> dict[str, Any]:
    """Per scenario: runs, pass rate (all rules), each rule's pass rate, medians, tokens, failures."""
    out: dict[str, Any] = {}
    for name in dict.fromkeys(r.scenario for r in results):
        runs = [r for r in results if r.scenario == name]
        rules = {
            rule: sum(1 for r in runs if r.verdicts[rule].ok is not False) / len(runs)
            for rule in eval_rules.RULES
        }
        judged = [r.judge for r in runs if r.judge]
        out[name] = {
            "runs": len(runs),
            "pass_rate": sum(r.ok for r in runs) / len(runs),
            "rules": rules,
            "median_turns": _median([len(r.record.lines) for r in runs]),
            "median_heard_gap_ms": _median([g for r in runs for g in r.heard_gaps_ms]),
            "tokens_in_per_call": round(statistics.mean(r.tokens_in for r in runs)),
            "tokens_out_per_call": round(statistics.mean(r.tokens_out for r in runs)),
            "median_seconds": _median([r.seconds for r in runs]),
            "failures": [f"{rule}: {v.why}" for r in runs for rule, v in r.verdicts.items() if v.ok is False],
        }
        if judged:
            out[name]["judge"] = {
                k: _median([float(j[k]) for j in judged if k in j]) for k in ("politeness", "naturalness")
            }
    return out


def table(summary: dict[str, Any]) -> str:
    """The report as a fixed-width table, then each failure on its own line."""
    head = (
        f"{'scenario':14} {'runs':>4} {'pass':>5} {'turns':>5} {'gap ms':>7} {'tok in':>7} {'tok out':>7}"
        "  worst rule"
    )
    lines = [head, "-" * len(head)]
    for name, s in summary.items():
        worst = min(s["rules"].items(), key=lambda kv: kv[1])
        gap = s["median_heard_gap_ms"]
        lines.append(
            f"{name:14} {s['runs']:>4} {s['pass_rate']:>5.0%} {s['median_turns'] or 0:>5.0f} "
            f"{'-' if gap is None else f'{gap:.0f}':>7} {s['tokens_in_per_call']:>7} "
            f"{s['tokens_out_per_call']:>7}  "
            + (f"{worst[0]} {worst[1]:.0%}" if worst[1] < 1 else "all rules 100%")
            + (f"  judge {s['judge']}" if "judge" in s else "")
        )
    failures = [f"  {name}: {f}" for name, s in summary.items() for f in s["failures"]]
    return "\n".join(lines + (["", "failures:", *failures] if failures else []))


def below(summary: dict[str, Any], min_pass: float) -> list[str]:
    """Every (scenario, rule) whose pass rate is under ``min_pass``."""
    return [
        f"{name}/{rule} {rate:.0%}"
        for name, s in summary.items()
        for rule, rate in s["rules"].items()
        if rate < min_pass
    ]


# -- the command -----------------------------------------------------------------------------------


async def evaluate(
    names: Sequence[str],
    *,
    runs: int,
    base: Settings,
    pace: float,
    bounds: Bounds = DEFAULT_BOUNDS,
    judge: bool = False,
    progress: Any = None,
) -> list[RunResult]:
    """Run every scenario ``runs`` times, one after the other (each in its own world)."""
    choice = model_choice(base)
    results: list[RunResult] = []
    for name in names:
        for i in range(runs):
            result = await run_one(name, base=base, choice=choice, pace=pace, bounds=bounds)
            if judge and not result.error:
                from demo.eval_judge import judge_transcript

                result.judge = await judge_transcript(
                    result.record,
                    sandbox=choice.sandbox,
                    model=choice.model,
                    api_key=base.anthropic_api_key,
                    base_url=choice.base_url,
                )
            results.append(result)
            if progress is not None:
                mark = (
                    "ok"
                    if result.ok
                    else "FAIL "
                    + "; ".join(f"{k}: {v.why}" for k, v in result.verdicts.items() if v.ok is False)
                )
                print(
                    f"{name} run {i + 1}/{runs}: {mark} ({result.seconds:.0f} s)", file=progress, flush=True
                )
    return results


class EvalCommand:
    """``concierge eval [--scenario S ...] [--runs N] [--json] [--min-pass F] [--prompt-file P] [--judge]``.

    Exit code 1 when any rule's pass rate in any scenario is under ``--min-pass``.
    """

    help = "run the scenarios against the configured model and check the conversation rules"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--scenario", action="append", choices=ALL, help="only this one (repeatable)")
        parser.add_argument("--runs", type=int, default=1, help="runs per scenario (default 1)")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        parser.add_argument(
            "--min-pass",
            type=float,
            help="exit 1 when a rule's pass rate is below this (1.0 with the sandbox model, else 0.8)",
        )
        parser.add_argument("--prompt-file", help="measure this prompt template instead of the product's")
        parser.add_argument("--print-prompt", action="store_true", help="print the product's prompt template")
        parser.add_argument("--judge", action="store_true", help="also score politeness and naturalness 1-5")
        parser.add_argument(
            "--pace", type=float, default=1.0, help="audio speed (1 = real time, as a real call)"
        )

    def run(self, args: argparse.Namespace) -> int:
        from agent.prompts import DEFAULT_TEMPLATE, load_prompt_template

        if args.print_prompt:
            print(DEFAULT_TEMPLATE)
            return 0
        base = Settings()
        if args.prompt_file:
            load_prompt_template(args.prompt_file)  # a broken file fails here, before any world starts
            base = base.model_copy(update={"agent_prompt_file": str(Path(args.prompt_file).resolve())})
        choice = model_choice(base)
        min_pass = args.min_pass if args.min_pass is not None else (1.0 if choice.sandbox else 0.8)
        names = args.scenario or list(ALL)
        print(
            f"concierge eval: {len(names)} scenario(s) x {args.runs} against {choice.describe()}",
            file=sys.stderr,
        )
        results = asyncio.run(
            evaluate(names, runs=args.runs, base=base, pace=args.pace, judge=args.judge, progress=sys.stderr)
        )
        summary = summarise(results)
        if args.json:
            print(
                json.dumps({"model": choice.describe(), "min_pass": min_pass, "scenarios": summary}, indent=2)
            )
        else:
            print(table(summary))
        low = below(summary, min_pass)
        if low:
            print(f"below --min-pass {min_pass:.0%}: {', '.join(low)}", file=sys.stderr)
        return 1 if low else 0


EVAL = EvalCommand()
