"""How an errand is said aloud in the fixed sentences (the opening, a voicemail message).

Shared so the two say the service and the dates the same way, without a model round.
"""

from __future__ import annotations

from storage.models import BookingWindow, CallRequest

#: Words a service may already start with; anything else gets "a"/"an".
_DETERMINERS = frozenset({"a", "an", "the", "my", "our", "some", "two", "three"})


def service_phrase(request: CallRequest) -> str:
    """The service with an article when it needs one: "a haircut", "an eye test", "the usual"."""
    service = request.service.strip().rstrip(".")
    if service.split(" ", 1)[0].lower() not in _DETERMINERS:
        service = f"{'an' if service[:1].lower() in 'aeiou' else 'a'} {service}"
    return service


def days_phrase(window: BookingWindow) -> str:
    """The window's dates only ("on Tuesday, December 1" / "between … and …").

    Times are left out: they are in the person's zone, which need not be the business's.
    """
    if window.start_date == window.end_date:
        return f"on {window.start_date:%A, %B} {window.start_date.day}"
    return (
        f"between {window.start_date:%A, %B} {window.start_date.day}"
        f" and {window.end_date:%A, %B} {window.end_date.day}"
    )
