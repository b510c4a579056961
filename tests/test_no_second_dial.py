"""Never a second dial: a call whose create answer is lost is still known.

The real ``TwilioCallPlacer`` and ``TwilioWebhooks`` against the sandbox Twilio,
which creates the call (it really rings and calls back) but loses the create's
HTTP answer. The attempt's nonce in the callback URLs ties the ``initiated``
callback to the attempt, and Twilio's Calls list finds the call too.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp import web
from factories import call_request
from telephony_fakes import QuietSession
from twilio.request_validator import RequestValidator

from sandbox.twilio import Behavior, LostAnswer, SandboxTwilio
from storage.db import open_database
from storage.errors import ProviderConnectionError, ProviderTimeoutError
from storage.jobs import JobStore
from storage.models import CallOutcome, Job, JobState, OutcomeKind, utcnow
from telephony.twilio_rest import STATUS_PATH, TwilioCallPlacer
from telephony.webhooks import TwilioWebhooks

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*BasicAuth.*:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*'auth' parameter.*:DeprecationWarning"),
]

SID = "AC" + "2" * 32
TOKEN = "twilio-auth-token"
PHONE = "+14155550100"


@dataclass
class Sink:
    outcomes: dict[str, CallOutcome] = field(default_factory=dict)
    reported: asyncio.Event = field(default_factory=asyncio.Event)

    async def call_answered(self, job_id: str, call_sid: str) -> None:
        return None

    async def report_outcome(self, job_id: str, outcome: CallOutcome, transcript: Any = ()) -> None:
        self.outcomes[job_id] = outcome
        self.reported.set()


@dataclass
class Rig:
    store: JobStore
    twilio: SandboxTwilio
    placer: TwilioCallPlacer
    sink: Sink

    async def dialing_job(self) -> Job:
        await self.store.enqueue(call_request(phone=PHONE), due_at=utcnow(), max_attempts=3)
        [job] = await self.store.claim_due("test", limit=1, lease_seconds=300)
        return job


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    db = await open_database(tmp_path / "jobs.sqlite")
    store = JobStore(db)
    twilio = SandboxTwilio(account_sid=SID, auth_token=TOKEN, pace=8.0, ring_seconds=0.05)
    await twilio.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    public = f"http://127.0.0.1:{sock.getsockname()[1]}"
    placer = TwilioCallPlacer(
        store, account_sid=SID, auth_token=TOKEN, from_number="+14155550199",
        public_base_url=public, api_base_url=twilio.base_url, http_timeout=2.0,
    )  # fmt: skip
    sink = Sink()
    webhooks = TwilioWebhooks(
        store, sink, auth_token=TOKEN, public_base_url=public,
        session_factory=lambda job, sid: QuietSession(), placer=placer,
    )  # fmt: skip
    app = web.Application()
    webhooks.add_routes(app)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        yield Rig(store, twilio, placer, sink)
    finally:
        await runner.cleanup()
        await twilio.stop()
        await placer.aclose()
        await db.close()


@pytest.mark.parametrize(
    ("how", "error"), [(LostAnswer.HANG, ProviderTimeoutError), (LostAnswer.DROP, ProviderConnectionError)]
)
async def test_lost_create_answer_the_call_is_known_by_nonce_and_by_list(
    rig: Rig, how: LostAnswer, error: type[Exception]
) -> None:
    rig.twilio.program(PHONE, Behavior.NO_ANSWER)
    job = await rig.dialing_job()
    rig.twilio.lose_next_create_answer(how)
    with pytest.raises(error) as raised:
        await rig.placer.place_call(job)
    assert raised.value.retryable  # type: ignore[attr-defined]
    [call] = rig.twilio.calls.values()
    async with asyncio.timeout(10):
        await rig.sink.reported.wait()  # initiated, ringing, no-answer went through the webhooks
    stored = await rig.store.get(job.id)
    # the initiated callback carried this attempt's nonce: its CallSid is recorded for the attempt
    assert stored.call_sid == call.sid and stored.current_call_sid == call.sid
    assert rig.sink.outcomes[job.id].kind is OutcomeKind.NO_ANSWER
    nonce = stored.dial_nonce
    for url in (call.param("StatusCallback"), call.param("AsyncAmdStatusCallback")):
        assert parse_qs(urlsplit(str(url)).query) == {"job": [job.id], "nonce": [nonce]}
    # and Twilio's Calls list finds it from the attempt's start (and nothing before or after)
    started = stored.meta.dial_started_at
    assert started is not None
    found = await rig.placer.find_calls(PHONE, started_after=started - timedelta(seconds=2))
    assert [(f.sid, f.status) for f in found] == [(call.sid, "no-answer")]
    assert await rig.placer.find_calls(PHONE, started_after=utcnow() + timedelta(minutes=5)) == []
    assert await rig.placer.find_calls("+14155550111", started_after=started) == []


async def test_a_late_callback_of_an_earlier_attempt_never_ends_the_current_one(rig: Rig) -> None:
    """Recovery hung up attempt 1's call and the errand was claimed again; attempt 2's call is
    ringing, its create not answered yet. Attempt 1's final callbacks arrive only now: taken for
    attempt 2's end, they would have its errand retried, and dialled, while its call still rings."""
    job = await rig.dialing_job()
    await rig.store.update_meta(job.id, call_nonce="nonce-attempt-1", call_nonce_attempt=job.attempts)
    await rig.store.set_call_sid(job.id, "CA" + "1" * 32)
    await rig.store.transition(job.id, JobState.QUEUED, reason="recovered: hung up; retry planned")
    [again] = await rig.store.claim_due("test", limit=1, lease_seconds=300)
    assert again.attempts == 2
    # what TwilioCallPlacer stores right before attempt 2's create
    await rig.store.update_meta(job.id, call_nonce="nonce-attempt-2", call_nonce_attempt=again.attempts)
    before = (await rig.store.get(job.id), len(await rig.store.history(job.id)))
    async with aiohttp.ClientSession() as http:
        for status in ("completed", "canceled"):
            for query in ({"job": job.id, "nonce": "nonce-attempt-1"}, {"job": job.id}):
                url = f"{rig.placer.public_base_url}{STATUS_PATH}?{urlencode(query)}"
                params = {"CallSid": "CA" + "1" * 32, "CallStatus": status}
                signature = RequestValidator(TOKEN).compute_signature(url, params)
                async with http.post(url, data=params, headers={"X-Twilio-Signature": signature}) as resp:
                    assert resp.status == 204
    assert rig.sink.outcomes == {}
    assert (await rig.store.get(job.id), len(await rig.store.history(job.id))) == before
