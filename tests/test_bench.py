"""The benchmark keeps working: two calls through the real application, every figure reported.

Timing figures are never asserted (they depend on the machine); only that the run completes,
the calls reached an outcome, and each reported key is there with a value.
"""

from __future__ import annotations

import pytest

from bench.latency import parse_args, run, table

pytestmark = [
    pytest.mark.slow,  # sandbox child processes
    pytest.mark.filterwarnings("ignore:.*BasicAuth.*:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*'auth' parameter.*:DeprecationWarning"),
]

KEYS = ("calls", "turns", "server_overhead_ms", "barge_in_ms", "frame_jitter_ms", "cpu_ms_per_call_second",
        "peak_rss_mb", "heard_gap_ms", "heard_content_gap_ms", "stages_ms")  # fmt: skip


async def test_two_calls_report_every_figure() -> None:
    result = await run(parse_args(["--calls", "2", "--pace", "4", "--ramp", "0", "--json", "--no-freeze"]))
    for key in KEYS:
        assert key in result, key
    assert result["calls"] == 2
    assert sum(result["outcomes"].values()) == 2
    assert result["turns"] >= 2  # each call answered the callee at least once
    for p in ("p50", "p95", "p99", "max"):
        assert result["server_overhead_ms"][p] is not None
    assert result["barge_in_ms"]["p50"] is not None and result["barge_in_ms"]["p99"] is not None
    assert result["frame_jitter_ms"]["p99"] is not None
    assert result["frames"] > 0
    assert result["cpu_ms_per_call_second"] > 0
    assert result["peak_rss_mb"] > 0
    # The sandbox's ear: every call heard its opening, the reply after the barge-in and the lookup.
    for key in ("heard_gap_ms", "heard_content_gap_ms"):
        heard = result[key]
        assert heard["n"] == 6, heard
        assert heard["p50"] is not None and heard["p95"] is not None
        assert set(heard["by_kind"]) == {"opening", "answer", "tool", "barge_in"}
        for kind in ("opening", "tool", "barge_in"):
            assert heard["by_kind"][kind]["n"] == 2 and heard["by_kind"][kind]["p50"] is not None, (key, kind)
        assert heard["by_kind"]["answer"] == {"p50": None, "p95": None, "max": None, "n": 0}
    # Each heard turn cut at the product's marks: every stage of the turns that replied to speech.
    stages = result["stages_ms"]
    assert set(stages) == {"opening", "answer", "tool", "barge_in"}
    for kind in ("opening", "tool", "barge_in"):
        assert stages[kind]["n"] == 2, (kind, stages[kind])
        assert all(v is not None for v in stages[kind].values()), (kind, stages[kind])
    assert "server overhead ms" in table(result) and "heard content gap ms" in table(result)
    assert "heard gap by stage" in table(result)
    early = result["early_requests"]  # the default model is Flux, started on eager end of turn
    assert early["started"] >= early["discarded"] >= 0 and early["started"] > 0
