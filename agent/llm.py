"""Building the Anthropic client and deciding when a failed model call is worth retrying.

The SDK can retry by itself, but inside a live phone call we want to control
the waiting: say "one moment, please" to the callee while backing off, and give
up (politely) after a bounded time. So the client is built with
``max_retries=0`` by default and ``RetryPolicy`` below decides. anthropic 2.x
runs on ``httpx2``; a custom ``http_client`` must be an ``httpx2.AsyncClient``.
"""

from __future__ import annotations

from dataclasses import dataclass

import anthropic
import httpx2

from storage.errors import (
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeoutError,
)

PROVIDER = "anthropic"


#: Seconds without a byte from the model before a request counts as failed (then retried like a
#: 529). The SDK's default is ten minutes — far past the moment a caller on the line hangs up.
#: The API sends ``ping`` events while a long answer is being prepared, so silence means trouble.
READ_TIMEOUT = 15.0
CONNECT_TIMEOUT = 5.0


def build_anthropic(
    api_key: str, base_url: str, max_retries: int = 0, *, read_timeout: float = READ_TIMEOUT
) -> anthropic.AsyncAnthropic:
    """An ``AsyncAnthropic`` pointed at ``base_url`` (the real API or ``sandbox.anthropic``).

    Construct it inside the running event loop: the SDK's connection pool is bound to it, and
    ``await client.close()`` it when done (it owns an aiohttp session).
    ``read_timeout`` bounds each wait for the next bytes of an answer (a stalled stream).
    """
    timeout = httpx2.Timeout(read_timeout, connect=min(CONNECT_TIMEOUT, read_timeout))
    # The SDK's aiohttp transport (``anthropic.DefaultAioHttpClient``) instead of httpx's own: a
    # model round is on the path from the callee's last word to our first audio, and aiohttp's
    # C parser and callback-driven reads cost 1.4 ms of CPU per streamed round here against
    # 2.0 ms (bench/README.md). Per-request timeouts still apply (connect / read).
    return anthropic.AsyncAnthropic(
        api_key=api_key,
        base_url=base_url.rstrip("/"),
        max_retries=max_retries,
        timeout=timeout,
        http_client=anthropic.DefaultAioHttpClient(timeout=timeout),
    )


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed model call may succeed if repeated.

    Rate limits (429), overload (529) and other 5xx, dropped connections and
    timeouts are transient; a bad request or a wrong key never heals by itself.
    """
    if isinstance(exc, anthropic.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, anthropic.APIStatusError):
        # An ``event: error`` in the middle of a stream arrives as an APIStatusError carrying
        # the 200 of the stream itself; only the body's error type tells what happened.
        if _error_type(exc.body) in _TRANSIENT_TYPES:
            return True
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500
    return False


_TRANSIENT_TYPES = frozenset({"overloaded_error", "rate_limit_error", "api_error", "timeout_error"})


def _error_type(body: object) -> str | None:
    err = body.get("error") if isinstance(body, dict) else None
    kind = err.get("type") if isinstance(err, dict) else None
    return kind if isinstance(kind, str) else None


def from_transport_error(exc: httpx2.TransportError) -> anthropic.APIConnectionError:
    """The SDK's error for a transport failure *while reading a stream*.

    The SDK maps transport errors of the request itself, but a read timeout or a
    dropped connection in the middle of an SSE answer escapes as a raw
    ``httpx2`` exception; turning it into ``APITimeoutError`` /
    ``APIConnectionError`` lets the retry policy treat it like any other outage.
    """
    try:
        request = exc.request
    except RuntimeError:  # raised outside a request (never in practice): a placeholder
        request = httpx2.Request("POST", "https://api.anthropic.com/v1/messages")
    if isinstance(exc, httpx2.TimeoutException):
        return anthropic.APITimeoutError(request=request)
    return anthropic.APIConnectionError(message=f"Connection lost mid-answer: {exc!r}", request=request)


def to_provider_error(exc: BaseException) -> ProviderError:
    """Translate an SDK exception into our error tree (callers ``raise … from exc``)."""
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderTimeoutError(str(exc), provider=PROVIDER)
    if isinstance(exc, anthropic.APIConnectionError):
        return ProviderConnectionError(str(exc), provider=PROVIDER)
    if isinstance(exc, anthropic.APIStatusError):
        return ProviderStatusError(str(exc), provider=PROVIDER, status=exc.status_code)
    return ProviderError(str(exc), provider=PROVIDER, retryable=is_retryable(exc))


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off for retryable model errors.

    Attributes:
        max_attempts: total tries including the first.
        base_delay: wait before the second try, in seconds; doubled each time.
        max_delay: cap on one wait (a caller on the line will not wait long).
    """

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 4.0

    def delay(self, attempt: int, exc: BaseException | None = None) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based).

        A ``retry-after`` header on the error is honoured when it is shorter than the cap.
        """
        wait = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        if isinstance(exc, anthropic.APIStatusError):
            header = exc.response.headers.get("retry-after")
            try:
                if header is not None:
                    wait = min(self.max_delay, max(0.0, float(header)))
            except ValueError:
                pass
        return wait

    def should_retry(self, attempt: int, exc: BaseException) -> bool:
        """Whether to try again after failed try number ``attempt``."""
        return attempt < self.max_attempts and is_retryable(exc)
