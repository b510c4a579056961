"""The sandbox world: every outside service started on loopback, and settings pointing at it.

This is where ``sandbox/`` meets the product, outside it: ``concierge serve
--sandbox``, ``concierge demo``, the end-to-end tests and the benchmark all
start a ``SandboxWorld`` and hand the settings it produces, plus the Graph
credential the sandbox accepts, to the ordinary ``Concierge``. Credentials
already set in the environment are used as given (so an outside client can
sign requests with them); sandbox defaults fill the rest.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.core.credentials import AccessToken

from concierge.settings import Settings
from sandbox.anthropic import SandboxAnthropic
from sandbox.deepgram import SandboxDeepgram
from sandbox.graph import SandboxGraph
from sandbox.slack import SandboxSlack
from sandbox.telegram import SandboxTelegram
from sandbox.twilio import SandboxTwilio

#: Sandbox defaults for every credential (never valid anywhere real).
DEFAULTS: dict[str, str] = {
    "telegram_bot_token": "123456:SANDBOX-telegram-token",
    "telegram_webhook_secret": "sandbox-telegram-secret",
    "slack_bot_token": "xoxb-sandbox-slack-token",
    "slack_signing_secret": "sandbox-slack-signing-secret",
    "twilio_account_sid": "AC" + "0" * 32,
    "twilio_auth_token": "sandbox-twilio-auth-token",
    "twilio_from_number": "+14155550199",
    "deepgram_api_key": "sandbox-deepgram-key",
    "anthropic_api_key": "sandbox-anthropic-key",
    "graph_tenant_id": "sandbox-tenant",
    "graph_client_id": "sandbox-client",
    "graph_client_secret": "sandbox-secret",
    "graph_user_id": "alex@sandbox.example",
}

#: The sandbox chat user (and the Slack team) the demo and the tests write as.
DEMO_TELEGRAM_USER = 4242
DEMO_SLACK_USER = "U0DEMO"
DEMO_SLACK_TEAM = "T0DEMO"
GRAPH_TOKEN = "sandbox-graph-token"


class StaticTokenCredential:
    """An async token credential that always presents the same bearer token.

    The sandbox Graph accepts one fixed token and has no sign-in service, so the
    app is handed this instead of the client-secret credential it builds itself.
    """

    def __init__(self, token: str, expires_on: int = 4_102_444_800) -> None:
        self._token = AccessToken(token, expires_on)

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return self._token

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> StaticTokenCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def sandbox_graph_credential() -> StaticTokenCredential:
    """The token the sandbox Graph accepts.

    Real deployments use ``azure.identity.aio.ClientSecretCredential``, which fetches
    tokens from Microsoft Entra ID — a service the sandbox does not stand in for.
    """
    return StaticTokenCredential(GRAPH_TOKEN)


@dataclass
class SandboxWorld:
    """Every sandbox service, started together.

    Args:
        pace: sandbox Twilio audio pacing (1.0 = real time).
        stt_latency_ms / tts_ttfb_ms / llm_ttft_ms: provider latencies to simulate.
    """

    pace: float = 1.0
    stt_latency_ms: float = 0.0
    tts_ttfb_ms: float = 0.0
    llm_ttft_ms: float = 0.0
    base: Settings = field(default_factory=Settings)
    creds: dict[str, str] = field(default_factory=dict)
    _started: list[Any] = field(default_factory=list)

    async def start(self) -> SandboxWorld:
        """Start every service on 127.0.0.1 (free ports), using set credentials or defaults."""
        self.creds = {k: getattr(self.base, k) or v for k, v in DEFAULTS.items()}
        c = self.creds
        self.telegram = SandboxTelegram(token=c["telegram_bot_token"])
        self.slack = SandboxSlack(
            bot_token=c["slack_bot_token"], signing_secret=c["slack_signing_secret"], team_id=DEMO_SLACK_TEAM
        )
        self.twilio = SandboxTwilio(
            account_sid=c["twilio_account_sid"], auth_token=c["twilio_auth_token"], pace=self.pace
        )
        self.deepgram = SandboxDeepgram(
            api_key=c["deepgram_api_key"], stt_latency_ms=self.stt_latency_ms, tts_ttfb_ms=self.tts_ttfb_ms
        )
        self.anthropic = SandboxAnthropic(api_key=c["anthropic_api_key"], ttft_ms=self.llm_ttft_ms)
        self.graph = SandboxGraph(user_id=c["graph_user_id"], token=GRAPH_TOKEN)
        for service in (self.telegram, self.slack, self.twilio, self.deepgram, self.anthropic, self.graph):
            await service.start()
            self._started.append(service)
        return self

    async def stop(self) -> None:
        for service in reversed(self._started):
            with contextlib.suppress(Exception):
                await service.stop()
        self._started.clear()

    def endpoints(self) -> dict[str, str]:
        return {
            "telegram": self.telegram.base_url,
            "slack": self.slack.base_url,
            "twilio": self.twilio.base_url,
            "deepgram": self.deepgram.ws_url,
            "anthropic": self.anthropic.base_url,
            "graph": self.graph.base_url,
        }

    def settings(
        self, *, public_base_url: str, port: int, database_path: str | None = None, **extra: Any
    ) -> Settings:
        """``base`` settings pointed at this world; ``extra`` overrides any field."""
        db = database_path or str(Path(tempfile.mkdtemp(prefix="concierge-")) / "concierge.db")
        update: dict[str, Any] = {
            **self.creds,
            "telegram_api_base_url": self.telegram.base_url,
            "telegram_mode": "polling",
            "telegram_allowed_users": self.base.telegram_allowed_users or [str(DEMO_TELEGRAM_USER)],
            "slack_api_base_url": self.slack.base_url,
            "slack_app_token": "",
            "slack_allowed_users": self.base.slack_allowed_users or [DEMO_SLACK_USER],
            "slack_allowed_teams": self.base.slack_allowed_teams,
            "twilio_api_base_url": self.twilio.base_url,
            "public_base_url": public_base_url,
            "port": port,
            "deepgram_http_url": self.deepgram.http_url,
            "deepgram_ws_url": self.deepgram.ws_url,
            "anthropic_base_url": self.anthropic.base_url,
            "graph_base_url": self.graph.base_url,
            "database_url": f"sqlite:///{db}",
            **extra,
        }
        return self.base.model_copy(update=update)
