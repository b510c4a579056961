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
    """A job state change that the state machine in DESIGN.md forbids."""


class LeaseLost(ConciergeError):
    """The caller no longer holds the lease on a job it tried to change."""


class IntakeError(ConciergeError):
    """A chat request that cannot become an errand; ``str(e)`` is a user-facing reply."""


class ProviderError(ConciergeError):
    """An outside service failed.

    Attributes:
        provider: short service name ("twilio", "deepgram", "anthropic", "graph", ...).
        retryable: whether trying again later can reasonably succeed.
    """

    def __init__(self, message: str, *, provider: str, retryable: bool) -> None:
        super().__init__(message)
        self.provider = provider
        self.retryable = retryable


class ProviderStatusError(ProviderError):
    """The service answered with an error status."""

    def __init__(self, message: str, *, provider: str, status: int) -> None:
        super().__init__(message, provider=provider, retryable=is_retryable_status(status))
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
