"""Shared fakes for the chat tests: an in-memory ``ErrandDesk`` (the dispatcher is not ours)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from storage.errors import IllegalTransition, JobNotFound
from storage.models import CallRequest, Job, JobState

#: "now" for every chat test: Wed 12 Mar 2025, 11:00 in Los Angeles.
NOW = datetime(2025, 3, 12, 18, 0, tzinfo=UTC)
#: What ``plan`` answers: Tue 18 Mar 9:00 in Los Angeles.
PLANNED = datetime(2025, 3, 18, 16, 0, tzinfo=UTC)


class FakeDesk:
    """Records what the chat asked for; ``plan`` returns a fixed time."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.submitted: list[CallRequest] = []
        self.cancelled: list[tuple[str, str]] = []
        self.answers: list[tuple[str, str, str]] = []

    async def plan(self, request: CallRequest) -> datetime:
        return PLANNED

    async def submit(self, request: CallRequest) -> Job:
        self.submitted.append(request)
        job = Job(
            id=f"j{len(self.jobs) + 1}",
            request=request,
            state=JobState.QUEUED,
            attempts=0,
            max_attempts=3,
            next_attempt_at=PLANNED,
            created_at=NOW,
            updated_at=NOW,
        )
        self.jobs[job.id] = job
        return job

    async def cancel(self, job_id: str, user_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None or job.request.origin.user_id != user_id:
            raise JobNotFound(job_id)
        if job.state != JobState.QUEUED:
            raise IllegalTransition(f"{job.state} -> cancelled")
        self.cancelled.append((job_id, user_id))
        self.jobs[job_id] = replace(job, state=JobState.CANCELLED)
        return self.jobs[job_id]

    async def answer(self, job_id: str, user_id: str, answer: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None or job.request.origin.user_id != user_id:
            raise JobNotFound(job_id)
        self.answers.append((job_id, user_id, answer))
        self.jobs[job_id] = replace(job, state=JobState.QUEUED)
        return self.jobs[job_id]

    async def jobs_for(self, user_id: str, *, limit: int = 10) -> list[Job]:
        mine = [j for j in self.jobs.values() if j.request.origin.user_id == user_id]
        return list(reversed(mine))[:limit]
