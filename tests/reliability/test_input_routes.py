"""Bad input on every public HTTP route: never a 5xx, never a change without a valid signature.

One whole ``Concierge`` (Telegram in webhook mode, so ``/telegram/webhook`` is
served) runs for the module. Hypothesis sends random bodies, headers, content
types and JSON shapes; each unsigned or wrongly signed request must be refused
with a 4xx and leave the job store, the chats and the phone exactly as they were.
Validly signed junk must still never produce a 5xx. The dispatcher is stopped
(``open_quiet_stack``) so the one ``dialing`` job the tests aim at is never
touched by anything but the requests under test.
"""

from __future__ import annotations

import io
import json
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

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
)

from storage.models import Job

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    *(pytest.mark.filterwarnings(w) for w in TWILIO_SDK_WARNINGS),
]

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TWILIO_ROUTES = ["/twilio/status", "/twilio/amd", "/twilio/incoming"]
CONTENT_TYPES = [
    None,
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=latin-1",
    "application/x-www-form-urlencoded; charset=no-such-charset",
    "application/json",
    "application/json; charset=utf-16",
    "multipart/form-data; boundary=xyz",
    "multipart/form-data",
    "text/plain",
    "text/xml",
    "application/octet-stream",
    "",
    "a/b;;==;charset",
]
HEADER_NAMES = [
    "X-Twilio-Signature",
    "X-Slack-Signature",
    "X-Slack-Request-Timestamp",
    "X-Telegram-Bot-Api-Secret-Token",
    "Content-Encoding",
    "X-Slack-Retry-Num",
]
header_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
headers_st = st.dictionaries(st.sampled_from(HEADER_NAMES), header_value, max_size=4)
json_st = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
form_st = st.dictionaries(st.text(max_size=15), st.text(max_size=40), max_size=6)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack() -> AsyncIterator[Stack]:
    s = await open_quiet_stack(telegram_mode="webhook")
    try:
        yield s
    finally:
        await s.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def job(stack: Stack) -> Job:
    return await dialing_job(stack)


@pytest.fixture(autouse=True)
def _no_server_errors(caplog: pytest.LogCaptureFixture) -> Any:
    """aiohttp logs every exception a handler lets escape ("Error handling request"): none may."""
    caplog.set_level(logging.ERROR, logger="aiohttp")
    caplog.set_level(logging.ERROR, logger="slack_bolt")
    yield
    errors = [
        r
        for r in caplog.records
        if r.name.startswith(("aiohttp", "slack_bolt")) and r.levelno >= logging.ERROR
    ]
    assert not errors, [r.getMessage() for r in errors]


async def post(stack: Stack, path: str, body: bytes, headers: dict[str, str]) -> int:
    async with stack.http.post(stack.url(path), data=body, headers=headers) as resp:
        await resp.read()
        return resp.status


def with_type(headers: dict[str, str], content_type: str | None) -> dict[str, str]:
    return headers if content_type is None else {**headers, "Content-Type": content_type}


# --- Twilio --------------------------------------------------------------------------------------


@FUZZ
@given(
    route=st.sampled_from(TWILIO_ROUTES),
    body=st.binary(max_size=3000) | form_st.map(lambda f: urllib.parse.urlencode(f).encode()),
    headers=headers_st,
    content_type=st.sampled_from(CONTENT_TYPES),
    query=st.sampled_from(["", "?job=", "?job=nope", "?job=%00", "?job=x&job=y"]),
)
async def test_twilio_routes_refuse_unsigned_junk(
    stack: Stack, job: Job, route: str, body: bytes, headers: dict[str, str], content_type: str | None,
    query: str,
) -> None:  # fmt: skip
    before = await snapshot(stack)
    status = await post(stack, route + query, body, with_type(headers, content_type))
    assert status in (400, 403, 413), status
    assert await snapshot(stack) == before


@FUZZ
@given(route=st.sampled_from(TWILIO_ROUTES), params=form_st, sid=st.sampled_from(["job", "other", "none"]))
async def test_twilio_replayed_signature_with_other_params_is_refused(
    stack: Stack, job: Job, route: str, params: dict[str, str], sid: str
) -> None:
    """A genuine signature for one set of parameters, sent with different ones (the job's own
    call sid and an ``answered``/``completed`` status an attacker would like to inject)."""
    url = stack.url(f"{route}?job={job.id}")
    signed = {"CallSid": job.call_sid or "", "CallStatus": "ringing", "AccountSid": "AC" + "0" * 32}
    signature = twilio_signature(stack, url, signed)
    forged = {**params, "CallStatus": "in-progress", "AnsweredBy": "machine_start"}
    if sid != "none":
        forged["CallSid"] = (job.call_sid or "") if sid == "job" else "CA" + "f" * 32
    before = await snapshot(stack)
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"}
    status = await post(stack, f"{route}?job={job.id}", urllib.parse.urlencode(forged).encode(), headers)
    assert status == 403
    assert await snapshot(stack) == before


