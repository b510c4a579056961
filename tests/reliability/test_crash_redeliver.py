"""A result stored but never posted (the process died in between) reaches the chat after a restart.

The database is left exactly as a SIGKILL between ``transition(..., BOOKED)``
and ``notify`` leaves it: the errand booked, its outcome stored, no delivery
marker. Starting the product on that database must post the result once — and
a second restart must not post it again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from factories import call_request

from concierge.app import Concierge
from demo.runner import start_stack, wait_until
from demo.world import DEMO_TELEGRAM_USER
from storage.db import open_database
from storage.jobs import JobStore
from storage.models import (
    Booking,
    CallOutcome,
    ChatOrigin,
    JobState,
    OutcomeKind,
    Platform,
    Speaker,
    Turn,
    utcnow,
)

pytestmark = [pytest.mark.filterwarnings("ignore:.*BasicAuth.*:DeprecationWarning")]


async def finished_but_untold(path: Path) -> str:
    db = await open_database(str(path))
    try:
        store = JobStore(db)
        origin = ChatOrigin(Platform.TELEGRAM, str(DEMO_TELEGRAM_USER), str(DEMO_TELEGRAM_USER))
        request = call_request(origin=origin)
        job = await store.enqueue(request, due_at=utcnow() - timedelta(minutes=1), max_attempts=3)
        [job] = await store.claim_due("dead-server", limit=1, lease_seconds=60)
        await store.transition(job.id, JobState.IN_CALL, owner="dead-server", reason="call answered")
        start = datetime(2026, 12, 2, 23, 30, tzinfo=utcnow().tzinfo)
        booking = Booking(start, start + timedelta(minutes=30), "haircut")
        outcome = CallOutcome(OutcomeKind.BOOKED, summary="Booked for Wednesday.", booking=booking)
        await store.add_turns(job.id, 1, [Turn(Speaker.CALLEE, "How about Wednesday at 3:30?", at=1.0)])
        await store.transition(job.id, JobState.BOOKED, reason="call ended: booked", outcome=outcome)
        return job.id  # ...and the process died here: nothing was posted
    finally:
        await db.close()


async def test_a_stored_but_unposted_result_is_posted_once_after_restarts(tmp_path: Path) -> None:
    db_path = tmp_path / "concierge.db"
    job_id = await finished_but_untold(db_path)
    posted: list[str] = []
    for restart in range(2):
        world, app, _clock = await start_stack(pace=8.0, database_path=str(db_path))
        try:
            if not posted:

                async def told(app: Concierge = app) -> bool:
                    job = await app.store.get(job_id)
                    return bool(job.meta.result_delivered and job.meta.transcript_delivered)

                await wait_until(told, 30, "the result to be posted")
            await app.dispatcher.wait_idle()
            posted += [s.text or "" for s in world.telegram.sent if s.method == "sendMessage"]
            documents = [s for s in world.telegram.sent if s.method == "sendDocument"]
            if restart == 0:
                assert len(documents) == 1  # the transcript came along
        finally:
            await app.stop(grace=1)
            await world.stop()
    results = [t for t in posted if t.startswith("Booked:")]
    assert len(results) == 1, posted  # once, not again on the second restart
    assert "Joe's Barbershop" in results[0]
