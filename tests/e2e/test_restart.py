"""Restart safety end to end: ``concierge serve`` SIGKILLed mid-call, restarted, and the errand recovers.

The sandbox world runs in the test process, the server in a subprocess
configured only by environment variables (see ``tests/serve_proc.py``).
The person asks for a booking in the chat; once the receptionist is talking the
server is killed with SIGKILL. After the restart the errand must be reconciled
against Twilio (the call's real status fetched through the REST API *before*
anything is redialled), the person told in the chat, and the errand finished —
not lost, not duplicated, and never dialled while its first call was live.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from loopback import free_port
from reliability_kit import (
    CallWatch,
    is_live,
    job_of_call,
    receptionist,
    submit_errand,
    wait_until,
)
from serve_proc import Server, server_env

from concierge.settings import Settings
from demo.world import DEMO_TELEGRAM_USER, SandboxWorld
from sandbox import scenarios
from sandbox.twilio import Behavior
from storage.db import open_database
from storage.jobs import JobStore
from storage.models import JobState

pytestmark = [pytest.mark.slow]

PHONE = "+14155550100"


async def test_sigkill_mid_call_then_restart_reconciles_tells_the_person_and_finishes(tmp_path: Path) -> None:
    world = await SandboxWorld(pace=6.0, base=Settings(_env_file=None)).start()  # type: ignore[call-arg]
    watch = CallWatch(world)
    slot = scenarios.build("happy", today=_today()).expect_start
    assert slot is not None
    world.twilio.program(PHONE, Behavior.ANSWER, receptionist(slot))
    db_path = tmp_path / "concierge.db"
    env = server_env(
        world,
        port=free_port(),
        database_path=db_path,
        default_business_hours="daily 00:00-24:00",
        callee_local_hours="00:00-24:00",
        retry_backoff_minutes=0,
    )
    server = Server(env, tmp_path, tmp_path / "serve-1.log")
    restarted: Server | None = None
    try:
        await server.start()
        job_id = await submit_errand(world, PHONE)

        async def receptionist_talking() -> bool:
            calls = watch.calls
            return bool(calls) and calls[0].status == "in-progress" and len(calls[0].said) >= 1

        await wait_until(receptionist_talking, 30, "the receptionist to answer")
        first = watch.calls[0]
        await server.kill()
        requests_before_restart = len(world.twilio.requests)
        chat_before_restart = len(world.telegram.sent)

        restarted = Server(env, tmp_path, tmp_path / "serve-2.log")
        await restarted.start()
        db = await open_database(str(db_path))
        try:
            store = JobStore(db)

            async def finished_and_told() -> bool:
                job = await store.get(job_id)
                return job.state.is_final and bool(job.meta.result_delivered)

            await wait_until(finished_and_told, 60, "the errand to finish after the restart")
            assert await restarted.terminate() == 0
            restarted = None
            job = await store.get(job_id)
            history = [(str(h.from_state), str(h.to_state), h.reason) for h in await store.history(job_id)]
            jobs = await store.list(limit=100)
        finally:
            await db.close()
    finally:
        for s in (server, restarted):
            if s is not None and s.proc is not None and s.returncode is None:
                await s.kill()
        await watch.close()
        await world.stop()

    story = f"{history}\n{server.log_tail(20)}"
    # not lost, not duplicated
    assert [j.id for j in jobs] == [job_id], story
    assert job.state is JobState.BOOKED, story
    # reconciled: the first call's status was fetched from Twilio after the restart, before any redial
    after = world.twilio.requests[requests_before_restart:]
    fetches = [i for i, (m, p, _, _) in enumerate(after) if m == "GET" and p.endswith(f"/{first.sid}.json")]
    creates = [i for i, (m, p, _, _) in enumerate(after) if m == "POST" and p.endswith("/Calls.json")]
    assert fetches, story
    assert not creates or fetches[0] < creates[0], story
    assert any(to == "queued" and "recovered" in reason for _, to, reason in history), story
    # never dialled while a call of the errand was live; in all two calls: the cut one and the retry
    assert not watch.overlaps, watch.overlaps
    calls = [c for c in watch.calls if job_of_call(c) == job_id]
    assert len(calls) == 2 and calls[0] is first and not any(is_live(c) for c in calls), story
    # the person was told about the restart, then got the result, in their own chat
    told = [s.text or "" for s in world.telegram.sent[chat_before_restart:]]
    assert any(re.search(r"restart", t) and "try again" in t for t in told), told
    assert any(t.startswith("Booked:") for t in told), told
    assert {s.chat_id for s in world.telegram.sent} == {DEMO_TELEGRAM_USER}
    events = [e for e in world.graph.events if e.get("transactionId") == job_id]
    assert len(events) == 1


def _today() -> date:
    return datetime.now(ZoneInfo("America/Los_Angeles")).date()
