"""The ``concierge`` command: doctor (as a subprocess with a clean environment) and jobs list/show/cancel."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from concierge import cli
from concierge.doctor import diagnose
from concierge.settings import REQUIRED, Settings
from storage.db import MIGRATIONS, open_database
from storage.jobs import JobStore
from storage.models import (
    BookingWindow,
    CallOutcome,
    CallRequest,
    ChatOrigin,
    JobState,
    OutcomeKind,
    Platform,
    Speaker,
    Turn,
    TurnLatency,
)

ROOT = Path(__file__).resolve().parents[1]
ALL_SET = {
    "TELEGRAM_BOT_TOKEN": "123:abc",
    "TELEGRAM_ALLOWED_USERS": "42",
    "SLACK_BOT_TOKEN": "xoxb-1",
    "SLACK_SIGNING_SECRET": "s3cret",
    "SLACK_ALLOWED_TEAMS": "T1",
    "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "TWILIO_AUTH_TOKEN": "tok",
    "TWILIO_FROM_NUMBER": "+14155550123",
    "PUBLIC_BASE_URL": "https://concierge.example.com",
    "DEEPGRAM_API_KEY": "dg",
    "ANTHROPIC_API_KEY": "sk-ant",
    "GRAPH_TENANT_ID": "t",
    "GRAPH_CLIENT_ID": "c",
    "GRAPH_CLIENT_SECRET": "s",
    "GRAPH_USER_ID": "u",
}


def run_cli(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m concierge`` in ``tmp_path`` (no .env there) with only the given variables."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "concierge", *args],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_doctor_with_empty_environment_names_every_missing_variable(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "doctor")
    assert result.returncode == 1, result.stderr
    for names in REQUIRED.values():
        for name in names:
            assert name in result.stdout
    assert "Twilio phone calls: set TWILIO_ACCOUNT_SID" in result.stdout
    assert "will be created" in result.stdout  # database in the (writable) working folder
    assert not (tmp_path / "concierge.db").exists()  # doctor creates nothing


def test_doctor_with_everything_set_is_ready(tmp_path: Path) -> None:
    env = {**ALL_SET, "DATABASE_URL": f"sqlite:///{tmp_path}/q.db"}
    result = run_cli(tmp_path, "doctor", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[MISSING]" not in result.stdout and "Ready." in result.stdout
    assert "s3cret" not in result.stdout  # values are never printed


def test_doctor_one_chat_front_end_is_enough_and_urls_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    values: dict[str, object] = {k.lower(): v for k, v in ALL_SET.items() if not k.startswith("SLACK")}
    values["telegram_allowed_users"] = ["42"]
    local = {
        **values,
        "public_base_url": "http://localhost:8080/",
        "database_url": f"sqlite:///{tmp_path}/x.db",
    }
    report = diagnose(Settings.model_validate(local))
    text = "\n".join(report.lines)
    assert report.errors == 0, text
    assert "Slack /call command (chat front end): not configured (optional" in text
    assert "Twilio cannot reach it" in text and "drop it" in text

    broken = {
        **values,
        "public_base_url": "concierge.example.com",
        "database_url": f"sqlite:///{tmp_path}/no/such/dir/x.db",
        "default_business_hours": "weekdays 9-5",
    }
    # model_copy skips validation, as settings built in code may: doctor still finds the faults
    report = diagnose(Settings.model_validate(values).model_copy(update=broken))
    text = "\n".join(report.lines)
    assert report.errors == 3, text
    assert "is not a URL" in text and "does not exist or is not writable" in text
    assert "DEFAULT_BUSINESS_HOURS" in text


def _request(name: str) -> CallRequest:
    return CallRequest(
        business_name=name,
        phone="+14155550100",
        business_tz="America/New_York",
        service="haircut",
        person_name="Alex",
        person_tz="America/Los_Angeles",
        window=BookingWindow(date(2026, 6, 8), date(2026, 6, 12)),
        origin=ChatOrigin(platform=Platform.SLACK, chat_id="C1", user_id="U1", thread_id="1.2"),
    )


async def _seed(path: Path) -> tuple[str, str]:
    db = await open_database(path)
    try:
        store = JobStore(db)
        due = datetime(2026, 6, 8, 13, 0, tzinfo=UTC)
        queued = await store.enqueue(_request("Joe's Barbershop"), due_at=due, max_attempts=3)
        called = await store.enqueue(_request("Ana's Salon"), due_at=due - timedelta(days=1), max_attempts=3)
        await store.claim_due("disp", limit=1, lease_seconds=60)
        await store.set_call_sid(called.id, "CA123")
        await store.transition(called.id, JobState.IN_CALL, reason="call answered")
        turns = [
            Turn(Speaker.CALLEE, "Ana's Salon, how can I help?", at=0.5),
            Turn(
                Speaker.ASSISTANT,
                "Hi, I'm an AI assistant calling for Alex.",
                at=1.2,
                latency=TurnLatency(stt_final=10.0, first_audio_out=10.25),
            ),
        ]
        await store.add_turns(called.id, 1, turns)
        outcome = CallOutcome(OutcomeKind.DECLINED, summary="No slots this week.", call_sid="CA123")
        await store.transition(called.id, JobState.DECLINED, reason="call ended", outcome=outcome)
        return queued.id, called.id
    finally:
        await db.close()


@pytest.fixture
def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    db_path = tmp_path / "q.db"
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{db_path}")
    # The test runs outside any event loop, so asyncio.run seeds the database here.
    return asyncio.run(_seed(db_path))


def test_jobs_list_table_and_json(seeded: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    queued_id, declined_id = seeded
    assert cli.main(["jobs", "list"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["ID", "STATE", "BUSINESS"]
    assert queued_id in table and declined_id in table
    assert "2026-06-08 09:00 EDT" in table  # queued: next call in the business's own time

    assert cli.main(["jobs", "list", "--state", "declined", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["id"] for d in data] == [declined_id]
    assert data[0]["outcome"]["kind"] == "declined" and data[0]["request"]["business_name"] == "Ana's Salon"


def test_jobs_show_human_and_json(seeded: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    _, declined_id = seeded
    assert cli.main(["jobs", "show", declined_id]) == 0
    text = capsys.readouterr().out
    assert f"Errand {declined_id}: declined" in text
    assert "outcome    declined: No slots this week." in text
    assert "in_call -> declined   call ended" in text  # history
    assert "next call" not in text  # only for queued errands
    assert "I'm an AI assistant calling for Alex. [250 ms]" in text  # transcript with server overhead

    assert cli.main(["jobs", "show", declined_id, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [h["to_state"] for h in data["history"]] == ["queued", "dialing", "in_call", "declined"]
    assert [t["speaker"] for t in data["turns"]] == ["callee", "assistant"]
    assert data["turns"][1]["server_overhead_ms"] == pytest.approx(250.0)


def test_jobs_cancel(seeded: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    queued_id, declined_id = seeded
    assert cli.main(["jobs", "cancel", queued_id]) == 0
    assert "Cancelled" in capsys.readouterr().out
    assert cli.main(["jobs", "list", "--state", "cancelled", "--json"]) == 0
    assert [d["id"] for d in json.loads(capsys.readouterr().out)] == [queued_id]
    assert cli.main(["jobs", "cancel", declined_id]) == 1
    assert "cannot cancel" in capsys.readouterr().err
    assert cli.main(["jobs", "show", "nope"]) == 1
    assert "no errand with id 'nope'" in capsys.readouterr().err


def test_jobs_list_without_database_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/none.db")
    assert cli.main(["jobs", "list", "--json"]) == 0
    assert capsys.readouterr().out == "[]\n"
    assert not (tmp_path / "none.db").exists()


def test_demo_is_plugged_in_from_the_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    from demo.commands import DEMO

    assert cli.plugged_commands()["demo"] is DEMO
    assert cli.main(["demo", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "clash" in listed and "happy" in listed
    assert cli.main(["demo", "--scenario", "no-such-scenario"]) == 2
    assert "unknown scenario 'no-such-scenario'" in capsys.readouterr().err


def test_without_the_checkout_demo_and_sandbox_say_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What a wheel-only install sees: the entry points are declared, their module is not there.
    for name in [m for m in sys.modules if m == "demo" or m.startswith("demo.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "demo", None)
    assert cli.main(["demo", "--scenario", "happy"]) == 2
    assert capsys.readouterr().err == "the demo needs a source checkout: run `make demo`\n"
    assert cli.main(["serve", "--sandbox", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("the sandbox needs a source checkout") and err.count("\n") == 1


@pytest.mark.slow
async def _serve_sandbox_until_ready(tmp_path: Path, **env_extra: str) -> asyncio.subprocess.Process:
    """``concierge serve --sandbox`` on a free port, returned once it says it is ready."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "concierge", "serve", "--sandbox", "--host", "127.0.0.1", "--port", "0"),
        cwd=tmp_path,
        env={**env, **env_extra},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.lines = []  # type: ignore[attr-defined]
    try:
        async with asyncio.timeout(60):
            while line := (await proc.stdout.readline()).decode():
                proc.lines.append(line)  # type: ignore[attr-defined]
                if "concierge ready" in line:
                    return proc
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    await proc.wait()
    raise AssertionError("serve --sandbox exited before it was ready: " + "".join(proc.lines))  # type: ignore[attr-defined]


