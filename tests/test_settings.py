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
