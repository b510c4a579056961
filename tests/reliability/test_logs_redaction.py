"""Logs never contain a credential or a full phone number, at any level, from any library.

A whole errand (the demo's "clash" scenario: chat, queue, call, calendar,
result) plus a handful of refused and forged requests run with every logger
at DEBUG (httpx, httpcore, python-telegram-bot, the Twilio SDK, aiohttp,
aiosqlite, the sandbox). Every captured record — message, arguments and
formatted traceback — is then searched for every credential value and for
every phone number involved, written as E.164, digits only, nationally and
URL-encoded.
"""

from __future__ import annotations

import base64
import logging
import urllib.parse

import pytest
from reliability_support import TWILIO_SDK_WARNINGS, open_stack, twilio_signature

from demo.runner import PHONE, run_scenario
from demo.world import DEMO_SLACK_USER, DEMO_TELEGRAM_USER
from storage.redact import REDACTED, Redactor, mask_phone, mask_phones

pytestmark = [pytest.mark.slow, *(pytest.mark.filterwarnings(w) for w in TWILIO_SDK_WARNINGS)]

BLOCKED = "+14155550177"
STRANGER = 999_001


def phone_forms(e164: str) -> list[str]:
    digits = e164.lstrip("+")
    return [e164, digits, digits[1:], urllib.parse.quote(e164), f"{digits[1:4]}-{digits[4:7]}-{digits[7:]}"]


async def test_a_whole_errand_and_refusals_log_no_secret_and_no_phone_number(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    stack = await open_stack(pace=4.0, silence_timeout_seconds=6.0, blocked_numbers=[BLOCKED])
    world, app = stack.world, stack.app
    try:
        run = await run_scenario(world, app, stack.clock, "clash", timeout=90)
        assert run.ok, run.problems
        tg = world.telegram
        # refused: a stranger, an emergency number, a blocked number, a malformed one
        for user, text in [
            (STRANGER, "/call +1 415 555 0100 Joe's | haircut | next week"),
            (DEMO_TELEGRAM_USER, "/call 911 Police | help | today"),
            (DEMO_TELEGRAM_USER, f"/call {BLOCKED} Blocked Shop | haircut | next week"),
            (DEMO_TELEGRAM_USER, "/call +1 415 555 01 Short | haircut | next week"),
        ]:
            since = len(tg.sent)
            tg.user_message(user, user, text)
            await tg.wait_for(lambda s: s.method == "sendMessage", 10, since=since)
        slack = world.slack
        answer = await slack.slash_command(
            stack.url("/slack/events"), text=f"{PHONE} Joe's | haircut | next week", user_id="U0STRANGER",
            channel_id="C1", team_id="T0OTHER",
        )  # fmt: skip
        assert answer.status == 200
        answer = await slack.slash_command(
            stack.url("/slack/events"), text=f"{BLOCKED} Blocked | haircut | next week",
            user_id=DEMO_SLACK_USER, channel_id="C1",
        )  # fmt: skip
        assert answer.status == 200
        await slack.wait_for(lambda p: "block" in p.text.lower() and p.thread_ts is not None, 10)
        # forged webhooks carrying numbers
        params = {"CallSid": "CA" + "1" * 32, "To": PHONE, "From": app.settings.twilio_from_number}
        bad = {"X-Twilio-Signature": twilio_signature(stack, stack.url("/twilio/other"), params)}
        async with stack.http.post(stack.url("/twilio/status"), data=params, headers=bad) as resp:
            assert resp.status == 403
    finally:
        await stack.http.close()
        await app.stop(grace=2)
        # what the sandbox servers log after the product stopped is the outside world's business
        records = list(caplog.records)
        await world.stop()

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts = [formatter.format(r) for r in records]  # message, arguments, traceback, stack
    corpus = "\n".join(texts)
    creds = dict(world.creds)
    basic = base64.b64encode(f"{creds['twilio_account_sid']}:{creds['twilio_auth_token']}".encode()).decode()
    secrets = [v for k, v in creds.items() if k != "twilio_from_number"] + [basic]
    leaked = [s for s in secrets if s in corpus or urllib.parse.quote(s, safe="") in corpus]
    assert not leaked, [
        next(t for t in texts if s in t or urllib.parse.quote(s, safe="") in t) for s in leaked
    ]
    numbers = [PHONE, creds["twilio_from_number"], BLOCKED]
    shown = [f for n in numbers for f in phone_forms(n) if f in corpus]
    assert not shown, [(f, next(t for t in texts if f in t)[:300]) for f in shown]
    # not vacuous: the libraries did log the URLs and numbers that were scrubbed
    assert len(records) > 500
    assert any(REDACTED in t and "/bot" in t for t in texts), "the Telegram bot URLs were logged, scrubbed"
    assert any(mask_phone(PHONE) in t for t in texts), "a number was logged, masked"


def test_mask_phone_keeps_only_what_tells_numbers_apart() -> None:
    assert mask_phone("+14155550100") == "+1••••••0100"
    assert mask_phone("14155550100") == "•••••••0100"
    assert mask_phone("911") == "•11"
    assert mask_phones("call +1 (415) 555-0100 or 415.555.0199 at 2026-11-24 10:00") == (
        "call +1••••••0100 or ••••••0199 at 2026-11-24 10:00"
    )
    assert mask_phones("To=%2B14155550100&x=CA00000000000000000000000000000001") == (
        "To=%2B•••••••0100&x=CA00000000000000000000000000000001"
    )


def test_redactor_scrubs_arguments_and_tracebacks() -> None:
    r = Redactor(["s3cret-token"])
    try:
        raise ValueError("bad token s3cret-token for +14155550100")
    except ValueError as e:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "got %s and %r", ("s3cret-token", 4155550100), None
        )
        record.exc_info = (type(e), e, e.__traceback__)
    assert r.filter(record)
    assert record.getMessage() == f"got {REDACTED} and ••••••0100"
    assert record.exc_text and "s3cret" not in record.exc_text and "4155550100" not in record.exc_text
