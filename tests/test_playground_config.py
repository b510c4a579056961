"""The playground's safety and model switch, checked by configuration (the real API is never called)."""

from __future__ import annotations

import pytest

from concierge.settings import Settings
from demo.playground import model_choice, sandbox_problems
from demo.world import SandboxWorld


def test_without_a_key_the_sandbox_model_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    choice = model_choice(Settings(_env_file=None))  # type: ignore[call-arg]
    assert not choice.real and choice.overrides == {}
    assert "sandbox model" in choice.label


def test_a_key_in_the_environment_switches_to_real_claude(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-key")
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    base = Settings(_env_file=None)  # type: ignore[call-arg]
    choice = model_choice(base)
    assert choice.real and choice.label.startswith(f"Claude {base.anthropic_model}")
    assert choice.overrides == {
        "anthropic_api_key": "sk-ant-test-not-a-key",
        "anthropic_base_url": "https://api.anthropic.com",
    }


def test_a_base_url_set_with_the_key_is_honoured_and_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-key")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://gateway.example/anthropic")
    choice = model_choice(Settings(_env_file=None))  # type: ignore[call-arg]
    assert choice.real and "via https://gateway.example/anthropic" in choice.label
    assert choice.overrides["anthropic_base_url"] == "https://gateway.example/anthropic"


async def test_with_a_key_only_the_model_leaves_the_sandbox() -> None:
    base = Settings(_env_file=None, anthropic_api_key="sk-ant-test-not-a-key")  # type: ignore[call-arg]
    choice = model_choice(base)
    world = await SandboxWorld(base=base).start()
    try:
        wired = world.settings(public_base_url="http://127.0.0.1:1", port=1, **choice.overrides)
    finally:
        await world.stop()
    assert wired.anthropic_base_url == "https://api.anthropic.com"
    assert wired.anthropic_api_key == "sk-ant-test-not-a-key"
    assert sandbox_problems(wired, choice) == []
    # The same settings without the key's permission: the remote model is refused too.
    assert sandbox_problems(wired, model_choice(Settings(_env_file=None, anthropic_api_key=""))) == [  # type: ignore[call-arg]
        "ANTHROPIC_BASE_URL is 'https://api.anthropic.com', not the local sandbox"
    ]


def test_any_real_service_address_refuses_the_playground() -> None:
    choice = model_choice(Settings(_env_file=None, anthropic_api_key=""))  # type: ignore[call-arg]
    local = Settings(_env_file=None).model_copy(  # type: ignore[call-arg]
        update={
            name: "http://127.0.0.1:9"
            for name in (
                "telegram_api_base_url", "slack_api_base_url", "twilio_api_base_url", "deepgram_http_url",
                "deepgram_ws_url", "graph_base_url", "anthropic_base_url",
            )
        }  # fmt: skip
    )
    assert sandbox_problems(local, choice) == []
    real_twilio = local.model_copy(update={"twilio_api_base_url": "https://api.twilio.com"})
    assert sandbox_problems(real_twilio, choice) == [
        "TWILIO_API_BASE_URL is 'https://api.twilio.com', not the local sandbox"
    ]
