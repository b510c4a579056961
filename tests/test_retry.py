"""``storage.retry``: Retry-After parsing, the back-off policy and the retry runner, on a fake clock.

And the providers' mappers that feed it (one per provider): what each one marks retryable and the
Retry-After it carries, built from the SDKs' own exception classes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anthropic
import httpx2
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_slack_response import AsyncSlackResponse
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TimedOut

from agent.llm import to_provider_error as anthropic_error
from bot.notify import slack_error, telegram_error
from storage.errors import (
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeoutError,
)
from storage.retry import Attempts, Backoff, parse_retry_after, retry, retry_after_header

NOW = datetime(2026, 11, 25, 17, 0, 0, tzinfo=UTC)


class FakeTime:
    """A monotonic clock that only moves when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


class Flaky:
    """Fails with the given errors in turn, then answers ``"ok"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def down(retry_after: float | None = None) -> ProviderError:
    return ProviderStatusError("503", provider="graph", status=503, retry_after=retry_after)


# --- parse_retry_after ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 2.5 ", 2.5),
        (3, 3.0),
        (0.25, 0.25),
        ("-4", 0.0),
        (timedelta(seconds=7), 7.0),
        ("Wed, 25 Nov 2026 17:00:30 GMT", 30.0),  # an HTTP-date: seconds from now
        ("Wed, 25 Nov 2026 16:59:00 GMT", 0.0),  # already past
        ("soon", None),
        ("", None),
        (None, None),
        (True, None),
        ([5], None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(value: object, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_retry_after_header_is_found_whatever_its_case() -> None:
    assert retry_after_header({"content-type": "x", "retry-after": "2"}) == 2.0
    assert retry_after_header({"Retry-After": "Wed, 25 Nov 2026 17:01:00 GMT"}, now=NOW) == 60.0
    assert retry_after_header({"content-type": "x"}) is None
    assert retry_after_header(None) is None


# --- Backoff -------------------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap_and_stops_after_max_attempts() -> None:
    policy = Backoff(max_attempts=6, base_delay=0.5, max_delay=3.0)
    assert [policy.delay(n, down()) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, None]


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999999])
def test_jitter_stays_within_its_fraction(draw: float) -> None:
    policy = Backoff(max_attempts=5, base_delay=1.0, max_delay=4.0, jitter=0.25)
    for attempt, plain in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 4.0)):
        wait = policy.delay(attempt, down(), rng=lambda: draw)
        assert wait is not None and plain <= wait < plain * 1.25
        assert wait == pytest.approx(plain * (1 + 0.25 * draw))


def test_retry_after_replaces_the_back_off_and_is_capped() -> None:
    clamp = Backoff(max_attempts=3, base_delay=0.5, max_retry_after=4.0)
    assert clamp.delay(1, down(retry_after=2.0)) == 2.0
    assert clamp.delay(1, down(retry_after=0.0)) == 0.0  # "now" is an answer too
    assert clamp.delay(1, down(retry_after=60.0)) == 4.0  # waited only up to the cap
    give_up = Backoff(max_attempts=3, max_retry_after=10.0, clamp_retry_after=False)
    assert give_up.delay(1, down(retry_after=10.0)) == 10.0
    assert give_up.delay(1, down(retry_after=600.0)) is None  # too long: the caller comes back later


def test_only_retryable_provider_errors_are_retried() -> None:
    policy = Backoff(max_attempts=5)
    assert policy.delay(1, ProviderStatusError("400", provider="graph", status=400)) is None
    assert policy.delay(1, ProviderStatusError("408", provider="graph", status=408)) == 0.5
    assert policy.delay(1, ProviderStatusError("429", provider="graph", status=429)) == 0.5
    assert policy.delay(1, ProviderTimeoutError("t", provider="twilio")) == 0.5
    assert policy.delay(1, ProviderConnectionError("c", provider="deepgram")) == 0.5
    assert policy.delay(1, ValueError("not a provider failure")) is None


def test_max_elapsed_bounds_the_total_time() -> None:
    policy = Backoff(max_attempts=10, base_delay=1.0, max_delay=8.0, max_elapsed=5.0)
    assert policy.delay(1, down(), elapsed=0.0) == 1.0
    assert policy.delay(3, down(), elapsed=1.0) == 4.0  # ends at 5.0: still inside
    assert policy.delay(3, down(), elapsed=1.5) is None  # would end at 5.5


def test_attempts_count_failures_and_start_afresh_on_reset() -> None:
    time = FakeTime()
    tries = Attempts(Backoff(max_attempts=3, base_delay=0.1), clock=time)
    assert [tries.failed(down()), tries.failed(down())] == [0.1, 0.2]
    tries.reset()
    assert [tries.failed(down()), tries.failed(down()), tries.failed(down())] == [0.1, 0.2, None]
    assert tries.attempt == 3


# --- retry ---------------------------------------------------------------------------------------


async def test_retry_waits_back_off_and_retry_after_and_tells_on_wait_first() -> None:
    time = FakeTime()
    heard: list[tuple[int, float, ProviderError, list[float]]] = []
    first, second = down(), down(retry_after=1.5)
    fn = Flaky(first, second)

    def on_wait(attempt: int, delay: float, error: ProviderError) -> None:
        heard.append((attempt, delay, error, list(time.waits)))

    policy = Backoff(max_attempts=3, base_delay=0.25)
    assert await retry(fn, policy, sleep=time.sleep, clock=time, on_wait=on_wait) == "ok"
    assert fn.calls == 3 and time.waits == [0.25, 1.5]
    # the hook hears of each wait before it starts (nothing slept yet when it is told of the first)
    assert heard == [(1, 0.25, first, []), (2, 1.5, second, [0.25])]


async def test_an_async_on_wait_is_awaited_before_the_wait() -> None:
    time = FakeTime()
    said: list[str] = []

    async def one_moment(attempt: int, delay: float, error: ProviderError) -> None:
        said.append(f"one moment ({len(time.waits)} waits so far)")

    await retry(Flaky(down()), Backoff(), sleep=time.sleep, clock=time, on_wait=one_moment)
    assert said == ["one moment (0 waits so far)"] and time.waits == [0.5]


async def test_a_permanent_error_passes_through_at_once() -> None:
    time = FakeTime()
    denied = ProviderStatusError("401", provider="graph", status=401)
    fn = Flaky(denied)
    told: list[int] = []
    with pytest.raises(ProviderStatusError) as err:
        await retry(fn, Backoff(), sleep=time.sleep, clock=time, on_wait=lambda n, d, e: told.append(n))
    assert err.value is denied and fn.calls == 1 and time.waits == [] and told == []


async def test_an_error_outside_the_tree_passes_through_at_once() -> None:
    time = FakeTime()
    fn = Flaky(KeyError("bug"))
    with pytest.raises(KeyError):
        await retry(fn, Backoff(), sleep=time.sleep, clock=time)
    assert fn.calls == 1 and time.waits == []


async def test_giving_up_raises_the_last_error_with_its_cause() -> None:
    time = FakeTime()
    errors = []
    for n in range(3):
        err = down()
        err.__cause__ = OSError(f"reset {n}")
        errors.append(err)
    fn = Flaky(*errors)
    with pytest.raises(ProviderError) as raised:
        await retry(fn, Backoff(max_attempts=3, base_delay=1.0), sleep=time.sleep, clock=time)
    assert raised.value is errors[-1] and str(raised.value.__cause__) == "reset 2"
    assert fn.calls == 3 and time.waits == [1.0, 2.0]


async def test_the_total_time_bound_reads_the_injected_clock() -> None:
    time = FakeTime()
    fn = Flaky(*[down() for _ in range(10)])
    policy = Backoff(max_attempts=10, base_delay=1.0, max_delay=8.0, max_elapsed=10.0)
    with pytest.raises(ProviderError):
        await retry(fn, policy, sleep=time.sleep, clock=time)
    assert time.waits == [1.0, 2.0, 4.0]  # the next (8 s) would end at 15 s
    assert fn.calls == 4


async def test_jitter_draws_from_the_injected_rng() -> None:
    time = FakeTime()
    policy = Backoff(max_attempts=3, base_delay=1.0, jitter=0.5)
    await retry(Flaky(down(), down()), policy, sleep=time.sleep, clock=time, rng=lambda: 0.5)
    assert time.waits == [1.25, 2.5]


# --- the providers' mappers ------------------------------------------------------------------------


def _anthropic_status(
    status: int, body: Any, headers: dict[str, str] | None = None
) -> anthropic.APIStatusError:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    response = httpx2.Response(status, headers=headers or {}, json=body, request=request)
    return anthropic.APIStatusError("failed", response=response, body=body)


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (529, "overloaded_error", True),
        (429, "rate_limit_error", True),
        (409, "conflict", True),  # the SDK's own retry set, kept
        (200, "overloaded_error", True),  # an ``event: error`` inside the stream's 200
        (200, "invalid_request_error", False),
        (400, "invalid_request_error", False),
        (401, "authentication_error", False),
    ],
)
def test_anthropic_mapper(status: int, kind: str, retryable: bool) -> None:
    err = anthropic_error(_anthropic_status(status, {"type": "error", "error": {"type": kind}}))
    assert isinstance(err, ProviderStatusError) and err.status == status and err.retryable is retryable
    assert err.provider == "anthropic" and err.retry_after is None


def test_anthropic_mapper_carries_retry_after_and_transport_failures() -> None:
    limited = anthropic_error(_anthropic_status(429, {}, {"retry-after": "3"}))
    assert limited.retry_after == 3.0 and limited.retryable
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    assert isinstance(anthropic_error(anthropic.APITimeoutError(request=request)), ProviderTimeoutError)
    lost = anthropic_error(anthropic.APIConnectionError(message="lost", request=request))
    assert isinstance(lost, ProviderConnectionError) and lost.retryable


# python-telegram-bot's own RetryAfter constructor warns about its future timedelta type.
@pytest.mark.filterwarnings("ignore:.*will be of type:telegram.warnings.PTBDeprecationWarning")
def test_telegram_mapper() -> None:
    flood = telegram_error(RetryAfter(timedelta(seconds=12)))
    assert isinstance(flood, ProviderStatusError) and flood.status == 429
    assert flood.retryable and flood.retry_after == 12.0
    assert not telegram_error(BadRequest("chat not found")).retryable
    assert not telegram_error(Forbidden("bot was blocked")).retryable
    assert isinstance(telegram_error(TimedOut()), ProviderTimeoutError)
    assert telegram_error(NetworkError("Internal")).retryable


def _slack_api_error(status: int, data: dict[str, Any], headers: dict[str, str]) -> SlackApiError:
    response = AsyncSlackResponse(
        client=None,  # type: ignore[arg-type]
        http_verb="POST",
        api_url="http://127.0.0.1/api/chat.postMessage",
        req_args={},
        data=data,
        headers=headers,
        status_code=status,
    )
    return SlackApiError("failed", response)


def test_slack_mapper() -> None:
    limited = slack_error(_slack_api_error(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "7"}))
    assert isinstance(limited, ProviderStatusError) and limited.retryable and limited.retry_after == 7.0
    unnamed = slack_error(_slack_api_error(429, {"ok": False, "error": "ratelimited"}, {}))
    assert unnamed.retry_after == 1.0  # Slack always names one; 1 s if it did not
    assert slack_error(_slack_api_error(200, {"ok": False, "error": "internal_error"}, {})).retryable
    assert not slack_error(_slack_api_error(200, {"ok": False, "error": "channel_not_found"}, {})).retryable
    assert slack_error(_slack_api_error(503, {"ok": False}, {})).retryable
    assert isinstance(slack_error(TimeoutError()), ProviderTimeoutError)
    assert isinstance(slack_error(OSError("reset")), ProviderConnectionError)
