"""The message left on an answering machine: fixed words built from the errand, no model round.

A machine records from its beep and nobody answers back, so the message must stand on its own:
who is calling (the disclosure, said first), for whom, what about, and a number to call back,
read digit by digit so a listener can write it down. ``agent.conversation`` puts the disclosure
in front (``voicemail_message``) through the same gate as every other spoken word.
"""

from __future__ import annotations

import phonenumbers

from agent.spoken import days_phrase, service_phrase
from storage.models import CallRequest


def spoken_number(number: str, *, callee_phone: str | None = None) -> str:
    """``number`` as words a TTS reads digit by digit, in groups: "4 1 5, 5 5 5, 0 1 9 9".

    The national form when the callee's number is in the same country (they dial it as
    such), else the international one with "plus" in front.

    Args:
        number: E.164 number to read out (our caller id).
        callee_phone: the number we called, to tell whether the callee dials it nationally.
    """
    try:
        parsed = phonenumbers.parse(number)
        same_country = False
        if callee_phone:
            same_country = phonenumbers.parse(callee_phone).country_code == parsed.country_code
        fmt = phonenumbers.PhoneNumberFormat
        written = phonenumbers.format_number(parsed, fmt.NATIONAL if same_country else fmt.INTERNATIONAL)
    except phonenumbers.NumberParseException:
        written = number
    groups = ["".join(ch for ch in part if ch.isdigit()) for part in written.replace("-", " ").split()]
    words = ", ".join(" ".join(g) for g in groups if g)
    return f"plus {words}" if written.startswith("+") else words


def voicemail_body(request: CallRequest, callback_number: str) -> str:
    """What follows the disclosure on a voicemail: the errand in one sentence and the call-back number."""
    service, days = service_phrase(request), days_phrase(request.window)
    number = spoken_number(callback_number, callee_phone=request.phone)
    call_back = f"Please call us back at {number}. " if number else ""
    return (
        f"I'm calling to book {service} for {request.person_name}, {days}. "
        f"{call_back}I'll also try again later. Thank you, goodbye."
    )
