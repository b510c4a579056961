"""All configuration, read once from the environment and ``.env``.

Components never read the environment themselves: they take explicit keyword
arguments built from this object. ``Settings.require(component)`` is called
at start-up so a missing credential fails early, naming the variables,
instead of deep inside a call.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

import phonenumbers
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.phone import DestinationPolicy
from concierge.calling_window import DailyWindow
from storage.db import is_postgres_url
from storage.errors import ConfigError

CommaList = Annotated[list[str], NoDecode]

#: Variables each component needs before it can start.
REQUIRED: dict[str, tuple[str, ...]] = {
    "telegram": ("TELEGRAM_BOT_TOKEN",),
    "slack": ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"),
    "twilio": ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM_NUMBER", "PUBLIC_BASE_URL"),
    "deepgram": ("DEEPGRAM_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "graph": ("GRAPH_TENANT_ID", "GRAPH_CLIENT_ID", "GRAPH_CLIENT_SECRET", "GRAPH_USER_ID"),
}

#: What each component is for, in plain words (used by ``concierge doctor``).
PURPOSE: dict[str, str] = {
    "telegram": "Telegram bot (chat front end)",
    "slack": "Slack /call command (chat front end)",
    "twilio": "Twilio phone calls",
    "deepgram": "Deepgram speech-to-text and text-to-speech",
    "anthropic": "Claude conversation model",
    "graph": "Outlook calendar (Microsoft Graph)",
}


class Settings(BaseSettings):
    """Concierge settings; each field is documented in ``.env.example``."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Chat front ends
    telegram_bot_token: str = ""
    telegram_mode: Literal["polling", "webhook"] = "polling"
    telegram_webhook_secret: str = ""
    telegram_api_base_url: str = "https://api.telegram.org"
    telegram_allowed_users: CommaList = Field(default_factory=list)

    slack_bot_token: str = ""
    slack_signing_secret: str = ""
    slack_app_token: str = ""
    slack_api_base_url: str = "https://slack.com/api/"
    slack_allowed_users: CommaList = Field(default_factory=list)
    slack_allowed_teams: CommaList = Field(default_factory=list)

    # Telephony
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    twilio_from_number: str = ""
    twilio_api_base_url: str = "https://api.twilio.com"
    public_base_url: str = ""

    # Speech
    deepgram_api_key: str = ""
    deepgram_http_url: str = "https://api.deepgram.com"
    deepgram_ws_url: str = "wss://api.deepgram.com"
    deepgram_stt_model: str = "flux-general-en"
    deepgram_tts_model: str = "aura-2-thalia-en"
    #: Flux models only (``flux-general-en``): the end-of-turn confidence that ends the callee's
    #: turn, and the lower one at which the conversation model is started early (empty: never).
    #: Early starts hide the model's time to first token; a guess that was wrong costs one
    #: model request that is thrown away.
    deepgram_eot_threshold: float = Field(default=0.7, ge=0.5, le=0.9)
    deepgram_eager_eot_threshold: float | None = Field(default=0.5, ge=0.3, le=0.9)
    #: Inbound call audio is forwarded to speech-to-text in chunks of this many ms (20 = every
    #: Twilio frame). Empty: what Deepgram recommends for the model, 80 ms for Flux (it listens
    #: in 80 ms steps) and 40 for Nova (half the sends of frame-by-frame for at most 20 ms more
    #: before a transcript). Websocket sends are the biggest per-call CPU cost.
    stt_chunk_ms: int | None = Field(default=None, ge=20, le=250)

    # Conversation model
    anthropic_api_key: str = ""
    anthropic_base_url: str = "https://api.anthropic.com"
    anthropic_model: str = "claude-haiku-5-5"
    #: For evals (``concierge eval --prompt-file``): the phone model's prompt read from this file
    #: instead of the product's own (``agent.prompts.DEFAULT_TEMPLATE``). Empty in production.
    agent_prompt_file: str = ""

    # Calendar
    graph_tenant_id: str = ""
    graph_client_id: str = ""
    graph_client_secret: str = ""
    graph_user_id: str = ""
    graph_base_url: str = "https://graph.microsoft.com/v1.0"

    # Server and storage
    host: str = "127.0.0.1"
    port: int = 8080
    #: This node's name among the servers sharing the database (empty: see :attr:`node`).
    node_id: str = ""
    database_url: str = "sqlite:///./concierge.db"

    # Calling policy
    default_business_hours: str = "mon-fri 09:00-17:00; sat 10:00-14:00"
    max_concurrent_calls: int = 5
    max_call_seconds: int = 600
    max_attempts: int = 3
    retry_backoff_minutes: int = 30
    silence_timeout_seconds: float = 8.0
    #: Seconds a call is kept on hold (the assistant agreed to wait) without the callee's voice.
    hold_max: float = 300.0
    #: Seconds the line is held while the person is asked a callee's question over chat (0: off).
    live_ask_timeout: float = 60.0
    lease_seconds: int = 900
    #: The longest a node's dispatcher sleeps without looking at the queue: other nodes cannot
    #: wake it (a place under the cap freed there, a dead node's calls to recover).
    queue_poll_seconds: float = 5.0
    blocked_numbers: CommaList = Field(default_factory=list)
    max_queued_per_user: int = 10
    errands_per_user_per_hour: int = 20
    #: Calls one number may receive in any 24 hours, across all people and errands.
    max_calls_per_number_per_day: int = 3
    #: ISO 3166 regions that may be called; empty = the region of TWILIO_FROM_NUMBER.
    call_countries: CommaList = Field(default_factory=list)
    #: The callee's own local time of day when calls are allowed, in every zone the number may be in.
    callee_local_hours: str = "08:00-21:00"

    # What one call may do
    min_lead_minutes: int = Field(default=60, ge=0)
    max_turns_per_call: int = Field(default=40, ge=1)
    max_tool_calls_per_round: int = Field(default=4, ge=1)
    max_tool_calls_per_call: int = Field(default=30, ge=1)
    max_dtmf_presses_per_call: int = Field(default=24, ge=0)
    transcript_notice: bool = True
    #: The first words (disclosure + the errand in one sentence) are built from the errand and
    #: rendered while the phone rings, then played as soon as the callee's greeting ends, without a
    #: model round (a phone menu or a request to hold is still the model's to answer).
    fixed_opening: bool = True
    #: "Let me check." / "Sure." from pre-rendered audio when the model starts a calendar lookup
    #: without words, instead of asking the model to say them.
    acknowledgements: bool = True
    #: On an answering machine that has finished its greeting (Twilio AMD ``machine_end_beep`` or
    #: ``machine_end_silence``) leave one fixed message (the disclosure, the errand, TWILIO_FROM_NUMBER
    #: to call back), then hang up; the errand is retried either way. Off: hang up at once.
    voicemail_message: bool = True

    # The person and the assistant
    person_name: str = "Alex Doe"
    person_timezone: str = "America/Los_Angeles"
    person_region: str = "US"
    assistant_name: str = "Robin"

    @field_validator("deepgram_eager_eot_threshold", "stt_chunk_ms", mode="before")
    @classmethod
    def _off_is_none(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "off", "none", "false"):
            return None
        return value

    @field_validator(
        "telegram_allowed_users",
        "slack_allowed_users",
        "slack_allowed_teams",
        "blocked_numbers",
        "call_countries",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, v: object) -> object:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("call_countries")
    @classmethod
    def _known_regions(cls, v: list[str]) -> list[str]:
        regions = [r.upper() for r in v]
        unknown = [r for r in regions if r not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"CALL_COUNTRIES: unknown ISO 3166 region(s) {', '.join(unknown)} (e.g. US,CA)")
        return regions

    @field_validator("callee_local_hours")
    @classmethod
    def _calling_hours(cls, v: str) -> str:
        try:
            return str(DailyWindow.parse(v))
        except ValueError as e:
            raise ValueError(f"CALLEE_LOCAL_HOURS: {e}") from e

    @model_validator(mode="after")
    def _bounded(self) -> Settings:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems.values()))
        return self

    def problems(self) -> dict[str, str]:
        """Values that are each well-formed but unsafe: variable name → one sentence naming it.

        Checked when settings are read, and again by :meth:`check` for settings built
        with ``model_copy`` (which skips validation), as the sandbox and demo do.
        """
        out: dict[str, str] = {}
        for name in (
            "max_concurrent_calls",
            "max_call_seconds",
            "max_attempts",
            "lease_seconds",
            "max_queued_per_user",
            "errands_per_user_per_hour",
            "max_calls_per_number_per_day",
        ):
            if getattr(self, name) < 1:
                out[name.upper()] = f"{name.upper()} must be at least 1 (got {getattr(self, name)})"
        if self.retry_backoff_minutes < 0:
            out["RETRY_BACKOFF_MINUTES"] = (
                f"RETRY_BACKOFF_MINUTES must not be negative (got {self.retry_backoff_minutes})"
            )
        if self.silence_timeout_seconds <= 0:
            out["SILENCE_TIMEOUT_SECONDS"] = (
                f"SILENCE_TIMEOUT_SECONDS must be above 0 (got {self.silence_timeout_seconds})"
            )
        if not 0.1 <= self.queue_poll_seconds <= 300:
            out["QUEUE_POLL_SECONDS"] = (
                f"QUEUE_POLL_SECONDS must be between 0.1 and 300 (got {self.queue_poll_seconds})"
            )
        if self.hold_max <= 0:
            out["HOLD_MAX"] = f"HOLD_MAX must be above 0 (got {self.hold_max})"
        if self.live_ask_timeout < 0:
            out["LIVE_ASK_TIMEOUT"] = f"LIVE_ASK_TIMEOUT must not be negative (got {self.live_ask_timeout})"
        if self.lease_seconds <= self.max_call_seconds and "LEASE_SECONDS" not in out:
            out["LEASE_SECONDS"] = (
                f"LEASE_SECONDS ({self.lease_seconds}) must exceed MAX_CALL_SECONDS"
                f" ({self.max_call_seconds}): a lease that ran out mid-call would let another"
                " dispatcher take the errand over"
            )
        if self.node_id and not NODE_ID_RE.fullmatch(self.node_id):
            out["NODE_ID"] = (
                f"NODE_ID must be 1-{NODE_ID_MAX} letters, digits, '.', '_', ':' or '-',"
                f" starting with a letter or digit (got {self.node_id[:80]!r})"
            )
        if not (self.database_url.startswith("sqlite:///") or self.uses_postgres):
            out["DATABASE_URL"] = (
                "DATABASE_URL must be sqlite:///path/to/file.db (one node) or postgresql://"
                f"user:password@host:5432/dbname (several nodes), got {self.database_url_shown!r}"
            )
        url_problem = _public_url_problem(self.public_base_url)
        if url_problem:
            out["PUBLIC_BASE_URL"] = url_problem
        return out

    def check(self) -> None:
        """Raise :class:`ConfigError` naming every variable :meth:`problems` finds."""
        problems = self.problems()
        if problems:
            raise ConfigError("Invalid configuration — " + "; ".join(problems.values()))

    @property
    def call_regions(self) -> frozenset[str]:
        """The regions calls may go to: ``CALL_COUNTRIES``, else TWILIO_FROM_NUMBER's, else PERSON_REGION.

        The default mirrors Twilio's own: a new account may call only its home country
        until more are enabled under Voice geographic permissions.
        """
        if self.call_countries:
            return frozenset(self.call_countries)
        try:
            region = phonenumbers.region_code_for_number(phonenumbers.parse(self.twilio_from_number))
        except phonenumbers.NumberParseException:
            region = None
        return frozenset({region or self.person_region.upper()})

    @property
    def destination_policy(self) -> DestinationPolicy:
        """Countries, number types and block list for ``bot.phone.check_phone`` / ``check_destination``."""
        return DestinationPolicy(
            countries=self.call_regions,
            home_region=self.person_region.upper(),
            blocked=tuple(self.blocked_numbers),
        )

    @property
    def callee_window(self) -> DailyWindow:
        """``CALLEE_LOCAL_HOURS`` as a :class:`~concierge.calling_window.DailyWindow`."""
        return DailyWindow.parse(self.callee_local_hours)

    @property
    def node(self) -> str:
        """This node's name: ``NODE_ID``, else ``<hostname>-<port>`` (``<hostname>-<pid>`` on port 0).

        It is the dispatcher's lease owner, so it must differ between the nodes sharing one
        database (a node treats calls leased under its own name as its own: at start-up it
        reconciles them as left by its previous run). The default is unique on one machine —
        two servers cannot listen on one port — and stays the same across restarts of a
        server on a fixed port, so a restart adopts its own unfinished calls at once instead
        of after their leases run out.
        """
        return self.node_id or default_node_id(self.port)

    @property
    def uses_postgres(self) -> bool:
        """Whether ``DATABASE_URL`` names a PostgreSQL server (the engine for several nodes)."""
        return is_postgres_url(self.database_url)

    @property
    def database_path(self) -> str:
        """Filesystem path of the SQLite database named by ``DATABASE_URL``.

        Raises:
            ConfigError: ``DATABASE_URL`` is not a ``sqlite:///`` URL (e.g. it is PostgreSQL).
        """
        prefix = "sqlite:///"
        if not self.database_url.startswith(prefix):
            raise ConfigError(f"DATABASE_URL is not a SQLite file (sqlite:///…): {self.database_url_shown}")
        return self.database_url[len(prefix) :]

    @property
    def database_url_shown(self) -> str:
        """``DATABASE_URL`` fit for messages and logs: a PostgreSQL password is masked."""
        parts = urlsplit(self.database_url)
        if parts.password is None:
            return self.database_url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))

    def missing(self, component: str) -> list[str]:
        """Names of the variables ``component`` needs that are not set."""
        return [name for name in REQUIRED[component] if not getattr(self, name.lower())]

    def configured(self, component: str) -> bool:
        return not self.missing(component)

    def require(self, *components: str) -> None:
        """Fail at start-up if any component lacks a variable.

        Raises:
            ConfigError: naming every missing variable, grouped by component.
        """
        problems = [f"{PURPOSE[c]}: set {', '.join(self.missing(c))}" for c in components if self.missing(c)]
        if problems:
            raise ConfigError("Missing configuration — " + "; ".join(problems))


#: Bound on ``NODE_ID``: it is stored with every lease and history row and shown in each log line.
NODE_ID_MAX = 64
NODE_ID_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:-]{{0,{NODE_ID_MAX - 1}}}")


def default_node_id(port: int) -> str:
    """``<hostname>-<port>``, or ``<hostname>-<pid>`` for port 0 (the OS picks), within NODE_ID's rules."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).strip("-._") or "node"
    suffix = f"-{port}" if port else f"-{os.getpid()}"
    return host[: NODE_ID_MAX - len(suffix)] + suffix


def _public_url_problem(url: str) -> str | None:
    """Twilio's webhooks and media stream carry the call: plain http only on this machine."""
    if not url:
        return None  # reported as missing by require("twilio")
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return None
    return f"PUBLIC_BASE_URL must be an https:// URL (plain http only for a loopback host), got {url!r}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
