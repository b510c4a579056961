"""``concierge eval`` against the sandbox model: every scenario once, every rule must hold.

Each scenario runs in its own sandbox world through the real product, with audio paced 4x
faster than real time as in the other end-to-end tests; the model is the sandbox's (no key is
configured here whatever the environment holds).
"""

from __future__ import annotations

import json

import pytest

from concierge.settings import Settings
from demo import evals
from demo.eval_rules import DEFAULT_BOUNDS

pytestmark = [pytest.mark.slow]


@pytest.fixture
def base(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "AGENT_PROMPT_FILE"):
        monkeypatch.delenv(name, raising=False)
    return Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize("name", evals.ALL)
async def test_every_rule_holds_with_the_sandbox_model(base: Settings, name: str) -> None:
    choice = evals.model_choice(base)
    assert choice.sandbox
    pace = 16.0 if name == "long_hold" else 4.0  # two minutes of hold music: 7.5 s of waiting, not 30
    result = await evals.run_one(name, base=base, choice=choice, pace=pace, bounds=DEFAULT_BOUNDS)
    failed = {rule: v.why for rule, v in result.verdicts.items() if v.ok is False}
    assert not failed, failed
    if result.record.lines:  # a call was held: the ear timed it and the tap counted its tokens
        assert result.heard_gaps_ms and result.tokens_in > 0 and result.tokens_out > 0
        assert result.record.rounds


def test_the_command_reports_json_and_exits_zero(
    base: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from concierge.cli import main

    monkeypatch.chdir("/")  # no .env read from the checkout
    code = main(["eval", "--scenario", "happy", "--pace", "4", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    happy = report["scenarios"]["happy"]
    assert report["model"] == "the sandbox model" and happy["pass_rate"] == 1.0
    assert set(happy["rules"]) == set(evals.eval_rules.RULES) and happy["median_turns"] >= 4
