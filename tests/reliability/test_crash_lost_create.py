"""SIGKILL between Twilio placing the call and the CallSid reaching the database: still one call.

The sandbox Twilio creates the call (it rings) but holds the create's HTTP
answer, so the server is killed with the call placed and no CallSid stored by
the dispatcher. After the restart, recovery must find the call (by the nonce
its ``initiated`` callback carried, or in Twilio's Calls list) and reconcile it
instead of deciding "never created" and dialling a second time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from loopback import free_port
from reliability_kit import CallWatch, job_of_call, submit_errand, wait_until
from serve_proc import Server, server_env

from concierge.settings import Settings
from demo.world import SandboxWorld
from sandbox.twilio import Behavior, LostAnswer
from storage.db import open_database
from storage.jobs import JobStore
from storage.models import JobState

pytestmark = [pytest.mark.slow]

PHONE = "+14155550100"


async def test_sigkill_before_the_call_sid_is_stored_dials_once(tmp_path: Path) -> None:
    world = await SandboxWorld(pace=6.0, base=Settings(_env_file=None)).start()  # type: ignore[call-arg]
    watch = CallWatch(world)
    world.twilio.program(PHONE, Behavior.NO_ANSWER)
    world.twilio.lose_next_create_answer(LostAnswer.HANG)
    db_path = tmp_path / "concierge.db"
    env = server_env(
        world,
        port=free_port(),
        database_path=db_path,
        default_business_hours="daily 00:00-24:00",
        callee_local_hours="00:00-24:00",
        retry_backoff_minutes=0,
        max_attempts=1,  # the one call's outcome ends the errand: any second call is a redial
    )
    server = Server(env, tmp_path, tmp_path / "serve-1.log")
    restarted: Server | None = None
    try:
        await server.start()
        job_id = await submit_errand(world, PHONE)
        async with asyncio.timeout(30):
            await world.twilio.answer_lost.wait()  # the call exists; its create is still waiting
        await server.kill()
        [lost] = world.twilio.lost_answers

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
        finally:
            await db.close()
    finally:
        for s in (server, restarted):
            if s is not None and s.proc is not None and s.returncode is None:
                await s.kill()
        await watch.close()
        await world.stop()

    story = f"{history}\n{server.log_tail(20)}"
    creates = [r for r in world.twilio.requests if r[0] == "POST" and r[1].endswith("/Calls.json")]
    assert len(creates) == 1 and list(world.twilio.calls) == [lost], story  # exactly one call in total
    assert [job_of_call(c) for c in watch.calls] == [job_id]
    assert not watch.overlaps, watch.overlaps
    assert job.call_sid == lost, story  # recovery adopted the call the dead process never recorded
    assert job.state is JobState.GAVE_UP and job.calls_made == 1, story
    assert not any("never created" in reason for *_, reason in history), story
