"""Settings: every variable is documented, lists parse, missing credentials are named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from concierge.settings import REQUIRED, Settings
from storage.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def test_every_setting_is_documented_in_env_example() -> None:
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z_]+)=", example, re.M))
    assert documented == {name.upper() for name in Settings.model_fields}
    # each variable has a comment line right above its block
    lines = example.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[A-Z_]+=", line):
            j = i - 1
            while j >= 0 and re.match(r"^[A-Z_]+=", lines[j]):
                j -= 1
            assert lines[j].startswith("#"), f"{line} has no comment"


def test_comma_lists_and_database_path(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("TELEGRAM_ALLOWED_USERS", " 1, 2 ,,3")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///tmp/x.db")
    s = Settings(_env_file=None)
    assert s.telegram_allowed_users == ["1", "2", "3"]
    assert s.database_path == "tmp/x.db"


def test_require_names_every_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC123")
    s = Settings(_env_file=None)
    with pytest.raises(ConfigError) as err:
        s.require("twilio", "deepgram")
    message = str(err.value)
    for name in ("TWILIO_AUTH_TOKEN", "TWILIO_FROM_NUMBER", "PUBLIC_BASE_URL", "DEEPGRAM_API_KEY"):
        assert name in message
    assert "TWILIO_ACCOUNT_SID" not in message
    assert s.missing("graph") == list(REQUIRED["graph"])


def test_bad_database_url_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("DATABASE_URL", "postgres://x")
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        _ = Settings(_env_file=None).database_path


@pytest.mark.parametrize(
    ("model", "env", "chunk_bytes"),
    [
        ("flux-general-en", "", 640),  # Deepgram's 80 ms for Flux
        ("nova-3", "", 320),
        ("flux-general-en", "20", 160),  # an explicit size wins
    ],
)
def test_stt_chunk_defaults_to_the_models_recommendation(
    monkeypatch: pytest.MonkeyPatch, model: str, env: str, chunk_bytes: int
) -> None:
    from telephony.speech import SpeechClient

    _clean_env(monkeypatch)
    monkeypatch.setenv("DEEPGRAM_STT_MODEL", model)
    monkeypatch.setenv("STT_CHUNK_MS", env)
    s = Settings(_env_file=None)
    assert s.stt_chunk_ms == (int(env) if env else None)
    client = SpeechClient(
        api_key="k", http_url="http://127.0.0.1:1", ws_url="ws://127.0.0.1:1",
        stt_model=s.deepgram_stt_model, stt_chunk_ms=s.stt_chunk_ms,
    )  # fmt: skip
    assert client.stt_chunk_bytes == chunk_bytes


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LEASE_SECONDS": "600", "MAX_CALL_SECONDS": "600"}, "LEASE_SECONDS"),
        ({"LEASE_SECONDS": "300"}, "LEASE_SECONDS"),
        ({"MAX_CONCURRENT_CALLS": "0"}, "MAX_CONCURRENT_CALLS"),
        ({"MAX_ATTEMPTS": "0"}, "MAX_ATTEMPTS"),
        ({"MAX_CALL_SECONDS": "-1"}, "MAX_CALL_SECONDS"),
        ({"MAX_QUEUED_PER_USER": "0"}, "MAX_QUEUED_PER_USER"),
        ({"ERRANDS_PER_USER_PER_HOUR": "0"}, "ERRANDS_PER_USER_PER_HOUR"),
        ({"RETRY_BACKOFF_MINUTES": "-5"}, "RETRY_BACKOFF_MINUTES"),
        ({"SILENCE_TIMEOUT_SECONDS": "0"}, "SILENCE_TIMEOUT_SECONDS"),
        ({"PUBLIC_BASE_URL": "http://concierge.example.com"}, "PUBLIC_BASE_URL"),
        ({"PUBLIC_BASE_URL": "http://0.0.0.0:8080"}, "PUBLIC_BASE_URL"),
        ({"PUBLIC_BASE_URL": "ftp://concierge.example.com"}, "PUBLIC_BASE_URL"),
        ({"CALL_COUNTRIES": "US,XX"}, "CALL_COUNTRIES"),
        ({"CALLEE_LOCAL_HOURS": "21:00-08:00"}, "CALLEE_LOCAL_HOURS"),
        ({"CALLEE_LOCAL_HOURS": "8am-9pm"}, "CALLEE_LOCAL_HOURS"),
    ],
)
def test_unsafe_values_stop_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    _clean_env(monkeypatch)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=named):
        Settings(_env_file=None)


def test_settings_built_in_code_are_checked_again_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    ok = Settings(_env_file=None)
    ok.check()
    copied = ok.model_copy(update={"lease_seconds": 60, "max_attempts": 0})  # skips validation
    with pytest.raises(ConfigError) as err:
        copied.check()
    assert "LEASE_SECONDS" in str(err.value) and "MAX_ATTEMPTS" in str(err.value)


@pytest.mark.parametrize(
    "url",
    ["https://concierge.example.com", "http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:9"],
)
def test_public_base_url_https_or_loopback(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    _clean_env(monkeypatch)
    monkeypatch.setenv("PUBLIC_BASE_URL", url)
    assert Settings(_env_file=None).public_base_url == url


def test_calling_rule_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    _clean_env(monkeypatch)
    s = Settings(_env_file=None)
    assert s.callee_local_hours == "08:00-21:00" and str(s.callee_window) == "08:00-21:00"
    assert s.call_regions == {"US"}  # no TWILIO_FROM_NUMBER: PERSON_REGION
    monkeypatch.setenv("TWILIO_FROM_NUMBER", "+442079460000")
    monkeypatch.setenv("PERSON_REGION", "GB")
    s = Settings(_env_file=None)
    assert s.call_regions == {"GB"}  # Twilio's default: the from number's country
    assert s.destination_policy.home_region == "GB"
    monkeypatch.setenv("CALL_COUNTRIES", " gb, ie ,")
    monkeypatch.setenv("BLOCKED_NUMBERS", "+441234567890, +44909*")
    s = Settings(_env_file=None)
    assert s.call_regions == {"GB", "IE"}
    assert s.destination_policy.blocked == ("+441234567890", "+44909*")
