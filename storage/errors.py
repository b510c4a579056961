"""One retry-aware error tree for the whole product.

Every layer raises from this tree (``raise … from e``) so callers can decide
on retries by looking at one attribute instead of at six SDKs' exception
classes. 4xx answers are permanent except 408 (timeout) and 429 (rate limit).
"""

from __future__ import annotations


class ConciergeError(Exception):
    """Base of every error Concierge raises on purpose."""


class ConfigError(ConciergeError):
    """Configuration is missing or invalid; the message names the variables."""


class JobNotFound(ConciergeError):
    """No errand has the given id."""


class IllegalTransition(ConciergeError):
    """A job state change that the state machine (``docs/ARCHITECTURE.md``, ``TRANSITIONS``) forbids."""


class LeaseLost(ConciergeError):
    """The caller no longer holds the lease on a job it tried to change."""


class IntakeError(ConciergeError):
    """A chat request that cannot become an errand; ``str(e)`` is a user-facing reply."""


class UserLimitReached(ConciergeError):
    """``JobStore.enqueue_checked`` refused an errand: the person is at a per-user limit.

    Attributes:
        limit: which one: "unfinished" (errands waiting or in progress) or "per_hour" (submissions).
        allowed: the limit's value.
        count: how many the person has now.
    """

    def __init__(self, limit: str, *, allowed: int, count: int) -> None:
        super().__init__(f"per-user limit {limit!r} reached: {count} of {allowed}")
        self.limit = limit
        self.allowed = allowed
        self.count = count


class ProviderError(ConciergeError):
    """An outside service failed.

    Attributes:
        provider: short service name ("twilio", "deepgram", "anthropic", "graph", ...).
        retryable: whether trying again later can reasonably succeed.
        retry_after: seconds the service asked us to wait before trying again (its Retry-After,
            parsed by ``storage.retry.parse_retry_after``), or None; ``storage.retry`` honours it.
    """

    def __init__(
        self, message: str, *, provider: str, retryable: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.retryable = retryable
        self.retry_after = retry_after


class ProviderStatusError(ProviderError):
    """The service answered with an error status.

    ``retryable`` defaults to :func:`is_retryable_status`; a provider mapper overrides it only where
    the service says more than its status does (an error inside a 200 stream, Slack's ``ok: false``).
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            message,
            provider=provider,
            retryable=is_retryable_status(status) if retryable is None else retryable,
            retry_after=retry_after,
        )
        self.status = status


class ProviderConnectionError(ProviderError):
    """The service could not be reached or dropped the connection."""

    def __init__(self, message: str, *, provider: str) -> None:
        super().__init__(message, provider=provider, retryable=True)


class ProviderTimeoutError(ProviderError):
    """The service did not answer in time."""

    def __init__(self, message: str, *, provider: str) -> None:
        super().__init__(message, provider=provider, retryable=True)


def is_retryable_status(status: int) -> bool:
    """5xx, 408 and 429 are worth retrying; every other 4xx is permanent."""
    return status >= 500 or status in (408, 429)


#: What the person (chat) and the callee (via a tool result the model may read out) are told about
#: a failed outside service. Fixed sentences only: provider error text can carry mailbox ids, tenant
#: ids or URLs, so it goes to the redacted log and never into chat or a tool result.
_USER_MESSAGES: dict[str, str] = {
    "twilio": "the phone service had a problem",
    "deepgram": "the speech service had a problem",
    "anthropic": "the assistant's language model had a problem",
    "graph": "the calendar service had a problem",
    "telegram": "the chat service had a problem",
    "slack": "the chat service had a problem",
    "database": "the errand database had a problem",
}


def user_message(error: BaseException) -> str:
    """A short, fixed, user-facing phrase for ``error`` that leaks none of its text.

    Args:
        error: any exception; a :class:`ProviderError` names its provider, anything else is
            "something went wrong".

    Returns:
        A lower-case phrase to embed in a sentence, e.g. "the calendar service had a problem".
    """
    if isinstance(error, ProviderError):
        phrase = _USER_MESSAGES.get(error.provider, "an outside service had a problem")
        if isinstance(error, ProviderTimeoutError):
            return phrase.replace("had a problem", "did not answer in time")
        return phrase
    return "something went wrong on my side"
