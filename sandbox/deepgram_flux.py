"""Audio-time turn-taking state machine behind the sandbox ``/v2/listen`` (Deepgram Flux) socket.

Why separate: like ``sandbox.deepgram_stt`` for ``/v1/listen``, the socket plumbing and the turn
rules are easier to read and test apart. Pure: no I/O; it returns the JSON messages Flux would
send, each already numbered (``sequence_id`` counts every message of the connection from 0).

States follow Deepgram's documented machine: Initial --StartOfTurn--> TurnOngoing
--EagerEndOfTurn--> AwaitingEnd --TurnResumed--> TurnOngoing; AwaitingEnd or TurnOngoing
--EndOfTurn--> Initial, after which ``turn_index`` increments.

Sandbox timing (AUDIO time from the bytes received, 8000 B = 1 s; deterministic):

- ``StartOfTurn`` at voice onset (``VoiceStart``) while Initial: the barge-in signal. A word heard
  while Initial (the caller kept talking through a ``ForceEndTurn``) opens a turn at that word.
- Words are punctuated as spoken; a word starts where the previous one ended or at voice onset.
- ``Update`` every 2000 B (0.25 s) of audio from the turn's start, unless a state change happened
  at that same offset.
- ``end_of_turn_confidence`` is silence since ``VoiceEnd`` / 400 ms, capped at 1.0 (0 in voice). So
  ``EagerEndOfTurn`` fires once silence reaches ``eager_eot_threshold`` x 400 ms (eager mode only,
  words needed) and ``EndOfTurn`` (trigger "model") once it reaches ``eot_threshold`` x 400 ms
  (0.7 -> 280 ms; words needed; 1.0 switches model ends off, as documented). On a tie Eager comes
  first, then EndOfTurn with the same transcript.
- ``EndOfTurn`` trigger "timeout" after ``eot_timeout_ms`` of silence, with or without words (so a
  turn that had voice but no words ends with an empty transcript, and the barge-in is released).
- Voice again while AwaitingEnd -> ``TurnResumed``; new words then extend the same transcript.
- Sound that is not speech (hold music) is silence to the turn machine (``SpeechGate``): Flux's
  turn detection is part of its speech model, so music opens no turn and ends none.
- ``ForceEndTurn`` -> ``EndOfTurn`` trigger "manual" at the current offset if a turn is open.
- ``CloseStream`` -> a last ``Update`` covering the audio not reported yet, and NO ``EndOfTurn``:
  real Flux documents that CloseStream does not finalize the active turn.
- ``Configure`` ``thresholds`` -> ``ConfigureSuccess`` (applied at once, to the silence already
  heard too) or, out of the documented ranges, ``ConfigureFailure`` code ``INVALID_THRESHOLD``.
- ``audio_window_start`` is where the turn's audio began: 0, then the previous turn's end.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sandbox.speech import SAMPLE_RATE, SpeechDecoder, SpeechGate, VoiceEnd, VoiceStart, WordHeard

UPDATE_EVERY = 2000  # bytes: 0.25 s
FULL_CONFIDENCE = 3200  # bytes of silence (400 ms) for end_of_turn_confidence 1.0
_WORD_CONFIDENCE = 0.99
_INITIAL, _ONGOING, _AWAITING = "Initial", "TurnOngoing", "AwaitingEnd"

Message = dict[str, Any]


def _number(value: object, name: str, low: float, high: float) -> float:
    try:
        number = float(str(value))
    except ValueError:
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, got {value!r}")
    return number


def _thresholds(
    values: Mapping[str, object], eot: float, eager: float | None, timeout_ms: int
) -> tuple[float, float | None, int]:
    """Parse and range-check the end-of-turn settings; the ones not in ``values`` keep their value."""
    eot = _number(values.get("eot_threshold", eot), "eot_threshold", 0.5, 1.0)
    raw = values.get("eager_eot_threshold", eager)
    eager = None if raw is None else _number(raw, "eager_eot_threshold", 0.3, 0.9)
    timeout_ms = int(_number(values.get("eot_timeout_ms", timeout_ms), "eot_timeout_ms", 500, 60000))
    return eot, eager, timeout_ms


class FluxTranscriber:
    """Audio-time Flux turn state machine of one ``/v2/listen`` session.

    Args:
        query: The upgrade's query parameters.

    Raises:
        ValueError: On a model that is not Flux or a threshold out of its documented range
            (the server answers the upgrade with HTTP 400).
    """

    def __init__(self, query: dict[str, str]) -> None:
        model = query.get("model", "")
        if not model.startswith("flux"):
            raise ValueError(f"Model {model!r} is not available on /v2/listen; use a flux model.")
        self.request_id = str(uuid.uuid4())
        self.eot_threshold, self.eager_eot_threshold, self.eot_timeout_ms = _thresholds(
            query, 0.7, None, 5000
        )
        self.decoder = SpeechDecoder()
        self.gate = SpeechGate()  # VAD: music and other non-speech sound carry no voice, no words
        self.sequence = 0
        self.turn_index = 0
        self.state = _INITIAL
        self.in_voice = False
        self.voice_end_at: int | None = None
        self.word_start = 0
        self.words: list[tuple[str, int, int]] = []  # (punctuated word, start byte, end byte)
        self.turn_start = 0
        self.next_update: int | None = None
        self.reported_to = 0  # audio_window_end of the last TurnInfo

    @property
    def offset(self) -> int:
        """Bytes of audio received so far."""
        return self.decoder.offset

    @property
    def transcript(self) -> str:
        """The current turn's words, joined by spaces."""
        return " ".join(w for w, _, _ in self.words)

    def connected(self) -> Message:
        """The ``Connected`` message sent on open (sequence_id 0)."""
        return {"type": "Connected", "request_id": self.request_id, "sequence_id": self._sequence()}

    def feed(self, audio: bytes) -> list[Message]:
        """Consume audio; return the TurnInfo messages it implies, in audio order."""
        out: list[Message] = []
        for event in self.decoder.feed(self.gate.feed(audio)):
            out += self._advance_to(event.offset)
            if isinstance(event, VoiceStart):
                self.in_voice = True
                self.word_start = event.offset
                if self.state == _INITIAL:
                    out.append(self._start_turn(event.offset))
                elif self.state == _AWAITING:
                    self.state = _ONGOING
                    out.append(self._state_change("TurnResumed", event.offset))
            elif isinstance(event, VoiceEnd):
                self.in_voice = False
                self.voice_end_at = event.offset
            elif isinstance(event, WordHeard):
                self.words.append((event.word, self.word_start, event.offset))
                self.word_start = event.offset
                if self.state == _INITIAL:
                    out.append(self._start_turn(event.offset))
        out += self._advance_to(self.offset)
        return out

    def control(self, message: Message) -> list[Message]:
        """Answer a client JSON message other than KeepAlive / CloseStream (tolerates unknown ones)."""
        kind = message.get("type")
        if kind == "ForceEndTurn":
            if self.state == _INITIAL:
                return []
            out = [self._end_turn(self.offset, "manual")]
            self.word_start = max(self.word_start, self.offset)  # later words belong to a new turn
            return out
        if kind == "Configure":
            return self._configure(message)
        return []

    def close_stream(self) -> list[Message]:
        """CloseStream: report the audio not covered yet with an Update; the turn stays open."""
        if self.state == _INITIAL or self.offset <= self.reported_to:
            return []
        return [self._turn_info("Update", self.offset)]

    # ------------------------------------------------------------------ timeline

    def _advance_to(self, offset: int) -> list[Message]:
        """Emit, in order, every timed event (updates, eager / end of turn) due up to ``offset``."""
        out: list[Message] = []
        while self.state != _INITIAL:
            due = self._next_due()
            if due is None or due[0] > offset:
                break
            at, kind = due
            if kind == "Update":
                out.append(self._turn_info("Update", at))
                self.next_update = at + UPDATE_EVERY
            elif kind == "EagerEndOfTurn":
                self.state = _AWAITING
                out.append(self._state_change("EagerEndOfTurn", at))
            else:
                out.append(self._end_turn(at, kind))
        return out

    def _next_due(self) -> tuple[int, str] | None:
        """Earliest timed event; on a tie the state change wins (list order)."""
        candidates: list[tuple[int, str]] = []
        if not self.in_voice and self.voice_end_at is not None:
            end = self.voice_end_at
            eager = self.eager_eot_threshold
            if eager is not None and self.state == _ONGOING and self.words:
                candidates.append((end + round(eager * FULL_CONFIDENCE), "EagerEndOfTurn"))
            if self.eot_threshold < 1.0 and self.words:
                candidates.append((end + round(self.eot_threshold * FULL_CONFIDENCE), "model"))
            candidates.append((end + self.eot_timeout_ms * SAMPLE_RATE // 1000, "timeout"))
        if self.next_update is not None:
            candidates.append((self.next_update, "Update"))
        return min(candidates, key=lambda c: c[0]) if candidates else None

    # ------------------------------------------------------------------ messages

    def _start_turn(self, at: int) -> Message:
        self.state = _ONGOING
        self.next_update = at + UPDATE_EVERY
        return self._turn_info("StartOfTurn", at)

    def _state_change(self, event: str, at: int) -> Message:
        if self.next_update == at:  # no Update where the state changed
            self.next_update = at + UPDATE_EVERY
        return self._turn_info(event, at)

    def _end_turn(self, at: int, trigger: str) -> Message:
        message = self._turn_info("EndOfTurn", at, trigger=trigger)
        self.state = _INITIAL
        self.turn_index += 1
        self.words = []
        self.turn_start = at
        self.next_update = None
        return message

    def _confidence(self, at: int) -> float:
        if self.in_voice or self.voice_end_at is None:
            return 0.0
        return round(min(1.0, max(0, at - self.voice_end_at) / FULL_CONFIDENCE), 4)

    def _turn_info(self, event: str, at: int, *, trigger: str | None = None) -> Message:
        self.reported_to = max(self.reported_to, at)
        message: Message = {
            "type": "TurnInfo",
            "request_id": self.request_id,
            "sequence_id": self._sequence(),
            "event": event,
            "turn_index": self.turn_index,
            "audio_window_start": self.turn_start / SAMPLE_RATE,
            "audio_window_end": at / SAMPLE_RATE,
            "transcript": self.transcript,
            "words": [
                {"word": w, "confidence": _WORD_CONFIDENCE, "start": s / SAMPLE_RATE, "end": e / SAMPLE_RATE}
                for w, s, e in self.words
            ],
            "end_of_turn_confidence": self._confidence(at),
        }
        if trigger is not None:
            message["trigger"] = trigger
        return message

    def _configure(self, message: Message) -> list[Message]:
        try:
            eot, eager, timeout_ms = _thresholds(
                message.get("thresholds") or {},
                self.eot_threshold,
                self.eager_eot_threshold,
                self.eot_timeout_ms,
            )
        except ValueError as e:
            failure: Message = {
                "type": "ConfigureFailure",
                "request_id": self.request_id,
                "sequence_id": self._sequence(),
                "code": "INVALID_THRESHOLD",
                "description": str(e),
            }
            return [failure]
        self.eot_threshold, self.eager_eot_threshold, self.eot_timeout_ms = eot, eager, timeout_ms
        success: Message = {
            "type": "ConfigureSuccess",
            "request_id": self.request_id,
            "sequence_id": self._sequence(),
            "thresholds": {
                "eot_threshold": eot,
                "eager_eot_threshold": eager,
                "eot_timeout_ms": timeout_ms,
            },
            "keyterms": message.get("keyterms") or [],
        }
        # New thresholds apply to the silence already received.
        return [success, *self._advance_to(self.offset)]

    def _sequence(self) -> int:
        self.sequence += 1
        return self.sequence - 1
