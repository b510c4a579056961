"""One retry/back-off helper for every outside service.

Each provider module maps its SDK's exceptions onto ``storage.errors`` (one mapper per provider,
``raise … from e``); from there on a retry is decided here, on :class:`ProviderError` alone:
only ``retryable`` errors are tried again, a ``retry_after`` the service sent is honoured (up to a
cap), and otherwise the wait doubles from try to try, with optional jitter. Sleep, clock and
randomness are injected so tests never wait on the wall clock.

Two ways in, on one policy (:class:`Backoff`):

- :func:`retry` runs an awaitable-returning function until it succeeds or the policy gives up,
  calling ``on_wait(attempt, delay, error)`` before each wait (the "one moment" hook).
- :class:`Attempts` is the same bookkeeping taken one failure at a time, for loops that cannot hand
  their work over as one call: a streaming model reply that says its filler *between* tries (an
  async generator cannot yield from inside a callback), or a socket that reconnects for a whole
  call and starts counting afresh once a socket was up.

A small module rather than tenacity: those two loops do not fit a wrapped call, tenacity's time
bound reads ``time.monotonic`` itself (not an injected clock), and Retry-After would have needed a
custom wait strategy anyway, so a dependency would have saved only the short loop in :func:`retry`.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from storage.errors import ProviderError

T = TypeVar("T")

#: Called before each wait with (failed tries so far, seconds about to be waited, the error).
#: May return an awaitable (it is awaited before the wait starts).
OnWait = Callable[[int, float, ProviderError], Any]


def parse_retry_after(value: object, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value, or None when there is none or it cannot be read.

    Args:
        value: delta-seconds (``"120"``, ``2.5``), an HTTP-date (``"Wed, 21 Oct 2026 07:28:00 GMT"``),
            a ``timedelta`` (python-telegram-bot's ``RetryAfter.retry_after``), or None.
        now: the present, for an HTTP-date (defaults to the wall clock; tests pass a fixed one).

    Returns:
        Non-negative seconds (a date in the past is 0); the cap is the policy's business
        (:attr:`Backoff.max_retry_after`), not the parser's.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, timedelta):
        return max(0.0, value.total_seconds())
    if isinstance(value, int | float):
        return max(0.0, float(value))
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def retry_after_header(headers: Mapping[str, Any] | None, *, now: datetime | None = None) -> float | None:
    """The parsed ``Retry-After`` of a header mapping, whatever its capitalisation."""
    if not headers:
        return None
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == "retry-after":
            return parse_retry_after(value, now=now)
    return None


@dataclass(frozen=True)
class Backoff:
    """How one operation is retried.

    Attributes:
        max_attempts: tries in all, the first included.
        base_delay: wait before the second try when the service named none; doubled per try.
        max_delay: cap on one computed wait (before jitter).
        jitter: each computed wait grows by up to this fraction at random (0.25: ×[1, 1.25)), so
            clients that failed together do not come back together.
        max_retry_after: longest Retry-After honoured.
        clamp_retry_after: a longer Retry-After is waited only up to ``max_retry_after`` (True), or
            ends the retries at once so the caller can come back later (False).
        max_elapsed: no wait may end later than this many seconds after the first try (None: no
            bound beyond ``max_attempts``).
    """

    max_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    jitter: float = 0.0
    max_retry_after: float = 30.0
    clamp_retry_after: bool = True
    max_elapsed: float | None = None

    def delay(
        self,
        attempt: int,
        error: BaseException,
        *,
        elapsed: float = 0.0,
        rng: Callable[[], float] = random.random,
    ) -> float | None:
        """Seconds to wait after failed try number ``attempt`` (1-based), or None to give up.

        Gives up on anything but a retryable :class:`ProviderError`, after ``max_attempts`` tries,
        on a Retry-After beyond the cap when not clamping, and when the wait would end past
        ``max_elapsed``.
        """
        if not (isinstance(error, ProviderError) and error.retryable) or attempt >= self.max_attempts:
            return None
        if error.retry_after is not None:
            wait = error.retry_after
            if wait > self.max_retry_after:
                if not self.clamp_retry_after:
                    return None
                wait = self.max_retry_after
        else:
            wait = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
            wait *= 1 + self.jitter * rng()
        if self.max_elapsed is not None and elapsed + wait > self.max_elapsed:
            return None
        return wait


class Attempts:
    """The tries of one operation under a :class:`Backoff`, one failure at a time.

    Args:
        backoff: the policy.
        clock: monotonic seconds, for ``max_elapsed``.
        rng: uniform [0, 1), for jitter.
    """

    def __init__(
        self,
        backoff: Backoff,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.backoff = backoff
        self._clock = clock
        self._rng = rng
        self.attempt = 0  # failed tries so far
        self._start = clock()

    def failed(self, error: BaseException) -> float | None:
        """Count a failed try; the seconds to wait before the next one, or None to give up."""
        self.attempt += 1
        elapsed = self._clock() - self._start
        return self.backoff.delay(self.attempt, error, elapsed=elapsed, rng=self._rng)

    def reset(self) -> None:
        """Start counting afresh (e.g. a socket that was up for a while before it dropped)."""
        self.attempt = 0
        self._start = self._clock()


async def retry(
    fn: Callable[[], Awaitable[T]],
    backoff: Backoff,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: Callable[[], float] = random.random,
    on_wait: OnWait | None = None,
) -> T:
    """Await ``fn()`` until it succeeds or ``backoff`` gives up.

    Args:
        fn: one try; it raises :class:`ProviderError` (its provider's mapper, ``raise … from e``)
            for a failure worth judging. Any other exception passes through at once.
        backoff: the policy.
        sleep: the wait (tests pass one that only records).
        clock: monotonic seconds, for ``backoff.max_elapsed``.
        rng: uniform [0, 1), for jitter.
        on_wait: the "one moment" hook, called (and awaited if it returns an awaitable) before
            each wait with (failed tries so far, seconds, the error).

    Returns:
        What ``fn()`` returned.

    Raises:
        ProviderError: the last failure, once it is permanent or the policy gives up.
    """
    tries = Attempts(backoff, clock=clock, rng=rng)
    while True:
        try:
            return await fn()
        except ProviderError as e:
            wait = tries.failed(e)
            if wait is None:
                raise
            if on_wait is not None:
                told = on_wait(tries.attempt, wait, e)
                if inspect.isawaitable(told):
                    await told
            await sleep(wait)
