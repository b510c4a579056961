"""Vetting phone numbers before anything is queued.

This is the last point where a person can be told *why* an errand is refused,
so every rule lives here: E.164 parsing with the person's default region,
emergency numbers (in the person's region and in a few common ones, since a
traveller may type their home country's), short codes, premium rate and the
configured block list. The business's time zone also comes from the number.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneNumberType, shortnumberinfo
from phonenumbers import timezone as phone_tz

from bot import render
from storage.errors import IntakeError
from storage.redact import mask_phone

log = logging.getLogger(__name__)

#: Regions whose emergency numbers are always refused, whatever the person's region.
_EMERGENCY_REGIONS = ("US", "GB", "AU", "NZ", "DE", "FR", "IN", "JP")


@dataclass(frozen=True)
class CheckedPhone:
    """A number that may be called: E.164 and the business's likely time zone."""

    e164: str
    tz: str | None


def check_phone(
    raw: str, region: str, blocked: Iterable[str] = (), *, prefer_tz: str | None = None
) -> CheckedPhone:
    """Parse and vet a phone number for an outbound call.

    The business time zone comes from the number; when the number spans several zones
    (e.g. US toll-free) and ``prefer_tz`` is one of them, that one is taken.

    Raises:
        IntakeError: the number is missing, malformed, an emergency or short number,
            premium rate, or on the block list; the message says which, for the person.
    """
    digits = re.sub(r"[^\d+]", "", raw or "")
    if not digits.strip("+"):
        raise IntakeError("I couldn't find a phone number in that.")
    for r in (region, *_EMERGENCY_REGIONS):
        if shortnumberinfo.is_emergency_number(digits, r) or shortnumberinfo.connects_to_emergency_number(
            digits, r
        ):
            raise IntakeError(render.refuse_emergency(raw))
    try:
        num = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as e:
        raise IntakeError(render.refuse_invalid(raw)) from e
    national = str(num.national_number)
    if len(national) <= 6 or (
        shortnumberinfo.is_valid_short_number(num) and not phonenumbers.is_valid_number(num)
    ):
        raise IntakeError(render.refuse_short(raw))
    if not phonenumbers.is_valid_number(num):
        raise IntakeError(render.refuse_invalid(raw))
    if phonenumbers.number_type(num) == PhoneNumberType.PREMIUM_RATE:
        raise IntakeError(render.refuse_premium(raw))
    e164 = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
    if is_blocked(e164, blocked, region):
        raise IntakeError(render.refuse_blocked(e164))
    zones = [z for z in phone_tz.time_zones_for_number(num) if z != "Etc/Unknown"]
    if prefer_tz in zones:
        return CheckedPhone(e164=e164, tz=prefer_tz)
    return CheckedPhone(e164=e164, tz=zones[0] if zones else None)


def is_blocked(e164: str, blocked: Iterable[str], region: str) -> bool:
    """Whether ``e164`` is on the block list (``BLOCKED_NUMBERS``).

    Entries are numbers in any format ``phonenumbers`` reads (parsed with the
    person's region, compared as E.164) or prefixes ending in ``*``
    (``+1900*``: every number whose E.164 starts with ``+1900``; separators
    are ignored, and a prefix without ``+`` is read as international digits).
    """
    for entry in blocked:
        entry = entry.strip()
        if not entry:
            continue
        if entry.endswith("*"):
            digits = re.sub(r"\D", "", entry[:-1])
            if not digits:
                log.warning("ignoring block-list prefix with no digits %r", entry)
            elif e164.startswith("+" + digits):
                return True
            continue
        try:
            parsed = phonenumbers.parse(entry, region)
        except phonenumbers.NumberParseException:
            log.warning("ignoring unparsable blocked number %r", mask_phone(entry))
            continue
        if phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == e164:
            return True
    return False


def find_phone(text: str, region: str) -> str | None:
    """The first phone-number-looking part of free text (for gap filling without the model)."""
    for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.POSSIBLE):
        return str(match.raw_string)
    m = re.fullmatch(r"\s*(\+?\d{2,6})\s*", text)
    return m.group(1) if m else None
