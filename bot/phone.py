"""Vetting phone numbers: before anything is queued, and again right before a dial.

Intake is the last point where a person can be told *why* an errand is refused,
so every rule lives here: E.164 parsing with the person's default region,
emergency numbers (in the person's region and in a few common ones, since a
traveller may type their home country's), short codes, premium rate, the
destination policy (allowed countries and number types, see
:class:`DestinationPolicy`) and the configured block list. The same rules run
at dial time through :func:`check_destination`, because settings change and a
queued errand may wait for days.

The number also says where the callee may be: :func:`callee_zones` gives every
time zone it could ring in, so calling hours can be respected in all of them.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import re
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import phonenumbers
from phonenumbers import PhoneNumberType, shortnumberinfo
from phonenumbers import timezone as phone_tz

from bot import render
from storage.errors import IntakeError
from storage.redact import mask_phone

log = logging.getLogger(__name__)

#: Regions whose emergency numbers are always refused, whatever the person's region.
_EMERGENCY_REGIONS = ("US", "GB", "AU", "NZ", "DE", "FR", "IN", "JP")

#: Number types that reach a person or a business line at ordinary rates.
CALLABLE_TYPES = frozenset(
    {PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE}
)

#: How a refused number type is named to the person.
_TYPE_WORDS = {
    PhoneNumberType.TOLL_FREE: "toll-free",
    PhoneNumberType.PREMIUM_RATE: "premium-rate",
    PhoneNumberType.SHARED_COST: "shared-cost",
    PhoneNumberType.VOIP: "internet (VoIP)",
    PhoneNumberType.PERSONAL_NUMBER: "personal (follow-me)",
    PhoneNumberType.PAGER: "pager",
    PhoneNumberType.UAN: "company-wide (UAN)",
    PhoneNumberType.VOICEMAIL: "voicemail-access",
}

#: phonenumbers' region for numbers of no country (satellite, international networks).
NON_GEO_REGION = "001"


@dataclass(frozen=True)
class DestinationPolicy:
    """Where calls may go: the countries, the number types, the block list.

    Attributes:
        countries: ISO 3166 regions that may be called (``CALL_COUNTRIES``). phonenumbers
            names the region of each number, so the +1 countries are told apart (+1 876 is
            JM, not US) and satellite and international-network numbers (+881, +870, region
            ``001``) are in no country and never pass.
        home_region: the person's own country (``PERSON_REGION``, the region their local
            numbers are read in). Toll-free numbers are called only there: a toll-free
            number is free only from inside its own country, and from outside it is often
            unreachable or charged like an international call.
        blocked: ``BLOCKED_NUMBERS`` entries (numbers, or prefixes ending in ``*``).
    """

    countries: frozenset[str]
    home_region: str
    blocked: tuple[str, ...] = field(default=())

    @classmethod
    def home(cls, region: str, blocked: Iterable[str] = ()) -> DestinationPolicy:
        """Calls only inside the person's own country (the default when nothing is configured)."""
        return cls(countries=frozenset({region.upper()}), home_region=region.upper(), blocked=tuple(blocked))


@dataclass(frozen=True)
class CheckedPhone:
    """A number that may be called: E.164, the business's likely zone and every possible one.

    ``tz`` is the one zone opening hours are read in; ``zones`` (see :func:`callee_zones`)
    is every zone the callee may be in, for the callee-local calling window.
    """

    e164: str
    tz: str | None
    zones: tuple[str, ...] = ()


def check_phone(
    raw: str,
    region: str,
    blocked: Iterable[str] = (),
    *,
    prefer_tz: str | None = None,
    policy: DestinationPolicy | None = None,
) -> CheckedPhone:
    """Parse and vet a phone number for an outbound call.

    The business time zone comes from the number; when the number spans several zones
    (e.g. US toll-free) and ``prefer_tz`` is one of them, that one is taken.

    Args:
        raw: the number as the person wrote it.
        region: the person's region, for numbers written without a country code.
        blocked: extra block-list entries (on top of ``policy.blocked``).
        prefer_tz: the zone to take when the number could be in several.
        policy: allowed countries and types; ``None`` allows only ``region`` itself.

    Raises:
        IntakeError: the number is missing, malformed, an emergency or short number,
            premium rate, in a country or of a type that is not called, or on the block
            list; the message says which, for the person.
    """
    policy = policy or DestinationPolicy.home(region)
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
    refusal = _policy_refusal(num, e164, policy)
    if refusal:
        raise IntakeError(refusal)
    if is_blocked(e164, (*policy.blocked, *blocked), region):
        raise IntakeError(render.refuse_blocked(e164))
    zones = [z for z in phone_tz.time_zones_for_number(num) if z != phone_tz.UNKNOWN_TIMEZONE]
    callee = callee_zones(e164)
    if prefer_tz in zones:
        return CheckedPhone(e164=e164, tz=prefer_tz, zones=callee)
    return CheckedPhone(e164=e164, tz=zones[0] if zones else None, zones=callee)


