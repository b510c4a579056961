"""A deterministic stand-in for the intake model's ``record_errand`` tool call.

The sandbox Anthropic server calls ``respond(body)`` when a request offers a
tool named ``record_errand``. It reads the last user message with regular
expressions and answers one ``tool_use`` block, so chat tests exercise the
real Anthropic SDK and wire format with a predictable "model". It knows
nothing of the product: only the Messages API request body.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

_PHONE = re.compile(r"(?<![\w+])(\+?\d[\d ().-]{5,}\d|\b\d{3}\b)(?!\w)")
_WHEN = re.compile(
    r"\b(day after tomorrow|tomorrow|today|tonight|next week|this week|next weekend|this weekend|"
    r"next month|this month|asap|(?:next |this |on )?(?:mon|tues|wednes|thurs|fri|satur|sun)day|"
    r"in \d{1,2} days|within \d{1,2} days|\d{4}-\d{2}-\d{2}|"
    r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]* \d{1,2}(?:st|nd|rd|th)?)\b",
    re.I,
)
_TIMES = re.compile(
    r"\b(mornings?|afternoons?|evenings?|lunchtime|any ?time|"
    r"(?:after|before|from) (?:noon|\d{1,2}(?::\d{2})? ?(?:am|pm)?)|"
    r"between \d{1,2}(?::\d{2})? ?(?:am|pm)? and \d{1,2}(?::\d{2})? ?(?:am|pm)?|"
    r"\d{1,2} ?(?:am|pm)? ?- ?\d{1,2} ?(?:am|pm))\b",
    re.I,
)
_DURATION = re.compile(r"\b(\d{1,3}) ?(min|minutes|mins|hour|hours|h)\b", re.I)
_SERVICE = re.compile(
    r"\b(?:book(?: me)?|get(?: me)?|schedule|reserve|make)\s+(?:a |an |me a |me an )?"
    r"([a-z][a-z -]{1,40}?)\s+(?:at|with|from|for)\b",
    re.I,
)
_BUSINESS = re.compile(r"\b(?:at|call|with)\s+([A-Z][\w'&.-]*(?:\s+[A-Z][\w'&.-]*)*)")
_NOTES = re.compile(r"\b(ask for [^,.;]+|mention [^,.;]+)", re.I)


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user message (string content or text blocks)."""
    for msg in reversed(body.get("messages") or []):
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(
                b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
            )
    return ""


def extract(text: str) -> dict[str, Any]:
    """``record_errand`` fields found in ``text``; absent fields are left out, never guessed."""
    out: dict[str, Any] = {}
    if m := _PHONE.search(text):
        out["phone"] = m.group(1).strip()
    if m := _SERVICE.search(text):
        out["service"] = m.group(1).strip()
    if m := _BUSINESS.search(text):
        out["business_name"] = m.group(1).strip()
    if m := _WHEN.search(text):
        out["when"] = m.group(1)
    if m := _TIMES.search(text):
        out["times_of_day"] = m.group(1)
    if m := _DURATION.search(text):
        n = int(m.group(1))
        out["duration_minutes"] = n * 60 if m.group(2).lower().startswith("h") else n
    if m := _NOTES.search(text):
        out["notes"] = m.group(1).strip()
    return out


def respond(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Content blocks answering a Messages API request that offers ``record_errand``."""
    text = last_user_text(body)
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    return [{"type": "tool_use", "id": f"toolu_{digest}", "name": "record_errand", "input": extract(text)}]
