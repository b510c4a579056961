"""The ``concierge`` command: serve, jobs, numbers, doctor, and the commands a source checkout adds (demo).

``jobs`` reads the queue straight from the database named by DATABASE_URL,
so it works whether or not the server is running (SQLite WAL lets it read
while the server writes). ``serve`` imports its module lazily: it pulls in
every SDK, which ``jobs`` and ``doctor`` do not need.

The product never imports the sandbox or the demo. A source checkout plugs
them in through entry points (declared in ``pyproject.toml``): each entry of
``concierge.commands`` is a ``Command`` (``concierge demo``), and the entry
``sandbox`` of ``concierge.environments`` is the ``serve.Environment`` behind
``serve --sandbox``. Installed from the wheel alone, those entries name modules
that are not there, and the command says so in one line.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, TextIO
from zoneinfo import ZoneInfo

import phonenumbers

from bot.phone import blocked_e164
from concierge.doctor import run_doctor
from concierge.settings import Settings
from storage.db import open_database
from storage.errors import ConciergeError, IllegalTransition, JobNotFound
from storage.jobs import HistoryEntry, JobStore
from storage.models import Job, JobState, Turn
from storage.numbers import SOURCE_OPERATOR, DoNotCall

EXIT_OK, EXIT_ERROR, EXIT_UNAVAILABLE = 0, 1, 2
COMMANDS = "concierge.commands"
ENVIRONMENTS = "concierge.environments"


class Command(Protocol):
    """A subcommand plugged in through the ``concierge.commands`` entry-point group."""

    help: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the command's options on its own subparser."""

    def run(self, args: argparse.Namespace) -> int:
        """Run the command; returns the exit code."""


class _Unavailable:
    """Stands in for a plugged-in command whose module is not installed (the wheel without a checkout)."""

    help = "(needs a source checkout)"

    def __init__(self, name: str) -> None:
        self.name = name

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """None: whatever follows is the missing command's to read (``main`` lets it through)."""

    def run(self, args: argparse.Namespace) -> int:
        print(f"the {self.name} needs a source checkout: run `make {self.name}`", file=sys.stderr)
        return EXIT_UNAVAILABLE


def _load(group: str, name: str) -> Any | None:
    """The object an entry point names, or ``None`` when its module is not installed."""
    for ep in entry_points(group=group, name=name):
        try:
            return ep.load()
        except (ImportError, AttributeError):
            return None
    return None


def plugged_commands() -> dict[str, Command]:
    """Every command of the ``concierge.commands`` group, by name."""
    return {ep.name: _load(COMMANDS, ep.name) or _Unavailable(ep.name) for ep in entry_points(group=COMMANDS)}


