"""SIGKILL the server at random moments of several errands' lives, restart it, and check nothing broke.

The sandbox world (Telegram, Twilio with scripted receptionists, Deepgram,
Anthropic, Graph) runs in the test process; ``concierge serve`` runs as a real
subprocess configured only through environment variables, and is killed with
SIGKILL — no shutdown code runs — at a random moment, then restarted, again and
again. Errands are submitted through the chat along the way, so the kills land
in every phase: queued, claimed, ringing, mid-conversation, settling, notifying.

After the last restart every errand must reach a final state and its result
must reach the person; no errand may be lost or duplicated; no errand may be
dialled while one of its calls is still live (``CallWatch`` checks each new
call the sandbox Twilio sees); booked errands have exactly one calendar event;
and the database passes ``PRAGMA integrity_check``.

The seed of the random timing is printed on failure; ``CRASH_SEED=n`` replays it.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
from datetime import datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from loopback import free_port
from reliability_kit import CallWatch, job_of_call, receptionist, submit_errand, wait_until
from serve_proc import Server, server_env

from concierge.settings import Settings
from demo.world import SandboxWorld
from sandbox import scenarios
from sandbox.twilio import Behavior
from storage.db import open_database
from storage.jobs import JobStore
from storage.models import JobState

pytestmark = [pytest.mark.slow]

PACE = 16.0
KILLS = 20
#: Errand k is submitted right after start number SUBMIT_AT[k] (so kills find them at every stage).
SUBMIT_AT = (0, 0, 2, 4, 7, 10, 13)
MAX_KILL_DELAY = 2.5
LA = ZoneInfo("America/Los_Angeles")


def errands() -> list[tuple[str, datetime]]:
    """(phone, offered slot) per errand: a distinct number and a distinct free afternoon slot."""
    monday = scenarios.next_week_monday(datetime.now(LA).date())
    out = []
    for k in range(len(SUBMIT_AT)):
        day = monday + timedelta(days=k % 5)
        slot = datetime.combine(day, time(13 + (k // 5) * 2, 0), LA)
        out.append((f"+1415555{101 + k:04d}", slot))
    return out


async def test_sigkill_at_random_moments_loses_nothing_and_never_double_dials(tmp_path: Path) -> None:
    seed = int(os.environ.get("CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    world = await SandboxWorld(pace=PACE, base=Settings(_env_file=None)).start()  # type: ignore[call-arg]
    watch = CallWatch(world)
    plan = errands()
    for phone, slot in plan:
        world.twilio.program(phone, Behavior.ANSWER, receptionist(slot))
    db_path = tmp_path / "concierge.db"
    env = server_env(
        world,
        port=free_port(),
        database_path=db_path,
        default_business_hours="daily 00:00-24:00",
        callee_local_hours="00:00-24:00",
        retry_backoff_minutes=0,
        max_attempts=12,
        max_calls_per_number_per_day=12,  # every kill can cost a call; the daily cap is not under test
        silence_timeout_seconds=6.0,
    )
    ids: list[str] = []
    kill_delays: list[float] = []
    server: Server | None = None
    try:
        for start in range(KILLS + 1):
            server = Server(env, tmp_path, tmp_path / f"serve-{start:02d}.log")
            await server.start()
            for k, at in enumerate(SUBMIT_AT):
                if at == start:
                    ids.append(await submit_errand(world, plan[k][0]))
            if start == KILLS:
                break  # the last run is left alone to finish every errand
            delay = rng.uniform(0.0, MAX_KILL_DELAY)
            kill_delays.append(delay)
            await asyncio.sleep(delay)  # the fault's timing, not a wait for a condition
            await server.kill()

        db = await open_database(str(db_path))
        try:
            store = JobStore(db)

            async def all_told() -> bool:
                jobs = [await store.get(i) for i in ids]
                return all(j.state.is_final and j.meta.result_delivered for j in jobs)

            try:
                await wait_until(all_told, 120, "every errand to finish and its result to reach the chat")
            except TimeoutError:
                states = {i: str((await store.get(i)).state) for i in ids}
                raise AssertionError(f"seed {seed}: {states}\n{server.log_tail()}") from None
            assert await server.terminate() == 0
            server = None
            jobs = [await store.get(i) for i in ids]
            all_jobs = await store.list(limit=1000)
            histories = {j.id: await store.history(j.id) for j in jobs}
        finally:
            await db.close()
    finally:
        if server is not None and server.proc is not None and server.returncode is None:
            await server.kill()
        await watch.close()
        await world.stop()

    context = f"seed {seed}, kill delays {[round(d, 2) for d in kill_delays]}"
    # nothing lost, nothing duplicated (a re-delivered chat update must not enqueue twice)
    assert sorted(j.id for j in all_jobs) == sorted(ids), context
    assert len(ids) == len(SUBMIT_AT)
    # never two live calls of one errand, never a redial while its call was live
    assert not watch.overlaps, (context, watch.overlaps)
    for job in jobs:
        calls = [c for c in watch.calls if job_of_call(c) == job.id]
        story = "; ".join(f"{h.from_state}>{h.to_state}: {h.reason}" for h in histories[job.id])
        why = f"{context}\nerrand {job.id} ended {job.state} after {len(calls)} call(s): {story}"
        assert job.state.is_final, why
        assert job.state in (JobState.BOOKED, JobState.GAVE_UP), why  # what this receptionist allows
        assert len(calls) <= job.attempts, why
        assert job.calls_made <= job.max_attempts, why
        events = [e for e in world.graph.events if e.get("transactionId") == job.id]
        if job.state is JobState.BOOKED:
            assert len(events) == 1, why
            assert job.outcome is not None and job.outcome.event_link, why
        else:
            assert not events, f"{why}\n{len(events)} calendar event(s) for an errand that is not booked"
    assert any(j.state is JobState.BOOKED for j in jobs), context
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()