@pytest.mark.parametrize("route", TWILIO_ROUTES)
async def test_twilio_signature_for_another_route_or_job_is_refused(
    stack: Stack, job: Job, route: str
) -> None:
    params = {"CallSid": job.call_sid or "", "CallStatus": "completed"}
    before = await snapshot(stack)
    for signed_url in (stack.url(f"/twilio/other?job={job.id}"), stack.url(f"{route}?job=another")):
        headers = {"X-Twilio-Signature": twilio_signature(stack, signed_url, params)}
        async with stack.http.post(stack.url(f"{route}?job={job.id}"), data=params, headers=headers) as resp:
            assert resp.status == 403
    assert await snapshot(stack) == before


@FUZZ
@given(
    route=st.sampled_from(TWILIO_ROUTES), params=form_st, query=st.sampled_from(["", "?job=nope", "?job=%FF"])
)
async def test_twilio_signed_junk_is_never_a_server_error(
    stack: Stack, job: Job, route: str, params: dict[str, str], query: str
) -> None:
    """Twilio itself could send odd values; signed junk for unknown calls is answered calmly."""
    url = stack.url(route + query)
    params = {k: v for k, v in params.items() if k != "CallSid"} | {"CallSid": "CA" + "e" * 32}
    headers = {"X-Twilio-Signature": twilio_signature(stack, url, params)}
    before = await snapshot(stack)
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    async with stack.http.post(url, data=urllib.parse.urlencode(params).encode(), headers=headers) as resp:
        assert resp.status < 500
    assert await snapshot(stack) == before


@pytest.mark.parametrize("route", TWILIO_ROUTES)
@pytest.mark.parametrize("chunked", [False, True])
async def test_twilio_body_size_limit_is_413(stack: Stack, job: Job, route: str, chunked: bool) -> None:
    big = b"CallSid=" + b"A" * (70 * 1024)

    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    before = await snapshot(stack)
    data: Any = gen() if chunked else io.BytesIO(big)
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"}
    async with stack.http.post(stack.url(route), data=data, headers=headers) as resp:
        assert resp.status == 413
    assert await snapshot(stack) == before


# --- Slack ---------------------------------------------------------------------------------------


def slash_body(text: str, user: str = "U0DEMO", team: str = "T0DEMO") -> str:
    return urllib.parse.urlencode(
        {"team_id": team, "channel_id": "C1", "user_id": user, "command": "/call", "text": text,
         "response_url": "http://127.0.0.1:9/nowhere", "trigger_id": "t"}
    )  # fmt: skip


@FUZZ
@given(
    body=st.binary(max_size=3000) | json_st.map(lambda v: json.dumps(v).encode()),
    headers=headers_st,
    content_type=st.sampled_from(CONTENT_TYPES),
)
async def test_slack_refuses_unsigned_junk(
    stack: Stack, job: Job, body: bytes, headers: dict[str, str], content_type: str | None
) -> None:
    before = await snapshot(stack)
    status = await post(stack, "/slack/events", body, with_type(headers, content_type))
    assert status in (400, 401, 413), status
    assert await snapshot(stack) == before


@pytest.mark.parametrize(
    ("age", "expected"), [(301, 401), (600, 401), (-400, 401), (86_400 * 365, 401), (0, 200)]
)
async def test_slack_signature_outside_five_minutes_is_refused(
    stack: Stack, job: Job, age: int, expected: int
) -> None:
    """A genuine signature over an old (or far-future) timestamp: Slack's replay window is 5 min."""
    body = slash_body("+1 415 555 0100 Joe's | haircut | next week")
    headers = {**stack.world.slack.sign(body, int(time.time()) - age),
               "Content-Type": "application/x-www-form-urlencoded"}  # fmt: skip
    before = await snapshot(stack)
    posted = len(stack.world.slack.posted)
    status = await post(stack, "/slack/events", body.encode(), headers)
    assert status == expected
    if expected != 200:
        assert await snapshot(stack) == before
    else:  # Bolt answers before its listener runs: let the errand's thread reply land in this test
        await stack.world.slack.wait_for(
            lambda p: p.thread_ts is not None and stack.world.slack.posted.index(p) >= posted
        )


@pytest.mark.parametrize("timestamp", ["", "abc", "1e3", "99999999999999999999999", " 12", "-"])
async def test_slack_malformed_timestamp_is_401_not_500(stack: Stack, job: Job, timestamp: str) -> None:
    body = slash_body("+1 415 555 0100 Joe's | haircut | next week")
    signature = stack.world.slack.sign(body)["X-Slack-Signature"]
    headers = {"X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature,
               "Content-Type": "application/x-www-form-urlencoded"}  # fmt: skip
    before = await snapshot(stack)
    assert await post(stack, "/slack/events", body.encode(), headers) == 401
    assert await snapshot(stack) == before


