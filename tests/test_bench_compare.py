"""``bench.compare``: its table and ratio logic on fixed inputs, and a one-call run against Pipecat.

The run needs ``.venv-peer`` (``make bench-peer``); without it the test is skipped, never faked.
Figures are never asserted, only that every variant ran, booked and reported every key.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.compare import PEER_PYTHON, ROOT, Measure, holds, parse_args, ratio, ratios, summarize, table


def _turn(kind: str, gap: float, content: float | None) -> dict[str, object]:
    return {"kind": kind, "gap_ms": gap, "content_gap_ms": content}


def _variant(gap: float, cpu: float, rss: float, max_calls: int) -> dict[str, object]:
    return {
        "calls": 2, "booked": 2, "heard_gap_ms": {"p50": gap, "p95": gap * 2},
        "heard_content_gap_ms": {"p50": gap * 3, "p95": None},
        "cpu_ms_per_call_second": cpu, "peak_rss_mb": rss, "max_calls": max_calls,
    }  # fmt: skip


def test_ratios_are_concierge_over_each_peer() -> None:
    results = {
        "concierge": _variant(300.0, 10.0, 200.0, 20),
        "concierge_plain": _variant(900.0, 10.0, 200.0, 20),
        "pipecat": _variant(600.0, 40.0, 400.0, 10),
        "pipecat_flux": {"error": "no .venv-peer"},
    }
    out = ratios(results)
    assert set(out) == {"concierge/pipecat"}  # a failed variant, or our own other variant, has no ratio
    r = out["concierge/pipecat"]
    assert r["heard_gap_p50"] == 0.5 and r["heard_gap_p95"] == 0.5
    assert r["heard_content_gap_p50"] == 0.5
    assert r["heard_content_gap_p95"] is None  # a side without the figure gives no ratio
    assert r["cpu_ms_per_call_second"] == 0.25 and r["peak_rss_mb"] == 0.5 and r["max_calls"] == 2.0
    assert ratio(1.0, 0.0) is None and ratio(None, 2.0) is None

    text = table({"variants": results, "ratios": out})
    lines = text.splitlines()
    assert lines[0].split() == ["concierge", "concierge_plain", "pipecat", "pipecat_flux"]
    assert lines[1].split() == ["calls", "/", "booked", "2", "/", "2", "2", "/", "2", "2", "/", "2", "error"]
    assert any(line.split()[:4] == ["heard", "gap", "p50", "ms"] and "300.0" in line for line in lines)
    cpu = [line.split() for line in lines if line.strip().startswith("cpu_ms_per_call_second")]
    assert cpu == [["cpu_ms_per_call_second", "0.2"]]


def test_variants_are_checked_before_anything_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--variants", "concierge_plain,pipecat"]).variants == ["concierge_plain", "pipecat"]
    with pytest.raises(SystemExit):
        parse_args(["--variants", "concierge,livekit"])
    assert "unknown variants: livekit" in capsys.readouterr().err


def test_summary_and_holding_rule_come_from_the_ear() -> None:
    heard = [
        {"sid": "CA1", "seconds": 20.0, "turns": [_turn("opening", 400.0, 600.0), _turn("tool", 300, None)]},
        {"sid": "CA2", "seconds": 30.0, "turns": [_turn("opening", 500.0, 700.0)]},
    ]
    m = Measure(calls=2, heard=heard, booked=2, cpu_ms=1000.0, rss_mb=123.4, seconds=31.0)
    d = summarize(m)
    assert d["cpu_ms_per_call_second"] == 20.0  # 1000 ms over 50 s of calls
    assert d["turns_heard"] == 3 and d["call_seconds"] == 50.0
    assert d["heard_gap_ms"]["n"] == 3 and d["heard_gap_ms"]["p50"] == 400.0
    assert d["heard_content_gap_ms"]["n"] == 2  # the tool turn never got past its fixed phrases
    assert d["heard_gap_ms"]["by_kind"]["opening"]["n"] == 2
    assert holds(d, turns_per_call=1, max_gap_p95_ms=600.0)
    assert not holds(d, turns_per_call=2, max_gap_p95_ms=600.0)  # a call answered fewer turns
    assert not holds(d, turns_per_call=1, max_gap_p95_ms=450.0)  # the gap is over budget
    assert not holds({**d, "booked": 1}, turns_per_call=1, max_gap_p95_ms=600.0)
    assert not holds({**d, "unfinished": 1}, turns_per_call=1, max_gap_p95_ms=600.0)  # timed out


@pytest.mark.slow
@pytest.mark.skipif(not PEER_PYTHON.exists(), reason="no .venv-peer: `make bench-peer` builds Pipecat's venv")
def test_one_call_each_against_pipecat() -> None:
    argv = [sys.executable, "-m", "bench.compare", "--calls", "1", "--levels", "", "--json"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    result = json.loads(done.stdout)
    assert set(result["variants"]) == {"concierge", "pipecat", "pipecat_flux"}
    for name, v in result["variants"].items():
        assert "error" not in v, (name, v, done.stderr[-2000:])
        assert v["calls"] == 1 and v["booked"] == 1 and v["unfinished"] == 0, (name, v)
        for key in ("heard_gap_ms", "heard_content_gap_ms"):
            assert v[key]["n"] >= 2 and v[key]["p50"] is not None, (name, key)
        assert v["cpu_ms_per_call_second"] > 0 and v["peak_rss_mb"] > 0 and v["max_calls"] == 1
    assert set(result["ratios"]) == {"concierge/pipecat", "concierge/pipecat_flux"}
    for r in result["ratios"].values():
        assert set(r) == {
            "heard_gap_p50", "heard_gap_p95", "heard_content_gap_p50", "heard_content_gap_p95",
            "cpu_ms_per_call_second", "peak_rss_mb", "max_calls",
        }  # fmt: skip
        assert r["cpu_ms_per_call_second"] is not None
    assert result["versions"]["pipecat_ai"]
