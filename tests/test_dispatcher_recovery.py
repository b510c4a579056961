"""Crash recovery: jobs left mid-call are reconciled with the provider before any redial."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from dispatcher_harness import Harness, harness, local, request

from storage.errors import ProviderConnectionError
from storage.models import Job, JobState, OutcomeKind
from storage.ports import JobEvent

NY = "America/New_York"
MONDAY_10 = local(NY, 2026, 6, 8, 10, 0)


async def orphan(
    h: Harness, *, owner: str = "crashed", call_sid: str | None = "CAold", answered: bool = False
) -> Job:
    """A job left dialing (or in_call) by a dispatcher that is gone, lease expired."""
    job = await h.store.enqueue(request(), due_at=h.clock.now(), max_attempts=3)
    [job] = await h.store.claim_due(owner, limit=1, lease_seconds=60)
    if call_sid is not None:
        job = await h.store.set_call_sid(job.id, call_sid)
    if answered:
        job = await h.store.transition(job.id, JobState.IN_CALL, reason="answered")
    h.clock.advance(timedelta(seconds=61))
    return job


@pytest.mark.parametrize("status", ["queued", "ringing", "in-progress"])
async def test_live_call_of_dead_dispatcher_is_hung_up_and_retried(tmp_path: Path, status: str) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10, start_loop=False) as h:
        job = await orphan(h, answered=status == "in-progress")
        h.placer.status["CAold"] = status
        await h.start()
        assert h.placer.hung_up == ["CAold"]
        after = await h.store.get(job.id)
        assert after.state is JobState.QUEUED and after.outcome is not None
        assert after.outcome.kind is OutcomeKind.ERROR and after.outcome.call_sid == "CAold"
        assert after.next_attempt_at == h.clock.now() + timedelta(minutes=30)
        assert h.placer.calls == []  # no redial before the back-off
        assert h.notifier.events(job.id) == [JobEvent.RETRY_PLANNED]
        reasons = [e.reason for e in await h.store.history(job.id)]
        assert "lease taken over from crashed" in reasons


@pytest.mark.parametrize(
    ("status", "state", "kind"),
    [
        ("completed", JobState.QUEUED, OutcomeKind.ERROR),
        ("busy", JobState.QUEUED, OutcomeKind.BUSY),
        ("no-answer", JobState.QUEUED, OutcomeKind.NO_ANSWER),
        ("canceled", JobState.QUEUED, OutcomeKind.ERROR),
        ("failed", JobState.FAILED, OutcomeKind.FAILED),
        ("something-new", JobState.QUEUED, OutcomeKind.ERROR),
    ],
)
async def test_ended_call_is_reported_with_matching_outcome(
    tmp_path: Path, status: str, state: JobState, kind: OutcomeKind
) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10, start_loop=False) as h:
        job = await orphan(h)
        h.placer.status["CAold"] = status
        await h.start()
        after = await h.store.get(job.id)
        assert after.state is state
        assert after.outcome is not None and after.outcome.kind is kind
        assert h.placer.hung_up == [] and h.placer.calls == []
        expected = JobEvent.FINISHED if state is JobState.FAILED else JobEvent.RETRY_PLANNED
        assert h.notifier.events(job.id) == [expected]


async def test_job_without_call_sid_was_never_dialled_and_is_called_now(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10, start_loop=False) as h:
        job = await orphan(h, call_sid=None)
        await h.start()
        # Back to queued without using an attempt, then dialled right away (the business is open).
        assert [c.job_id for c in h.placer.calls] == [job.id]
        after = await h.store.get(job.id)
        assert after.state is JobState.DIALING and after.calls_made == 1
        assert h.notifier.events(job.id)[:2] == [JobEvent.RETRY_PLANNED, JobEvent.CALLING]


async def test_previous_call_sid_of_earlier_attempt_is_not_mistaken_for_current(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10, start_loop=False) as h:
        job = await orphan(h)  # attempt 1 had CAold
        await h.store.transition(job.id, JobState.QUEUED, reason="retry", next_attempt_at=h.clock.now())
        [job] = await h.store.claim_due("crashed", limit=1, lease_seconds=60)  # attempt 2 crashed pre-create
        assert job.call_sid == "CAold" and job.current_call_sid is None
        h.clock.advance(timedelta(seconds=61))
        await h.start()
        assert h.placer.hung_up == []
        assert [c.attempt for c in h.placer.calls] == [3]


async def test_same_owner_from_previous_run_is_reconciled_even_with_live_lease(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10, start_loop=False) as h:
        job = await h.store.enqueue(request(), due_at=h.clock.now(), max_attempts=3)
        await h.store.claim_due("disp-1", limit=1, lease_seconds=900)  # our own name, lease still valid
        await h.store.set_call_sid(job.id, "CAmine")
        h.placer.status["CAmine"] = "ringing"
        await h.start()
        assert h.placer.hung_up == ["CAmine"]
        assert (await h.store.get(job.id)).state is JobState.QUEUED


async def test_lease_held_by_live_other_dispatcher_is_left_alone(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10, start_loop=False) as h:
        job = await h.store.enqueue(request(), due_at=h.clock.now(), max_attempts=3)
        await h.store.claim_due("other", limit=1, lease_seconds=900)
        await h.start()
        assert (await h.store.get(job.id)).lease_owner == "other"
        assert h.placer.hung_up == [] and h.placer.calls == []


async def test_unknown_status_keeps_job_and_checks_again_later(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10, start_loop=False) as h:
        job = await orphan(h)
        h.placer.status_error = ProviderConnectionError("twilio unreachable", provider="twilio")
        await h.start()
        held = await h.store.get(job.id)
        assert held.state is JobState.DIALING and held.lease_owner == "disp-1"
        assert h.placer.calls == [] and h.placer.hung_up == []
        # When our adopted lease runs out the loop looks again; now Twilio answers.
        h.placer.status_error = None
        h.placer.status["CAold"] = "no-answer"
        h.clock.advance(timedelta(seconds=901))
        await h.idle()
        after = await h.store.get(job.id)
        assert after.outcome is not None and after.outcome.kind is OutcomeKind.NO_ANSWER


async def test_own_live_call_with_expired_lease_is_renewed_not_hung_up(tmp_path: Path) -> None:
    async with harness(tmp_path / "q.db", MONDAY_10, lease_seconds=120.0) as h:
        job = await h.dispatcher.submit(request())
        await h.idle()
        sid = h.placer.calls[0].call_sid
        await h.dispatcher.call_answered(job.id, sid)
        h.placer.status[sid] = "in-progress"
        h.clock.advance(timedelta(seconds=121))
        await h.idle()
        renewed = await h.store.get(job.id)
        assert renewed.state is JobState.IN_CALL and h.placer.hung_up == []
        assert renewed.lease_expires_at == h.clock.now() + timedelta(seconds=120)
        # A lost final webhook: the call ended, the sweep notices at the next expiry.
        h.placer.status[sid] = "completed"
        h.clock.advance(timedelta(seconds=121))
        await h.idle()
        after = await h.store.get(job.id)
        assert after.state is JobState.QUEUED and after.outcome is not None
        assert after.outcome.kind is OutcomeKind.ERROR