async def _stop(proc: asyncio.subprocess.Process) -> str:
    """SIGTERM, then everything it printed; it must exit cleanly."""
    proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = "".join(proc.lines) + out.decode()  # type: ignore[attr-defined]
    assert proc.returncode == 0, text + err.decode()
    return text


async def test_serve_sandbox_starts_the_world_and_stops_on_sigterm(tmp_path: Path) -> None:
    out = await _stop(await _serve_sandbox_until_ready(tmp_path))
    for service in ("telegram", "slack", "twilio", "deepgram", "anthropic", "graph"):
        assert f"sandbox {service}" in out
    assert "concierge ready on http://127.0.0.1:" in out and "shutting down" in out


async def test_two_sandbox_nodes_share_one_postgresql_named_by_database_url(
    tmp_path: Path, pg_url: str
) -> None:
    nodes = []
    try:
        for name in ("node-a", "node-b"):
            (tmp_path / name).mkdir()
            nodes.append(await _serve_sandbox_until_ready(tmp_path / name, DATABASE_URL=pg_url, NODE_ID=name))
        async with await open_database(pg_url) as db:
            assert await db.schema_version() == MIGRATIONS[-1].version  # the nodes' schema, in PostgreSQL
    finally:
        outs = [await _stop(proc) for proc in nodes]
    for name, out in zip(("node-a", "node-b"), outs, strict=True):
        assert f"node {name}" in out, out