def check_destination(e164: str, policy: DestinationPolicy) -> str | None:
    """Why ``e164`` must not be dialled under ``policy`` (text for the person), or ``None``.

    The dial-time twin of :func:`check_phone`: every intake rule again (emergency,
    short, premium, countries, number types, block list), since the settings may
    have changed while the errand waited. Pure; never raises.
    """
    try:
        check_phone(e164, policy.home_region, policy=policy)
    except IntakeError as e:
        return str(e)
    return None


def _policy_refusal(num: phonenumbers.PhoneNumber, e164: str, policy: DestinationPolicy) -> str | None:
    region = phonenumbers.region_code_for_number(num) or NON_GEO_REGION
    if region == NON_GEO_REGION:
        return (
            f"I won't call {e164}: it's a satellite or international-network number, "
            "which can cost a great deal per minute."
        )
    if region not in policy.countries:
        allowed = ", ".join(sorted(_country_name(r) for r in policy.countries)) or "none"
        return (
            f"I won't call {e164}: calls to {_country_name(region)} aren't enabled here "
            f"(allowed: {allowed}). The operator can change that with CALL_COUNTRIES."
        )
    kind = phonenumbers.number_type(num)
    if kind in CALLABLE_TYPES:
        return None
    if kind == PhoneNumberType.TOLL_FREE:
        if region == policy.home_region:
            return None
        return (
            f"I won't call {e164}: it's a toll-free number outside {_country_name(policy.home_region)}, "
            "and those are often unreachable or charged from abroad."
        )
    words = _TYPE_WORDS.get(kind, "special-service")
    return f"I won't call {e164}: it's a {words} number, and I only call landlines and mobiles."


def _country_name(region: str) -> str:
    # Imported here, on a refusal only: the geocoder loads ~100 MB of place names, which every
    # server process would otherwise carry for the sake of this one sentence.
    from phonenumbers import geocoder

    example = phonenumbers.example_number(region)
    name = geocoder.country_name_for_number(example, "en") if example else ""
    return f"{name} ({region})" if name else region


@functools.lru_cache(maxsize=4096)
def callee_zones(e164: str) -> tuple[str, ...]:
    """Every IANA zone the phone ``e164`` may ring in, sorted; ``()`` if unknown.

    A geographic number (a landline, or a US number) has the zones of its area.
    A number with no geography (toll-free, and mobiles in most countries) may be
    anywhere in its country: the zones of its region (``zone.tab``), not of its
    whole calling code, which for +1 would mix Guam with Puerto Rico. Without
    ``zone.tab`` the calling code's zones are used: more zones only narrow the
    calling window, so that errs on the safe side.
    """
    try:
        num = phonenumbers.parse(e164)
    except phonenumbers.NumberParseException:
        return ()
    zones = tuple(sorted(z for z in phone_tz.time_zones_for_number(num) if z != phone_tz.UNKNOWN_TIMEZONE))
    if zones and phonenumbers.is_number_geographical(num):
        return zones
    region = phonenumbers.region_code_for_number(num) or ""
    return region_zones(region) or zones


def region_zones(region: str) -> tuple[str, ...]:
    """The IANA zones of an ISO 3166 region, from the tz database's ``zone.tab`` (sorted)."""
    return _zone_table().get(region.upper(), ())


@functools.lru_cache(maxsize=1)
def _zone_table() -> dict[str, tuple[str, ...]]:
    text = _read_zone_tab()
    table: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) >= 3 and _loadable(cols[2]):
            table.setdefault(cols[0], set()).add(cols[2])
    return {region: tuple(sorted(zones)) for region, zones in table.items()}


def _read_zone_tab() -> str:
    for base in zoneinfo.TZPATH:
        path = Path(base) / "zone.tab"
        if path.is_file():
            return path.read_text(encoding="utf-8")
    try:  # the tzdata wheel, where there is no system tz database (Windows, slim images)
        return importlib.resources.files("tzdata.zoneinfo").joinpath("zone.tab").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        log.warning("no zone.tab found: toll-free and mobile numbers use their calling code's zones")
        return ""


def _loadable(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


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


def blocked_e164(entries: Iterable[str], region: str) -> list[str]:
    """The whole numbers among ``BLOCKED_NUMBERS`` entries, as E.164 (prefixes are skipped).

    These seed the do-not-call list at start-up; prefixes (``+1900*``) stay rules of the
    destination policy, since a list of numbers cannot hold them.
    """
    out = []
    for entry in entries:
        entry = entry.strip()
        if not entry or entry.endswith("*"):
            continue
        try:
            parsed = phonenumbers.parse(entry, region)
        except phonenumbers.NumberParseException:
            continue
        out.append(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))
    return out


def find_phone(text: str, region: str) -> str | None:
    """The first phone-number-looking part of free text (for gap filling without the model)."""
    for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.POSSIBLE):
        return str(match.raw_string)
    m = re.fullmatch(r"\s*(\+?\d{2,6})\s*", text)
    return m.group(1) if m else None
