"""Keep secrets and phone numbers out of logs.

Two tools. ``mask_phone`` is what product log lines call when they mention a
number (``+1•••••0100``: enough to tell calls apart, not enough to dial).
``Redactor`` is a ``logging.Filter`` for *handlers*: it rewrites every record
that reaches them — ours and every library's (httpx and python-telegram-bot
log request URLs that contain the bot token; the Twilio SDK logs the account
URL) — replacing known secret values and anything shaped like a full phone
number, in the message, its arguments and a formatted traceback.

Why a handler filter: a filter on a *logger* only sees records logged to that
exact logger, not those propagated from children, and level settings are
per deployment; a handler sees everything it is about to write, at any level.
``install`` attaches it to the root logger's handlers and to those of every
existing logger, and returns a function that detaches it again.
"""

from __future__ import annotations

import base64
import logging
import re
import urllib.parse
from collections.abc import Callable, Iterable

#: Shorter values are not treated as secrets (masking them would shred ordinary words).
MIN_SECRET_LENGTH = 6
REDACTED = "[redacted]"
_DOT = "•"

# A "+" then 7–15 digits with the separators people write ("+1 (415) 555-0100").
_INTL = re.compile(r"\+\d(?:[\s().-]{0,2}\d){6,14}")
# A bare run of 10–15 digits (E.164 without "+", a national number, "%2B1415…" in a form).
_DIGITS = re.compile(r"(?<!\d)\d{10,15}(?!\d)")
# North-American formatting: "(415) 555-0100", "415-555-0100", "415.555.0100".
_NANP = re.compile(r"(?<!\d)(?:\(\d{3}\)\s?|\d{3}[-.\s])\d{3}[-.\s]\d{4}(?!\d)")


def mask_phone(number: str) -> str:
    """``"+14155550100"`` → ``"+1•••••••0100"``: the country code's first digit and the last four.

    Works on any string; fewer than eight digits are masked but for the last two.
    """
    digits = re.sub(r"\D", "", number or "")
    if not digits:
        return number
    plus = "+" if number.strip().startswith("+") else ""
    if len(digits) < 8:
        return plus + _DOT * (len(digits) - 2) + digits[-2:]
    head = digits[0] if plus else ""
    return plus + head + _DOT * (len(digits) - len(head) - 4) + digits[-4:]


def mask_phones(text: str) -> str:
    """Every full phone number in free text, masked (see ``mask_phone``)."""
    text = _INTL.sub(lambda m: mask_phone(m.group(0)), text)
    text = _NANP.sub(lambda m: mask_phone(m.group(0)), text)
    return _DIGITS.sub(lambda m: mask_phone(m.group(0)), text)


def secret_variants(secrets: Iterable[str], *, basic_auth: Iterable[tuple[str, str]] = ()) -> list[str]:
    """Each secret as it may appear in a log: raw, URL-quoted, and Basic-auth pairs in base64."""
    out: set[str] = set()
    for s in secrets:
        if s and len(s) >= MIN_SECRET_LENGTH:
            out |= {s, urllib.parse.quote(s, safe=""), urllib.parse.quote_plus(s)}
    for user, password in basic_auth:
        if user and password:
            out.add(base64.b64encode(f"{user}:{password}".encode()).decode())
    return sorted(out, key=len, reverse=True)  # longest first: a secret containing another


class Redactor(logging.Filter):
    """Scrubs known secrets and phone numbers from every record a handler is about to emit.

    Args:
        secrets: exact values to replace with ``[redacted]`` (see ``secret_variants``).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        values = [s for s in secrets if s]
        self._secrets = re.compile("|".join(re.escape(s) for s in values)) if values else None

    def scrub(self, text: str) -> str:
        if self._secrets is not None:
            text = self._secrets.sub(REDACTED, text)
        return mask_phones(text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what logging would have printed
            message = f"{record.msg!r} % {record.args!r}"
        record.msg, record.args = self.scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
            # Formatters print exc_text only; keeping exc_info would let a handler
            # with its own formatter re-render the raw traceback (pytest's caplog does not).
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True


def install(redactor: Redactor) -> Callable[[], None]:
    """Attach ``redactor`` to the handlers of the root logger and of every existing logger.

    Handlers added later (another ``logging.basicConfig``, a test's capture handler
    installed after this call) are not covered: call ``install`` after configuring
    logging. Returns a function that detaches it from the same handlers.
    """
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    handlers = {id(h): h for lg in loggers for h in lg.handlers}
    for h in handlers.values():
        h.addFilter(redactor)

    def uninstall() -> None:
        for h in handlers.values():
            h.removeFilter(redactor)

    return uninstall
