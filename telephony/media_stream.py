"""Twilio media-stream JSON ⇄ small internal events (pure: no I/O).

This is the hot path of every call (50 inbound frames per second), so parsing
decodes base64 with ``binascii.a2b_base64`` straight into ``bytes`` and the
outbound builders format JSON around a pre-encoded payload instead of building
dicts for ``json.dumps``. Malformed input is logged and skipped, never raised:
one bad frame must not end a phone call.
"""

from __future__ import annotations

import binascii
import json
import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Connected:
    """The websocket is up (first message Twilio sends)."""


@dataclass(frozen=True, slots=True)
class Start:
    """The stream started: identifiers and the ``<Parameter>`` values of the TwiML."""

    stream_sid: str
    call_sid: str
    custom_parameters: dict[str, str] = field(default_factory=dict)
    media_format: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Media:
    """One chunk of inbound callee audio (raw 8 kHz µ-law, any size)."""

    payload: bytes
    timestamp_ms: int
    chunk: int


@dataclass(frozen=True, slots=True)
class Dtmf:
    """A key the callee pressed."""

    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    """A mark we sent came back: the audio before it has played (or was cleared)."""

    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    """The stream ended (call hung up)."""


StreamEvent = Connected | Start | Media | Dtmf | Mark | Stop

_CONNECTED = Connected()
_STOP = Stop()


def parse(text: str | bytes) -> StreamEvent | None:
    """Turn one websocket text message into an event.

    Returns:
        The event, or ``None`` for malformed JSON, missing fields, bad base64
        and unknown events (each logged, never raised).
    """
    try:
        msg = json.loads(text)
    except (ValueError, TypeError, RecursionError):  # RecursionError: absurdly nested JSON
        log.warning("media stream: skipping non-JSON message")
        return None
    if not isinstance(msg, dict):
        log.warning("media stream: skipping non-object message")
        return None
    event = msg.get("event")
    try:
        if event == "media":
            media = msg["media"]
            payload = binascii.a2b_base64(media["payload"], strict_mode=True)
            return Media(payload, int(media.get("timestamp", 0)), int(media.get("chunk", 0)))
        if event == "start":
            start = msg["start"]
            params = start.get("customParameters") or {}
            fmt = start.get("mediaFormat") or {}
            if not isinstance(params, dict) or not isinstance(fmt, dict):
                raise TypeError("customParameters/mediaFormat must be objects")
            stream_sid = msg.get("streamSid") or start["streamSid"]
            return Start(
                str(stream_sid),
                str(start["callSid"]),
                {str(k): str(v) for k, v in params.items()},
                dict(fmt),
            )
        if event == "mark":
            return Mark(str(msg["mark"]["name"]))
        if event == "dtmf":
            return Dtmf(str(msg["dtmf"]["digit"]))
        if event == "stop":
            return _STOP
        if event == "connected":
            return _CONNECTED
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError, binascii.Error) as e:
        log.warning("media stream: skipping malformed %r message: %s", event, e)
        return None
    log.warning("media stream: skipping unknown event %r", event)
    return None


def _quote(s: str) -> str:
    # Sids and mark names are ASCII identifiers in practice; json.dumps keeps odd
    # ones (quotes, backslashes) valid without a dict round-trip.
    return json.dumps(s)


def media_msg(stream_sid: str, payload: bytes) -> str:
    """Outbound ``media`` message carrying raw µ-law bytes."""
    b64 = binascii.b2a_base64(payload, newline=False).decode("ascii")
    return f'{{"event":"media","streamSid":{_quote(stream_sid)},"media":{{"payload":"{b64}"}}}}'


def mark_msg(stream_sid: str, name: str) -> str:
    """Outbound ``mark``: Twilio echoes it back once the audio before it has played."""
    return f'{{"event":"mark","streamSid":{_quote(stream_sid)},"mark":{{"name":{_quote(name)}}}}}'


def clear_msg(stream_sid: str) -> str:
    """Outbound ``clear``: drop every buffered, unplayed byte (barge-in)."""
    return f'{{"event":"clear","streamSid":{_quote(stream_sid)}}}'
