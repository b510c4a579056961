"""Building the Anthropic client and deciding when a failed model call is worth retrying.

The SDK can retry by itself, but inside a live phone call we want to control
the waiting: say "one moment, please" to the callee while backing off, and give
up (politely) after a bounded time. So the client is built with
``max_retries=0`` by default and ``storage.retry`` decides (``MODEL_RETRY``). anthropic 2.x
runs on ``httpx2``; a custom ``http_client`` must be an ``httpx2.AsyncClient``.
"""

from __future__ import annotations

import anthropic
import httpx2

from storage.errors import (
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeoutError,
)
from storage.retry import Backoff, retry_after_header

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
    """The one Anthropic mapper: an SDK exception onto ``storage.errors`` (callers ``raise … from exc``).

    Rate limits (429), overload (529) and other 5xx, 408 and 409 (the SDK's own retry set), dropped
    connections and timeouts are retryable; a bad request or a wrong key never heals by itself. An
    ``event: error`` in the middle of a stream arrives as an ``APIStatusError`` carrying the 200 of
    the stream itself: only the body's error type tells whether it was transient. A ``retry-after``
    header rides along for ``storage.retry``.
    """
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderTimeoutError(str(exc), provider=PROVIDER)
    if isinstance(exc, anthropic.APIConnectionError):
        return ProviderConnectionError(str(exc), provider=PROVIDER)
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        transient = _error_type(exc.body) in _TRANSIENT_TYPES or status in (408, 409, 429) or status >= 500
        return ProviderStatusError(
            str(exc),
            provider=PROVIDER,
            status=status,
            retryable=transient,
            retry_after=retry_after_header(exc.response.headers),
        )
    return ProviderError(str(exc), provider=PROVIDER, retryable=False)


_TRANSIENT_TYPES = frozenset({"overloaded_error", "rate_limit_error", "api_error", "timeout_error"})


def _error_type(body: object) -> str | None:
    err = body.get("error") if isinstance(body, dict) else None
    kind = err.get("type") if isinstance(err, dict) else None
    return kind if isinstance(kind, str) else None


#: Model retries inside a live call: four tries, 0.5 s doubling to at most 4 s, and a Retry-After
#: longer than 4 s is cut to 4 s (a caller on the line will not wait long).
MODEL_RETRY = Backoff(max_attempts=4, base_delay=0.5, max_delay=4.0, max_retry_after=4.0)