def build_parser(commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="concierge", description="AI phone assistant: queue errands, phone businesses, book slots."
    )
    parser.set_defaults(plugged=None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server (webhooks, bots, dispatcher)")
    serve.add_argument("--sandbox", action="store_true", help="use local stand-ins for every outside service")
    serve.add_argument("--host", help="interface to bind (default: HOST setting)")
    serve.add_argument("--port", type=int, help="port to bind (default: PORT setting)")

    for name, command in (plugged_commands() if commands is None else commands).items():
        plugged = sub.add_parser(name, help=command.help)
        command.add_arguments(plugged)
        plugged.set_defaults(plugged=command)

    sub.add_parser("doctor", help="check configuration: what is set, what is missing")

    jobs = sub.add_parser("jobs", help="inspect and cancel errands")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    listing = jobs_sub.add_parser("list", help="errands, newest first")
    listing.add_argument("--state", choices=[s.value for s in JobState], help="only this state")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    show = jobs_sub.add_parser("show", help="one errand with its history and transcript")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    cancel = jobs_sub.add_parser("cancel", help="cancel an errand that is not on the phone yet")
    cancel.add_argument("id")

    numbers = sub.add_parser("numbers", help="the do-not-call list: block, unblock, list")
    numbers_sub = numbers.add_subparsers(dest="numbers_command", required=True, metavar="ACTION")
    block = numbers_sub.add_parser("block", help="never call this number again")
    block.add_argument("number", help="the number; without a country code it is read in PERSON_REGION")
    block.add_argument("--reason", default="", help="why (kept with the entry)")
    unblock = numbers_sub.add_parser("unblock", help="allow calls to this number again")
    unblock.add_argument("number")
    unblock.add_argument("--reason", default="", help="why (kept in the list's history)")
    blocked = numbers_sub.add_parser("list", help="blocked numbers, newest first")
    blocked.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``concierge`` console script; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not isinstance(args.plugged, _Unavailable):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    out = sys.stdout
    if args.command == "doctor":
        return run_doctor(out)
    if args.command == "serve":
        return _serve(args)
    if args.command == "numbers":
        return _numbers(args, out)
    if args.plugged is not None:
        return int(args.plugged.run(args))
    return _jobs(args, out)


def _serve(args: argparse.Namespace) -> int:
    environment = None
    if args.sandbox:
        environment = _load(ENVIRONMENTS, "sandbox")
        if environment is None:
            print(
                "the sandbox needs a source checkout: run `make .venv/.installed` there, then"
                " `.venv/bin/concierge serve --sandbox`",
                file=sys.stderr,
            )
            return EXIT_UNAVAILABLE
    from concierge.serve import serve_main

    return serve_main(args, environment=environment)


# -- jobs -------------------------------------------------------------------


def _settings() -> tuple[Settings, str | None] | None:
    """The settings and, for a SQLite database whose file does not exist yet, its path.

    ``None`` after saying what is wrong with the settings. A missing file means "no
    errands yet", which the read-only commands answer without creating one.
    """
    try:
        settings = Settings()
        if settings.uses_postgres:
            return settings, None
        path = settings.database_path
    except (ConciergeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    return settings, (path if path != ":memory:" and not Path(path).exists() else None)


def _jobs(args: argparse.Namespace, out: TextIO) -> int:
    loaded = _settings()
    if loaded is None:
        return EXIT_ERROR
    settings, missing = loaded
    if missing is not None:
        path = missing
        if args.jobs_command == "list":
            out.write("[]\n" if args.json else f"No errands yet (no database at {path}).\n")
            return EXIT_OK
        print(f"error: no errand with id {args.id!r} (no database at {path})", file=sys.stderr)
        return EXIT_ERROR
    try:
        return asyncio.run(_jobs_async(args, settings.database_url, out))
    except JobNotFound as e:
        print(f"error: {e}", file=sys.stderr)
    except IllegalTransition as e:
        print(f"error: cannot cancel: {e}", file=sys.stderr)
    except ConciergeError as e:  # the database cannot be reached, or is newer than this code
        print(f"error: {e}", file=sys.stderr)
    return EXIT_ERROR


async def _jobs_async(args: argparse.Namespace, database_url: str, out: TextIO) -> int:
    db = await open_database(database_url)
    try:
        store = JobStore(db)
        if args.jobs_command == "list":
            states = [JobState(args.state)] if args.state else None
            jobs = await store.list(states=states, limit=args.limit)
            out.write(_dump([job_to_dict(j) for j in jobs]) if args.json else render_table(jobs))
        elif args.jobs_command == "show":
            job = await store.get(args.id)
            history, turns = await store.history(job.id), await store.turns(job.id)
            if args.json:
                data = job_to_dict(job)
                data["history"] = [_history_to_dict(h) for h in history]
                data["turns"] = [_turn_to_dict(t) for t in turns]
                out.write(_dump(data))
            else:
                out.write(render_job(job, history, turns))
        else:
            before = await store.get(args.id)
            job = await store.cancel(args.id, reason="cancelled from the command line")
            out.write(f"Cancelled {job.id} ({job.request.business_name}).\n")
            if before.state is JobState.DIALING and before.call_sid:
                out.write(
                    f"Note: a call was being placed (CallSid {before.call_sid}); if it still rings,"
                    " the running server or the Twilio console can end it.\n"
                )
        return EXIT_OK
    finally:
        await db.close()


# -- numbers ----------------------------------------------------------------


def _numbers(args: argparse.Namespace, out: TextIO) -> int:
    loaded = _settings()
    if loaded is None:
        return EXIT_ERROR
    settings, missing = loaded
    if args.numbers_command == "list" and missing is not None:
        out.write("[]\n" if args.json else f"No blocked numbers (no database at {missing}).\n")
        return EXIT_OK
    number = ""
    if args.numbers_command != "list":
        try:
            parsed = phonenumbers.parse(args.number, settings.person_region)
        except phonenumbers.NumberParseException as e:
            print(f"error: {args.number!r} is not a phone number ({e})", file=sys.stderr)
            return EXIT_ERROR
        number = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    try:
        return asyncio.run(_numbers_async(args, settings, number, out))
    except ConciergeError as e:  # the database cannot be reached, or is newer than this code
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR


async def _numbers_async(args: argparse.Namespace, settings: Settings, number: str, out: TextIO) -> int:
    db = await open_database(settings.database_url)
    try:
        dnc = DoNotCall(db)
        if args.numbers_command == "block":
            reason = args.reason or "blocked from the command line"
            new = await dnc.add(number, reason, SOURCE_OPERATOR)
            out.write(f"Blocked {number}.\n" if new else f"{number} was already blocked.\n")
            if new:
                out.write("Errands already queued to it are refused right before they would dial.\n")
        elif args.numbers_command == "unblock":
            gone = await dnc.remove(number, reason=args.reason, source=SOURCE_OPERATOR)
            out.write(f"Unblocked {number}.\n" if gone else f"{number} was not blocked.\n")
            if gone and number in blocked_e164(settings.blocked_numbers, settings.person_region):
                out.write("Note: it is still in BLOCKED_NUMBERS and comes back at the next start.\n")
        else:
            entries = await dnc.list()
            if args.json:
                out.write(_dump([{**dataclasses.asdict(e), "added_at": _iso(e.added_at)} for e in entries]))
            elif not entries:
                out.write("No blocked numbers.\n")
            else:
                for e in entries:
                    out.write(f"{e.e164:<16}  {_local(e.added_at, 'UTC')}  {e.source:<16}  {e.reason}\n")
        return EXIT_OK
    finally:
        await db.close()


def _dump(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt is not None else None


def job_to_dict(job: Job) -> dict[str, Any]:
    """JSON shape of a job for ``--json`` (stable keys, ISO-8601 UTC times)."""
    return {
        "id": job.id,
        "state": str(job.state),
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "next_attempt_at": _iso(job.next_attempt_at),
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "lease_owner": job.lease_owner,
        "lease_expires_at": _iso(job.lease_expires_at),
        "call_sid": job.call_sid,
        "request": job.request.to_dict(),
        "outcome": job.outcome.to_dict() if job.outcome else None,
        "meta": job.meta.to_dict(),
    }


def _history_to_dict(h: HistoryEntry) -> dict[str, Any]:
    return {
        "at": _iso(h.at),
        "from_state": str(h.from_state) if h.from_state else None,
        "to_state": str(h.to_state),
        "reason": h.reason,
        "owner": h.owner,
    }


def _turn_to_dict(t: Turn) -> dict[str, Any]:
    lat = t.latency
    return {
        "speaker": str(t.speaker),
        "text": t.text,
        "at": t.at,
        "interrupted": t.interrupted,
        "server_overhead_ms": lat.server_overhead_ms if lat else None,
        "barge_in_ms": lat.barge_in_ms if lat else None,
    }


def _local(dt: datetime, tz: str) -> str:
    """A UTC instant as the business's wall-clock time, e.g. ``2026-06-08 09:00 EDT``."""
    try:
        return dt.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M %Z")
    except (ValueError, KeyError):
        return dt.strftime("%Y-%m-%d %H:%M UTC")


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(jobs: Sequence[Job]) -> str:
    """Fixed-width table of jobs (times in each business's own zone)."""
    if not jobs:
        return "No errands.\n"
    header = f"{'ID':<8}  {'STATE':<10}  {'BUSINESS':<24}  {'PHONE':<16}  {'TRIES':<5}  NEXT / LAST CHANGE"
    rows = [header, "-" * len(header)]
    for job in jobs:
        when = job.next_attempt_at if job.state is JobState.QUEUED else job.updated_at
        rows.append(
            f"{job.id:<8}  {job.state.value:<10}  {_cut(job.request.business_name, 24):<24}  "
            f"{job.request.phone:<16}  {f'{job.attempts}/{job.max_attempts}':<5}  "
            f"{_local(when, job.request.business_tz)}"
        )
    return "\n".join(rows) + "\n"


def render_job(job: Job, history: Sequence[HistoryEntry], turns: Sequence[Turn]) -> str:
    """Human-readable detail of one errand."""
    req, tz = job.request, job.request.business_tz
    win = req.window
    lines = [
        f"Errand {job.id}: {job.state.value}",
        f"  business   {req.business_name}, {req.phone} ({tz})",
        f"  service    {req.service} for {req.person_name}"
        f" between {win.start_date} and {win.end_date},"
        f" {win.earliest.isoformat('minutes')}-{win.latest.isoformat('minutes')} ({req.person_tz})",
        f"  hours      {req.opening_hours or '(default)'}",
        f"  attempts   {job.attempts} of {job.max_attempts}",
        f"  from       {req.origin.platform.value} chat {req.origin.chat_id}, user {req.origin.user_id}",
    ]
    if job.state is JobState.QUEUED:
        lines.append(f"  next call  {_local(job.next_attempt_at, tz)}")
    if req.notes:
        lines.append(f"  notes      {req.notes}")
    if job.call_sid:
        lines.append(f"  call       {job.call_sid}")
    if job.outcome:
        o = job.outcome
        lines.append(f"  outcome    {o.kind.value}: {o.summary}")
        if o.booking:
            lines.append(f"  booked     {_local(o.booking.start, req.person_tz)} ({o.booking.service})")
        if o.question:
            lines.append(f"  question   {o.question}")
        if o.event_link:
            lines.append(f"  calendar   {o.event_link}")
    lines += ["", "History:"]
    for h in history:
        frm = h.from_state.value if h.from_state else "-"
        owner = f" [{h.owner}]" if h.owner else ""
        lines.append(f"  {_local(h.at, 'UTC')}  {frm:>10} -> {h.to_state.value:<10} {h.reason}{owner}")
    lines += ["", "Transcript:" if turns else "Transcript: (none)"]
    for t in turns:
        extra = " (interrupted)" if t.interrupted else ""
        overhead = t.latency.server_overhead_ms if t.latency else None
        if overhead is not None:
            extra += f" [{overhead:.0f} ms]"
        lines.append(f"  {t.at:7.1f}s  {t.speaker.value:<9}  {t.text}{extra}")
    return "\n".join(lines) + "\n"
