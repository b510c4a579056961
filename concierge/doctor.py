"""``concierge doctor``: what is configured, what is missing, in plain words.

A newcomer runs this before ``concierge serve``. It never contacts any
service (so it works offline and leaks nothing); it only reads settings and
checks the local database location. Exit code 1 when something the server
needs is missing or broken, 0 otherwise (warnings do not fail it).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from bot.phone import blocked_e164
from concierge.hours import parse_weekly
from concierge.settings import PURPOSE, REQUIRED, Settings
from storage.db import MIGRATIONS, DatabaseUnavailable, SchemaTooNew
from storage.errors import ConfigError
from storage.postgres import describe, probe

#: Either chat front end is enough; the rest are all needed to place a call.
CHAT_FRONT_ENDS = ("telegram", "slack")
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


@dataclass
class Report:
    """Lines to print and whether anything is fatal."""

    lines: list[str] = field(default_factory=list)
    errors: int = 0
    warnings: int = 0

    def ok(self, text: str) -> None:
        self.lines.append(f"  [ok]      {text}")

    def missing(self, text: str) -> None:
        self.errors += 1
        self.lines.append(f"  [MISSING] {text}")

    def error(self, text: str) -> None:
        self.errors += 1
        self.lines.append(f"  [ERROR]   {text}")

    def warn(self, text: str) -> None:
        self.warnings += 1
        self.lines.append(f"  [warning] {text}")

    def note(self, text: str) -> None:
        self.lines.append(f"  [info]    {text}")


def diagnose(settings: Settings) -> Report:
    """Check every component and local prerequisite; pure apart from filesystem checks."""
    report = Report()
    report.lines.append("Services:")
    chat_ok = [c for c in CHAT_FRONT_ENDS if settings.configured(c)]
    for component, names in REQUIRED.items():
        purpose = PURPOSE[component]
        missing = settings.missing(component)
        if not missing:
            report.ok(f"{purpose}: configured ({', '.join(names)})")
        elif component in CHAT_FRONT_ENDS and chat_ok:
            report.note(f"{purpose}: not configured (optional, {chat_ok[0]} is); needs {', '.join(missing)}")
        else:
            report.missing(f"{purpose}: set {', '.join(missing)}")
    if not chat_ok:
        report.lines.append("    (one chat front end is enough: Telegram or Slack)")
    _check_allow_lists(settings, report)
    report.lines.append("Local:")
    _check_database(settings, report)
    _check_public_url(settings, report)
    _check_hours(settings, report)
    report.lines.append("Calling rules:")
    _check_rules(settings, report)
    return report


def run_doctor(out: TextIO, settings: Settings | None = None) -> int:
    """Print the report; 1 if anything required is missing or broken."""
    try:
        settings = settings or Settings()
    except ValueError as e:  # pydantic ValidationError: a variable has an invalid value
        out.write(f"Configuration cannot be read:\n{e}\n")
        return 1
    report = diagnose(settings)
    out.write("\n".join(report.lines) + "\n")
    if report.errors:
        out.write(
            f"\n{report.errors} problem(s) to fix. Put the variables in the environment or in a .env file"
            " (see .env.example). `concierge demo` works without any of them.\n"
        )
        return 1
    out.write(f"\nReady{f' ({report.warnings} warning(s))' if report.warnings else ''}.\n")
    return 0


def _check_allow_lists(settings: Settings, report: Report) -> None:
    if settings.configured("telegram") and not settings.telegram_allowed_users:
        report.warn("TELEGRAM_ALLOWED_USERS is empty: nobody may create errands from Telegram")
    if settings.configured("slack") and not (settings.slack_allowed_users or settings.slack_allowed_teams):
        report.warn("SLACK_ALLOWED_USERS and SLACK_ALLOWED_TEAMS are empty: nobody may use /call")


def _check_database(settings: Settings, report: Report) -> None:
    if settings.uses_postgres:
        _check_postgres(settings, report)
        return
    try:
        path = Path(settings.database_path)
    except ConfigError as e:
        report.error(str(e))
        return
    if str(path) == ":memory:":
        report.warn("DATABASE_URL is in memory: errands are lost when the server stops")
        return
    resolved = path.expanduser().resolve()
    if resolved.exists():
        if os.access(resolved, os.W_OK) and os.access(resolved.parent, os.W_OK):
            report.ok(f"database {resolved} exists and is writable")
        else:
            report.error(f"database {resolved} is not writable (check DATABASE_URL and permissions)")
    elif resolved.parent.is_dir() and os.access(resolved.parent, os.W_OK):
        report.ok(f"database {resolved} will be created (folder is writable)")
    else:
        report.error(f"database folder {resolved.parent} does not exist or is not writable (DATABASE_URL)")


def _check_postgres(settings: Settings, report: Report) -> None:
    """Connect once (nothing is changed): reachable, and a schema this Concierge can run on."""
    where = describe(settings.database_url)
    try:
        server, found = asyncio.run(probe(settings.database_url))
    except DatabaseUnavailable as e:
        report.error(f"{e} (check DATABASE_URL, that the server runs and that pg_hba.conf lets this host in)")
        return
    known = MIGRATIONS[-1].version
    if found > known:
        report.error(str(SchemaTooNew(found, known)))
    elif found == 0:
        report.ok(f"PostgreSQL {server} at {where} is reachable; the first node to start creates the schema")
    else:
        report.ok(f"PostgreSQL {server} at {where} is reachable, schema version {found} (known: {known})")


def _check_public_url(settings: Settings, report: Report) -> None:
    url = settings.public_base_url
    if not url:
        return  # already reported as missing under Twilio
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        report.error(f"PUBLIC_BASE_URL {url!r} is not a URL like https://concierge.example.com")
        return
    if parts.hostname in _LOCAL_HOSTS:
        report.warn(f"PUBLIC_BASE_URL {url!r} is local: Twilio cannot reach it (use a tunnel's https URL)")
    elif "PUBLIC_BASE_URL" in settings.problems():
        report.error(settings.problems()["PUBLIC_BASE_URL"])
        return
    if url.endswith("/"):
        report.warn("PUBLIC_BASE_URL ends with '/': webhook signatures are computed on exact URLs; drop it")
    if parts.query or parts.fragment:
        report.error("PUBLIC_BASE_URL must not contain '?' or '#'")
    else:
        report.ok(f"PUBLIC_BASE_URL {url}")


def _check_hours(settings: Settings, report: Report) -> None:
    try:
        parse_weekly(settings.default_business_hours, settings.person_timezone)
    except ValueError as e:
        report.error(f"DEFAULT_BUSINESS_HOURS / PERSON_TIMEZONE: {e}")
    else:
        report.ok(f"default business hours: {settings.default_business_hours}")


def _check_rules(settings: Settings, report: Report) -> None:
    """The rules every call obeys, as they are in effect (README "Calling rules")."""
    for variable, problem in settings.problems().items():
        if variable != "PUBLIC_BASE_URL":  # reported under Local
            report.error(problem)
    policy = settings.destination_policy
    source = (
        "CALL_COUNTRIES" if settings.call_countries else "default: TWILIO_FROM_NUMBER, else PERSON_REGION"
    )
    report.note(f"countries called: {', '.join(sorted(policy.countries))} ({source})")
    report.note(
        "number types called: landlines and mobiles only (no premium, shared-cost, personal, VoIP,"
        f" satellite...); toll-free only in {policy.home_region} (PERSON_REGION)"
    )
    report.note(
        f"callee's local hours: {settings.callee_local_hours} in every zone the number may ring in"
        " (CALLEE_LOCAL_HOURS), and only while the business is open"
    )
    whole = blocked_e164(settings.blocked_numbers, settings.person_region)
    prefixes = [b for b in settings.blocked_numbers if b.strip().endswith("*")]
    report.note(
        f"blocked: {len(whole)} number(s) seeded into the do-not-call list, {len(prefixes)} prefix rule(s)"
        " (BLOCKED_NUMBERS; `concierge numbers list` shows the list)"
    )
    report.note(
        f"limits: {settings.max_concurrent_calls} call(s) at once, {settings.max_call_seconds} s per call,"
        f" {settings.max_attempts} attempt(s) per errand, lease {settings.lease_seconds} s,"
        f" {settings.max_queued_per_user} open errand(s) and {settings.errands_per_user_per_hour} per hour"
        f" per person, one call at a time and {settings.max_calls_per_number_per_day} per 24 h per number"
    )