def test_parser_knows_every_command() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["serve", "--sandbox", "--host", "127.0.0.1", "--port", "0"])
    assert (args.sandbox, args.host, args.port) == (True, "127.0.0.1", 0)
    args = parser.parse_args(["demo", "--scenario", "happy", "--list"])
    assert (args.scenario, args.list) == ("happy", True)
    with pytest.raises(SystemExit):
        parser.parse_args(["jobs", "list", "--state", "nonsense"])


def test_numbers_block_list_unblock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/q.db")
    monkeypatch.setenv("BLOCKED_NUMBERS", "+14155550101")
    assert cli.main(["numbers", "list"]) == 0
    assert "No blocked numbers" in capsys.readouterr().out
    assert cli.main(["numbers", "block", "(415) 555-0100", "--reason", "asked on the phone"]) == 0
    assert "Blocked +14155550100" in capsys.readouterr().out  # read in PERSON_REGION, stored as E.164
    assert cli.main(["numbers", "block", "+1 415 555 0100"]) == 0
    assert "already blocked" in capsys.readouterr().out
    assert cli.main(["numbers", "block", "+14155550101"]) == 0
    capsys.readouterr()
    assert cli.main(["numbers", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {e["e164"] for e in listed} == {"+14155550100", "+14155550101"}
    assert next(e for e in listed if e["e164"] == "+14155550100")["reason"] == "asked on the phone"
    assert cli.main(["numbers", "unblock", "+14155550100"]) == 0
    assert "Unblocked +14155550100" in capsys.readouterr().out
    assert cli.main(["numbers", "unblock", "+14155550101"]) == 0
    assert "still in BLOCKED_NUMBERS" in capsys.readouterr().out
    assert cli.main(["numbers", "list"]) == 0
    assert "No blocked numbers" in capsys.readouterr().out
    assert cli.main(["numbers", "block", "not a number"]) == 1


def test_doctor_checks_a_postgresql_database_without_changing_it(tmp_path: Path, pg_url: str) -> None:
    secret_url = pg_url.replace("postgres@", "postgres:pg-s3cret-pass@", 1)  # trust auth ignores it
    env = {**ALL_SET, "DATABASE_URL": secret_url}
    fresh = run_cli(tmp_path, "doctor", env=env)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert "is reachable; the first node to start creates the schema" in fresh.stdout
    assert "pg-s3cret-pass" not in fresh.stdout + fresh.stderr

    async def migrate() -> None:
        async with await open_database(pg_url) as db:
            assert await db.schema_version() == MIGRATIONS[-1].version

    asyncio.run(migrate())
    again = run_cli(tmp_path, "doctor", env=env)
    assert f"schema version {MIGRATIONS[-1].version}" in again.stdout

    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    down = run_cli(
        tmp_path, "doctor", env={**env, "DATABASE_URL": f"postgresql://u:pg-s3cret-pass@127.0.0.1:{closed}/x"}
    )
    assert down.returncode == 1
    assert f"cannot open PostgreSQL at 127.0.0.1:{closed}/x" in down.stdout
    assert "pg-s3cret-pass" not in down.stdout + down.stderr
