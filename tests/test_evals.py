"""``concierge eval`` without a call: which model it picks, the prompt override, the tap, the report."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from factories import call_request, claude_agent

from agent.llm import build_anthropic
from agent.prompts import DEFAULT_TEMPLATE, build_system_prompt, check_template, load_prompt_template
from concierge.cli import build_parser, plugged_commands
from concierge.settings import Settings
from demo.eval_rules import Verdict
from demo.evals import ALL, RED_TEAM, below, model_choice
from demo.model_tap import Exchange, ModelTap, SseReader
from sandbox.anthropic import SandboxAnthropic
from storage.errors import ConfigError


@pytest.fixture(autouse=True)
def _no_model_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_MODEL", "AGENT_PROMPT_FILE"):
        monkeypatch.delenv(name, raising=False)


def settings(**kw: Any) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[call-arg]


# -- which model -----------------------------------------------------------------------------------


def test_without_a_key_the_eval_uses_the_sandbox_model() -> None:
    assert model_choice(settings()).sandbox


def test_a_key_alone_means_real_claude_at_anthropic() -> None:
    choice = model_choice(settings(anthropic_api_key="sk-ant-x", anthropic_model="claude-haiku-5-5"))
    assert not choice.sandbox
    assert choice.base_url == "https://api.anthropic.com" and choice.model == "claude-haiku-5-5"


def test_a_key_and_a_base_url_mean_that_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9999")
    choice = model_choice(settings())
    assert not choice.sandbox and choice.base_url == "http://127.0.0.1:9999"


def test_eval_is_plugged_into_the_cli_and_covers_the_red_team() -> None:
    assert "eval" in plugged_commands()
    args = build_parser().parse_args(["eval", "--scenario", "injection", "--runs", "3", "--json"])
    assert args.scenario == ["injection"] and args.runs == 3 and args.json
    assert set(RED_TEAM) <= set(ALL)


# -- the prompt override ---------------------------------------------------------------------------


def test_the_default_template_is_the_products_prompt() -> None:
    request = call_request()
    prompt = build_system_prompt(request, assistant_name="Robin", today=call_request().window.start_date)
    assert prompt.startswith("You are Robin, an AI assistant on a live phone call. You are calling Joe's")
    assert "ERRAND_JSON: {" in prompt.splitlines()[-1]
    assert check_template(DEFAULT_TEMPLATE) == DEFAULT_TEMPLATE


def test_a_prompt_file_changes_the_agents_prompt_and_keeps_the_errand_line(tmp_path: Path) -> None:
    path = tmp_path / "prompt.txt"
    path.write_text("You are $assistant_name. Book $service for $person at $business. Be brief.\n$intro\n")
    agent = claude_agent(None, prompt_template=load_prompt_template(str(path)))
    assert agent.system_prompt.startswith("You are Robin. Book haircut for Alex Doe at Joe's Barbershop.")
    assert agent.system_prompt.splitlines()[-1].startswith("ERRAND_JSON: ")


@pytest.mark.parametrize(
    ("body", "why"), [("Hi $nobody", "unknown placeholder(s) nobody"), ("Costs $5", "write $$")]
)
def test_a_broken_prompt_file_fails_naming_the_setting(tmp_path: Path, body: str, why: str) -> None:
    path = tmp_path / "prompt.txt"
    path.write_text(body)
    with pytest.raises(ConfigError, match="AGENT_PROMPT_FILE") as caught:
        load_prompt_template(str(path))
    assert why in str(caught.value)
    with pytest.raises(ConfigError, match="AGENT_PROMPT_FILE"):
        load_prompt_template(str(tmp_path / "missing.txt"))


# -- the tap ---------------------------------------------------------------------------------------


def test_the_sse_reader_rebuilds_a_message_fed_in_odd_pieces() -> None:
    events = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 10, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "check."}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "name": "end_call"},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"a": '},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": "1}"},
        },
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 7}},
        {"type": "message_stop"},
    ]
    wire = "".join(f"event: {e['type']}\r\ndata: {json.dumps(e)}\r\n\r\n" for e in events).encode()
    x = Exchange(request={})
    reader = SseReader(x)
    for i in range(0, len(wire), 7):
        reader.feed(wire[i : i + 7])
    assert x.blocks == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "name": "end_call", "input": {"a": 1}},
    ]
    assert x.usage == {"input_tokens": 10, "output_tokens": 7} and x.complete


@pytest.fixture
async def upstream() -> AsyncIterator[SandboxAnthropic]:
    server = SandboxAnthropic(
        api_key="k", responder=lambda body: [{"type": "text", "text": "Let me check."},
                                             {"type": "tool_use", "name": "check_availability",
                                              "input": {"start": "2026-12-01T14:00"}}],
    )  # fmt: skip
    await server.start()
    yield server
    await server.stop()


async def test_the_tap_passes_the_sdk_through_and_records_the_round(upstream: SandboxAnthropic) -> None:
    tap = await ModelTap(upstream.base_url).start()
    client = build_anthropic("k", tap.base_url)
    try:
        async with client.messages.stream(
            model="claude-haiku-5-5", max_tokens=50, messages=[{"role": "user", "content": "2 pm?"}]
        ) as stream:
            final = await stream.get_final_message()
    finally:
        await client.close()
        await tap.stop()
    assert [b.type for b in final.content] == ["text", "tool_use"]  # the SDK got the answer whole
    assert len(upstream.requests) == 1 and len(tap.exchanges) == 1
    x = tap.exchanges[0]
    assert x.status == 200 and x.complete and x.request["messages"][0]["content"] == "2 pm?"
    assert x.blocks[1]["name"] == "check_availability" and x.blocks[1]["input"] == {
        "start": "2026-12-01T14:00"
    }
    assert x.usage == upstream.usages[0]


# -- the report's threshold ------------------------------------------------------------------------


def test_below_names_each_rule_under_the_threshold() -> None:
    summary = {"clash": {"rules": {"discloses_first": 1.0, "filler_before_tools": 0.6}}}
    assert below(summary, 1.0) == ["clash/filler_before_tools 60%"]
    assert below(summary, 0.6) == []
    assert Verdict(None).ok is None  # not applicable counts as a pass (see summarise)


# -- the judge -------------------------------------------------------------------------------------


def test_the_judges_answer_is_parsed_and_clamped() -> None:
    from demo.eval_judge import parse_scores

    got = parse_scores('Here: {"politeness": 7, "naturalness": 0, "why": "fine"}')
    assert got == {"politeness": 5, "naturalness": 1, "why": "fine"}
    assert "error" in parse_scores("I cannot grade this.")


async def test_the_judge_asks_the_configured_model_with_the_rubric() -> None:
    from datetime import date

    from demo.eval_judge import judge_transcript
    from demo.eval_rules import Line, Record
    from storage.models import BookingWindow

    window = BookingWindow(date(2026, 12, 1), date(2026, 12, 4))
    record = Record(
        "happy", "booked", "booked", "", window, "UTC", "UTC", lines=[Line("assistant", "Thank you!")]
    )
    scores = await judge_transcript(record, sandbox=True, model="claude-haiku-5-5")
    assert scores["politeness"] == 5 and scores["naturalness"] == 4
