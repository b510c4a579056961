"""Twilio request authentication: ``X-Twilio-Signature`` and the one-time stream token.

Signatures are checked against the *public* URL Twilio used (``PUBLIC_BASE_URL``
+ path + query), never the address the request reached us on, so validation
works behind proxies and tunnels.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from multidict import MultiDict
from twilio.request_validator import RequestValidator

from telephony.twilio_rest import token_sha256

SIGNATURE_HEADER = "X-Twilio-Signature"


class TwilioSignatures:
    """Validates Twilio's signatures for one auth token and public base URL."""

    def __init__(self, *, auth_token: str, public_base_url: str) -> None:
        self._validator = RequestValidator(auth_token)
        self.public_base_url = public_base_url.rstrip("/")

    def public_url(self, path_qs: str) -> str:
        """The URL Twilio signed for a request whose path (with query) is ``path_qs``."""
        return self.public_base_url + path_qs

    def valid(self, url: str, params: MultiDict[str] | Mapping[str, str], signature: str | None) -> bool:
        """True if ``signature`` is Twilio's signature of ``url`` + ``params``."""
        if not signature:
            return False
        return bool(self._validator.validate(url, params, signature))

    def valid_stream(self, stream_url: str, signature: str | None) -> bool:
        """The websocket upgrade is signed over the stream URL with no params.

        Twilio's docs leave the scheme of that URL implicit (unverified), so the
        ``wss://`` form written in the TwiML and its ``https://`` twin both pass.
        """
        if not signature:
            return False
        candidates = [stream_url]
        if stream_url.startswith("wss://"):
            candidates.append("https://" + stream_url[len("wss://") :])
        elif stream_url.startswith("ws://"):
            candidates.append("http://" + stream_url[len("ws://") :])
        return any(self._validator.validate(u, {}, signature) for u in candidates)


def token_matches(token: str | None, stored_sha256: object) -> bool:
    """Constant-time check of a stream token against the stored hash."""
    if not token or not isinstance(stored_sha256, str) or not stored_sha256:
        return False
    return hmac.compare_digest(token_sha256(token), stored_sha256)
