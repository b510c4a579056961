"""Bounds for text that came from a person or a callee, before it is stored, shown or spoken.

Callee words (through the phone model's tool arguments) and chat text are untrusted: they can be
arbitrarily long and can carry links. Every place that stores or shows them cuts them to a fixed
length with ``bounded``; places that must never carry a link (the calendar event) also use
``without_links``.
"""

from __future__ import annotations

import re

#: Longest chat message the intake reads.
INTAKE_TEXT = 2000
#: A business name, a service, a person's name.
NAME = 120
#: Free notes (the person's, or a booking's notes from the call).
NOTES = 500
#: A call summary or a question for the person.
SUMMARY = 500
QUESTION = 300

_SPACE = re.compile(r"\s+")
_LINK = re.compile(
    r"(?:\b[a-z][a-z0-9+.-]*://\S+)|(?:\bwww\.\S+)|(?:\b[\w-]+(?:\.[\w-]+)+/\S*)", re.IGNORECASE
)


def bounded(text: str | None, limit: int) -> str:
    """``text`` on one line, whitespace collapsed, cut to ``limit`` characters (an ellipsis marks a cut).

    Args:
        text: untrusted text (``None`` is empty).
        limit: the most characters kept, ellipsis included.
    """
    flat = _SPACE.sub(" ", text or "").strip()
    if len(flat) <= limit:
        return flat
    return flat[: max(0, limit - 1)].rstrip() + "…"


def without_links(text: str) -> str:
    """``text`` with every URL-like token replaced by "[link removed]" (a payment link, a domain/path)."""
    return _LINK.sub("[link removed]", text)
