"""Finished calls leave nothing in memory, whichever of the session and Twilio's final
callback comes first, and late or repeated callbacks stay harmless.

Signed status callbacks go over loopback HTTP into ``TwilioWebhooks``; the job store is a
small in-memory stand-in for the three methods the webhooks use, the session a trivial one
that ends when told to or on its own, and the sink moves the job the way the dispatcher would.
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from factories import call_request
from twilio.request_validator import RequestValidator

from storage.errors import JobNotFound
from storage.models import CallOutcome, Job, JobState, OutcomeKind, Turn
from telephony import media_stream
from telephony.twilio_rest import STATUS_PATH
from telephony.webhooks import TwilioWebhooks

TOKEN = "twilio-auth-token"
NOW = datetime(2030, 3, 5, 17, 0, tzinfo=UTC)
CALLS = 1000
BATCH = 50


class MemoryJobs:
    """The job-store methods the webhooks call, in memory."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}

    def add(self, n: int, call_sid: str) -> Job:
        job = Job(
            id=f"job{n:05d}",
            request=call_request(),
            state=JobState.DIALING,
            attempts=1,
            max_attempts=3,
            next_attempt_at=NOW,
            created_at=NOW,
            updated_at=NOW,
            call_sid=call_sid,
        )
        self.jobs[job.id] = job
        return job

    async def get(self, job_id: str) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise JobNotFound(job_id) from None

    async def find_by_call_sid(self, call_sid: str) -> Job | None:
        return next((j for j in self.jobs.values() if j.call_sid == call_sid), None)

    async def update_meta(self, job_id: str, **values: Any) -> Job:
        job = self.jobs[job_id]
        self.jobs[job_id] = replace(job, meta=job.meta.changed(**values))
        return self.jobs[job_id]


class Sink:
    """Moves a job on as the dispatcher would; counts what each job was told."""

    def __init__(self, jobs: MemoryJobs) -> None:
        self.jobs = jobs
        self.reports: Counter[str] = Counter()
        self.reported: dict[str, asyncio.Event] = {}

    def event(self, job_id: str) -> asyncio.Event:
        return self.reported.setdefault(job_id, asyncio.Event())

    async def call_answered(self, job_id: str, call_sid: str) -> None:
        job = self.jobs.jobs[job_id]
        if job.state is JobState.DIALING:
            self.jobs.jobs[job_id] = replace(job, state=JobState.IN_CALL)

    async def report_outcome(self, job_id: str, outcome: CallOutcome, transcript: Any = ()) -> None:
        self.reports[job_id] += 1
        job = self.jobs.jobs[job_id]
        if job.state.is_active:
            final = JobState.BOOKED if outcome.kind is OutcomeKind.BOOKED else JobState.QUEUED
            self.jobs.jobs[job_id] = replace(job, state=final)
        self.event(job_id).set()


class TrivialSession:
    """Ends by itself (``on_its_own``) or when the webhooks end it."""

    def __init__(self, on_its_own: bool) -> None:
        self._ended = asyncio.Event()
        if on_its_own:
            self._ended.set()

    async def run(self) -> tuple[CallOutcome, list[Turn]]:
        await self._ended.wait()
        return CallOutcome(OutcomeKind.BOOKED, summary="booked"), []

    async def attach(self, ws: web.WebSocketResponse, start: media_stream.Start) -> None:
        return None

    def end(self, reason: str, outcome: CallOutcome | None = None, *, hang_up: bool = False) -> None:
        self._ended.set()


class Rig:
    def __init__(self) -> None:
        self.jobs = MemoryJobs()
        self.sink = Sink(self.jobs)
        self.sessions_first: set[str] = set()
        self.sessions = 0

    async def start(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.public = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.webhooks = TwilioWebhooks(
            self.jobs, self.sink, auth_token=TOKEN, public_base_url=self.public,
            session_factory=self.session_for,
        )  # fmt: skip
        app = web.Application()
        self.webhooks.add_routes(app)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=BATCH))
        self.validator = RequestValidator(TOKEN)

    async def stop(self) -> None:
        await self.http.close()
        await self.runner.cleanup()

    def session_for(self, job: Job, call_sid: str) -> TrivialSession:
        self.sessions += 1
        return TrivialSession(on_its_own=job.id in self.sessions_first)

    async def status(self, job: Job, status: str) -> None:
        url = f"{self.public}{STATUS_PATH}?job={job.id}"
        form = {"CallSid": str(job.call_sid), "CallStatus": status, "AccountSid": "AC" + "1" * 32}
        headers = {"X-Twilio-Signature": self.validator.compute_signature(url, form)}
        async with self.http.post(url, data=form, headers=headers) as resp:
            assert resp.status == 204

    async def call(self, job: Job, *, session_first: bool) -> None:
        """One answered call; the session's report and ``completed`` in the order asked for,
        then ``completed`` again (Twilio may repeat a callback)."""
        await self.status(job, "initiated")
        await self.status(job, "in-progress")
        if session_first:
            await self.sink.event(job.id).wait()
            await self.status(job, "completed")
        else:
            await self.status(job, "completed")
            await self.sink.event(job.id).wait()
        await self.status(job, "completed")


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.mark.parametrize("session_first", [True, False], ids=["session-first", "completed-first"])
async def test_a_thousand_calls_leave_nothing_in_memory(rig: Rig, session_first: bool) -> None:
    jobs = [rig.jobs.add(n, f"CA{n:032d}") for n in range(CALLS)]
    if session_first:
        rig.sessions_first = {j.id for j in jobs}
    async with asyncio.timeout(120):
        for i in range(0, CALLS, BATCH):
            await asyncio.gather(*(rig.call(j, session_first=session_first) for j in jobs[i : i + BATCH]))
    assert rig.webhooks._calls == {}
    assert rig.webhooks.active_calls() == 0
    assert rig.sessions == CALLS
    assert set(rig.sink.reports.values()) == {1}, "every call reported exactly once"
    assert len(rig.sink.reports) == CALLS
    assert all(j.state is JobState.BOOKED for j in rig.jobs.jobs.values())


async def test_late_callbacks_after_the_report_do_not_bring_a_call_back(rig: Rig) -> None:
    job = rig.jobs.add(1, "CA" + "7" * 32)
    rig.sessions_first = {job.id}
    await rig.call(job, session_first=True)
    for status in ("ringing", "in-progress", "busy", "completed"):
        await rig.status(job, status)
    assert rig.webhooks._calls == {}
    assert rig.sessions == 1 and rig.sink.reports[job.id] == 1


async def test_unanswered_call_without_a_session_is_dropped_too(rig: Rig) -> None:
    job = rig.jobs.add(2, "CA" + "8" * 32)
    await rig.status(job, "busy")
    await rig.status(job, "completed")
    assert rig.webhooks._calls == {}
    assert rig.sink.reports[job.id] == 1 and rig.sessions == 0


async def test_a_live_job_this_process_never_saw_still_gets_its_outcome(rig: Rig) -> None:
    """After a restart the entry is gone but the job is still active: ``completed`` reports it."""
    job = rig.jobs.add(3, "CA" + "9" * 32)
    await rig.status(job, "completed")
    assert rig.sink.reports[job.id] == 1 and rig.webhooks._calls == {}
