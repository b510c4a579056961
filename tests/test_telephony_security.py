"""Unsigned, wrongly signed and replayed Twilio requests are refused and change nothing."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from test_telephony_calls import SID, Harness, ScriptedAgent, wait_inputs
from test_telephony_calls import h as h  # noqa: F401  (the fixture)
from twilio.request_validator import RequestValidator

from storage.models import Job, JobState
from telephony.twilio_rest import token_sha256

pytestmark = [
    pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'auth' parameter is deprecated:DeprecationWarning"),
]

ROUTES = ["/twilio/status", "/twilio/amd", "/twilio/incoming"]


async def snapshot(h: Harness, job: Job) -> tuple[Any, ...]:
    now = await h.store.get(job.id)
    return now.state, now.meta, now.call_sid, now.outcome, len(await h.store.history(job.id))


def form(job: Job, sid: str) -> dict[str, str]:
    return {"CallSid": sid, "AccountSid": SID, "CallStatus": "in-progress", "AnsweredBy": "machine_end_beep"}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("how", ["missing", "wrong_key", "wrong_url", "tampered"])
async def test_bad_signatures_are_403_and_change_nothing(h: Harness, route: str, how: str) -> None:
    job = await h.dialing_job()
    sid = "CA" + "a" * 32
    await h.store.set_call_sid(job.id, sid)
    before = await snapshot(h, job)
    url = f"{h.public}{route}?job={job.id}"
    params = form(job, sid)
    headers = {}
    if how == "wrong_key":
        headers["X-Twilio-Signature"] = RequestValidator("not-the-token").compute_signature(url, params)
    elif how == "wrong_url":
        headers["X-Twilio-Signature"] = h.sign(f"{h.public}/twilio/other?job={job.id}", params)
    elif how == "tampered":
        headers["X-Twilio-Signature"] = h.sign(url, params | {"CallStatus": "ringing"})
    async with h.http.post(url, data=params, headers=headers) as resp:
        assert resp.status == 403
    assert await snapshot(h, job) == before
    assert h.sink.answered == [] and h.sink.reports == 0 and h.sessions == []


async def test_correctly_signed_callback_is_accepted(h: Harness) -> None:
    job = await h.dialing_job()
    sid = "CA" + "b" * 32
    url = f"{h.public}/twilio/amd?job={job.id}"
    params = {"CallSid": sid, "AccountSid": SID, "AnsweredBy": "human"}
    async with h.http.post(url, data=params, headers={"X-Twilio-Signature": h.sign(url, params)}) as resp:
        assert resp.status == 204


async def test_oversized_body_is_413(h: Harness) -> None:
    job = await h.dialing_job()
    url = f"{h.public}/twilio/status?job={job.id}"
    params = {"CallSid": "CA1", "Junk": "x" * 70_000}
    async with h.http.post(url, data=params, headers={"X-Twilio-Signature": h.sign(url, params)}) as resp:
        assert resp.status == 413


@pytest.mark.parametrize("signature", [None, "bogus", "wrong_key"])
async def test_stream_upgrade_needs_a_signature(h: Harness, signature: str | None) -> None:
    url = h.public.replace("http://", "ws://") + "/twilio/stream"
    headers = {}
    if signature == "bogus":
        headers["X-Twilio-Signature"] = "bm9wZQ=="
    elif signature == "wrong_key":
        headers["X-Twilio-Signature"] = RequestValidator("other").compute_signature(url, {})
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await h.http.ws_connect(url, headers=headers)
    assert info.value.status == 403


async def open_stream(h: Harness, job_id: str, token: str, call_sid: str) -> aiohttp.ClientWebSocketResponse:
    url = h.public.replace("http://", "ws://") + "/twilio/stream"
    ws = await h.http.ws_connect(url, headers={"X-Twilio-Signature": h.sign(url, {})})
    await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    start = {
        "accountSid": SID, "streamSid": "MZ1", "callSid": call_sid, "tracks": ["inbound"],
        "customParameters": {"job": job_id, "token": token},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }  # fmt: skip
    start_msg = {"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": start}
    await ws.send_str(json.dumps(start_msg))
    return ws


async def assert_refused(ws: aiohttp.ClientWebSocketResponse) -> None:
    msg = await ws.receive(timeout=5)
    assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
    await ws.close()


@pytest.mark.parametrize("case", ["wrong_token", "unknown_job", "job_not_dialing"])
async def test_stream_start_with_bad_token_is_refused(h: Harness, case: str) -> None:
    job = await h.dialing_job()
    await h.store.update_meta(job.id, stream_token_sha256=token_sha256("right-token"))
    if case == "job_not_dialing":
        await h.store.transition(job.id, JobState.QUEUED, reason="test")
    before = await snapshot(h, job)
    job_id = "nope" if case == "unknown_job" else job.id
    token = "wrong-token" if case == "wrong_token" else "right-token"
    await assert_refused(await open_stream(h, job_id, token, "CA" + "c" * 32))
    assert await snapshot(h, job) == before
    assert h.sessions == []


async def test_stream_token_is_single_use(h: Harness) -> None:
    job = await h.dialing_job(ScriptedAgent([]))
    await h.store.update_meta(job.id, stream_token_sha256=token_sha256("one-time"))
    sid = "CA" + "d" * 32
    agent = h.agents[job.id]
    assert isinstance(agent, ScriptedAgent)
    first = await open_stream(h, job.id, "one-time", sid)
    # the first stream is live: 2 s of audio later its session greets (proof it was admitted)
    silence = base64.b64encode(b"\xff" * 160).decode()
    for n in range(100):
        media = {"track": "inbound", "chunk": str(n + 1), "timestamp": str(n * 20), "payload": silence}
        await first.send_str(json.dumps({"event": "media", "streamSid": "MZ1", "media": media}))
    await wait_inputs(agent, 1)
    assert (await h.store.get(job.id)).meta.stream_token_sha256 is None
    before = await snapshot(h, job)
    await assert_refused(await open_stream(h, job.id, "one-time", sid))
    assert await snapshot(h, job) == before
    assert len(h.sessions) == 1
    await first.close()
    await h.webhooks.join()
    assert h.sessions[0].ended and h.sessions[0].end_reason == "media stream dropped"
