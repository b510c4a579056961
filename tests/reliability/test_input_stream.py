"""Bad input on the Twilio media-stream websocket, through the whole app.

Before admission (signature on the upgrade, then a ``start`` carrying the
job id and its one-time token) nothing may change; random frames end in a
policy close, never in a handler exception. After admission a stream that
sends junk — bad base64, ``Infinity`` timestamps, binary frames, JSON nested
a hundred thousand deep — must not crash the call: the junk is skipped and
the call ends normally when the stream says ``stop``.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import (
    TWILIO_SDK_WARNINGS,
    Stack,
    dialing_job,
    open_quiet_stack,
    snapshot,
    twilio_signature,
    wait_until,
)

from storage.models import Job, OutcomeKind
from telephony.twilio_rest import STREAM_PATH, token_sha256

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    *(pytest.mark.filterwarnings(w) for w in TWILIO_SDK_WARNINGS),
]

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
POLICY_VIOLATION = 1008

json_st = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
events = st.sampled_from(["connected", "start", "media", "mark", "dtmf", "stop", "nope", None])


def twilio_like(event: str | None, body: Any) -> str:
    msg: dict[str, Any] = {"event": event, "sequenceNumber": "1", "streamSid": "MZ1"}
    if event:
        msg[event] = body
    return json.dumps(msg)


frame = (
    st.binary(max_size=300)
    | st.text(max_size=300)
    | json_st.map(json.dumps)
    | st.builds(twilio_like, events, json_st)
)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack() -> AsyncIterator[Stack]:
    s = await open_quiet_stack()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(autouse=True)
def _no_crashes(caplog: pytest.LogCaptureFixture) -> Any:
    """Neither aiohttp ("Error handling request") nor a call session ("crashed") logs an error."""
    caplog.set_level(logging.ERROR)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [(r.name, r.getMessage()) for r in errors]


def stream_url(stack: Stack) -> str:
    return "ws" + stack.base[len("http") :] + STREAM_PATH


def signed(stack: Stack) -> dict[str, str]:
    return {"X-Twilio-Signature": twilio_signature(stack, stream_url(stack), {})}


def start_msg(job: Job, token: str | None, call_sid: str | None = None) -> str:
    params = {"job": job.id} | ({"token": token} if token is not None else {})
    return json.dumps(
        {"event": "start", "sequenceNumber": "1", "streamSid": "MZ" + "1" * 32,
         "start": {"accountSid": "AC" + "0" * 32, "streamSid": "MZ" + "1" * 32,
                   "callSid": call_sid or job.call_sid, "tracks": ["inbound"], "customParameters": params,
                   "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}
    )  # fmt: skip


async def closed_by_server(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read until the server closes; its close code."""
    async for _msg in ws:
        pass
    return ws.close_code


@FUZZ
@given(signature=st.none() | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40))
async def test_unsigned_upgrade_is_refused(stack: Stack, signature: str | None) -> None:
    headers = {} if signature is None else {"X-Twilio-Signature": signature}
    before = await snapshot(stack)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await stack.http.ws_connect(stream_url(stack), headers=headers)
    assert refused.value.status == 403
    assert await snapshot(stack) == before


@FUZZ
@given(frames=st.lists(frame, max_size=6))
async def test_signed_upgrade_with_junk_frames_is_closed_and_changes_nothing(
    stack: Stack, frames: list[str | bytes]
) -> None:
    job = await dialing_job(stack)
    await stack.app.store.update_meta(job.id, stream_token_sha256=token_sha256("the-real-token"))
    before = await snapshot(stack)
    async with stack.http.ws_connect(stream_url(stack), headers=signed(stack)) as ws:
        try:
            for f in frames:
                await (ws.send_bytes(f) if isinstance(f, bytes) else ws.send_str(f))
            await ws.send_str(json.dumps({"event": "stop"}))
        except ConnectionResetError:
            pass  # the server already closed on an earlier frame
        assert await closed_by_server(ws) == POLICY_VIOLATION
    assert await snapshot(stack) == before
    await stack.app.store.cancel(job.id)  # keep later snapshots small


@pytest.mark.parametrize("token", [None, "", "wrong", "the-real-token "])
async def test_wrong_token_or_other_call_is_refused_and_the_token_survives(
    stack: Stack, token: str | None
) -> None:
    job = await dialing_job(stack)
    real = secrets.token_urlsafe(16)
    await stack.app.store.update_meta(job.id, stream_token_sha256=token_sha256(real))
    before = await snapshot(stack)
    for msg in (start_msg(job, token), start_msg(job, real, call_sid="CA" + "9" * 32)):
        async with stack.http.ws_connect(stream_url(stack), headers=signed(stack)) as ws:
            await ws.send_str(msg)
            assert await closed_by_server(ws) == POLICY_VIOLATION
    assert await snapshot(stack) == before
    assert (await stack.app.store.get(job.id)).meta.stream_token_sha256 == token_sha256(real)
    await stack.app.store.cancel(job.id)


JUNK_AFTER_ADMISSION: list[str | bytes] = [
    b"\x00\x01binary",
    "not json",
    "[" * 100_000,
    json.dumps([1, 2, 3]),
    '{"event":"media","media":{"payload":"AAAA","timestamp":Infinity,"chunk":"1"}}',
    '{"event":"media","media":{"payload":"AAAA","timestamp":NaN}}',
    '{"event":"media","media":{"payload":"AAAA","chunk":"' + "9" * 5000 + '"}}',
    '{"event":"media","media":{"payload":"%%%not base64%%%"}}',
    '{"event":"media","media":{"payload":12}}',
    '{"event":"media","media":"AAAA"}',
    '{"event":"media","media":{"payload":"' + "/w==" * 25_000 + '"}}',
    '{"event":"mark","mark":{"name":"never-sent"}}',
    '{"event":"mark","mark":null}',
    '{"event":"dtmf","dtmf":{"digit":{"x":1}}}',
    '{"event":"start","start":{"callSid":"CA-other"}}',
    '{"event":"unknown"}',
]


async def test_junk_after_admission_does_not_crash_the_call(stack: Stack) -> None:
    job = await dialing_job(stack)
    token = secrets.token_urlsafe(16)
    await stack.app.store.update_meta(job.id, stream_token_sha256=token_sha256(token))
    async with stack.http.ws_connect(stream_url(stack), headers=signed(stack), max_msg_size=0) as ws:
        await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send_str(start_msg(job, token))
        for junk in JUNK_AFTER_ADMISSION:
            await (ws.send_bytes(junk) if isinstance(junk, bytes) else ws.send_str(junk))
        await ws.send_str(json.dumps({"event": "stop", "stop": {"callSid": job.call_sid}}))
        await closed_by_server(ws)

    async def settled() -> bool:
        return (await stack.app.store.get(job.id)).outcome is not None

    await wait_until(settled, 20, "the call's outcome")
    outcome = (await stack.app.store.get(job.id)).outcome
    assert outcome is not None
    # the callee hung up before anything was agreed: an ordinary unfinished call, not a crash
    assert outcome.kind is OutcomeKind.ERROR and "call failed" not in outcome.summary, outcome
    assert (await stack.app.store.get(job.id)).meta.stream_token_sha256 is None  # consumed
