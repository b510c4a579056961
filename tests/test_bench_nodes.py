"""``bench.nodes`` keeps working on both engines: a small claims run counts every errand once.

Timing figures are never asserted; only that two claimers together took every errand exactly
once, through in_call to booked, and that the report has its keys.
"""

from __future__ import annotations

from bench.nodes import claims
from storage.db import open_database
from storage.jobs import JobStore
from storage.models import JobState


async def test_two_claimers_take_every_errand_once_on_each_engine(db_url: str) -> None:
    result = await claims(db_url, jobs=30, claimers=2, batch=1, finish=True)
    assert result["jobs"] == 30 and sum(result["per_claimer"]) == 30
    assert result["errands_per_s"] > 0 and result["transactions_per_s"] > 0
    db = await open_database(db_url)
    try:
        jobs = await JobStore(db).list(limit=100)
    finally:
        await db.close()
    assert len(jobs) == 30 and all(j.state is JobState.BOOKED and j.attempts == 1 for j in jobs)