async def test_slack_replayed_signature_with_other_body_is_refused(stack: Stack, job: Job) -> None:
    signed = slash_body("help")
    forged = slash_body("+1 415 555 0100 Joe's | haircut | next week")
    headers = {**stack.world.slack.sign(signed), "Content-Type": "application/x-www-form-urlencoded"}
    before = await snapshot(stack)
    assert await post(stack, "/slack/events", forged.encode(), headers) == 401
    assert await snapshot(stack) == before


@FUZZ
@given(
    body=st.binary(max_size=2000)
    | json_st.map(lambda v: json.dumps(v).encode())
    | st.builds(lambda payload: urllib.parse.urlencode({"payload": json.dumps(payload)}).encode(), json_st),
    content_type=st.sampled_from(CONTENT_TYPES),
)
async def test_slack_signed_junk_is_never_a_server_error(
    stack: Stack, job: Job, body: bytes, content_type: str | None
) -> None:
    """Slack could have a bug too: a correctly signed body of any shape gets a calm answer."""
    headers = with_type(_sign_bytes(stack, body), content_type)
    before = await snapshot(stack)
    status = await post(stack, "/slack/events", body, headers)
    assert status < 500, status
    jobs_before, *_ = before
    jobs_after, *_ = await snapshot(stack)
    assert jobs_after == jobs_before  # junk never queues or changes an errand


def _sign_bytes(stack: Stack, body: bytes) -> dict[str, str]:
    import hashlib
    import hmac

    ts = str(int(time.time()))
    secret = stack.app.settings.slack_signing_secret.encode()
    digest = hmac.new(secret, f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}"}


@pytest.mark.parametrize("chunked", [False, True])
async def test_slack_body_size_limit_is_413(stack: Stack, job: Job, chunked: bool) -> None:
    body = slash_body("x" * (2 << 20))
    headers = {**stack.world.slack.sign(body), "Content-Type": "application/x-www-form-urlencoded"}
    raw = body.encode()

    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 65536):
            yield raw[i : i + 65536]

    before = await snapshot(stack)
    async with stack.http.post(
        stack.url("/slack/events"), data=gen() if chunked else io.BytesIO(raw), headers=headers
    ) as r:
        assert r.status == 413
    assert await snapshot(stack) == before


# --- Telegram ------------------------------------------------------------------------------------


@FUZZ
@given(
    body=st.binary(max_size=3000) | json_st.map(lambda v: json.dumps(v).encode()),
    secret=st.none() | header_value,
    content_type=st.sampled_from(CONTENT_TYPES),
)
async def test_telegram_webhook_refuses_requests_without_the_secret(
    stack: Stack, job: Job, body: bytes, secret: str | None, content_type: str | None
) -> None:
    if secret == stack.app.settings.telegram_webhook_secret:
        secret = secret + "x"
    headers = {} if secret is None else {"X-Telegram-Bot-Api-Secret-Token": secret}
    before = await snapshot(stack)
    assert await post(stack, "/telegram/webhook", body, with_type(headers, content_type)) == 403
    assert await snapshot(stack) == before


@FUZZ
@given(body=st.binary(max_size=2000) | json_st.map(lambda v: json.dumps(v).encode()))
async def test_telegram_webhook_with_secret_and_junk_is_never_a_server_error(
    stack: Stack, job: Job, body: bytes
) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": stack.app.settings.telegram_webhook_secret}
    before = await snapshot(stack)
    status = await post(stack, "/telegram/webhook", body, headers)
    assert status in (200, 400), status
    jobs_before, *_ = before
    jobs_after, *_ = await snapshot(stack)
    assert jobs_after == jobs_before


@pytest.mark.parametrize("chunked", [False, True])
async def test_telegram_body_size_limit_is_413(stack: Stack, job: Job, chunked: bool) -> None:
    update = stack.world.telegram.update_json(4242, 4242, "x" * (2 << 20))
    raw = json.dumps(update).encode()

    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 65536):
            yield raw[i : i + 65536]

    headers = {"X-Telegram-Bot-Api-Secret-Token": stack.app.settings.telegram_webhook_secret}
    before = await snapshot(stack)
    async with stack.http.post(
        stack.url("/telegram/webhook"), data=gen() if chunked else io.BytesIO(raw), headers=headers
    ) as r:
        assert r.status == 413
    assert await snapshot(stack) == before


async def test_routes_still_serve_after_the_fuzzing(stack: Stack, job: Job) -> None:
    """The process is alive and its state intact: health answers and the job is untouched.

    (The dispatcher loop was stopped by the fixture, so the routes alone are under test.)
    """
    async with stack.http.get(stack.url("/healthz")) as resp:
        assert resp.status == 200 and (await resp.json())["ok"] is True
    assert (await stack.app.store.get(job.id)).state == job.state
