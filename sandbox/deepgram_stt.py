"""Audio-time speech-to-text state machine behind the sandbox ``/v1/listen`` socket.

Why separate: the socket plumbing (``sandbox.deepgram``) and the transcription rules (VAD,
interim results, endpointing, utterance end; all in AUDIO time from the bytes received) are
easier to read and test apart. Sound that is not speech (hold music) yields no words and no
``SpeechStarted`` (``sandbox.speech.SpeechGate``). Pure: no I/O; it returns the JSON messages
Deepgram would send.
"""

from __future__ import annotations

import string
import uuid
from typing import Any

from sandbox.speech import SAMPLE_RATE, SpeechDecoder, SpeechGate, VoiceEnd, VoiceStart, WordHeard

_INTERIM_EVERY = 2
_MODEL_INFO = {"name": "general-nova-3", "version": "2024-01-01.0", "arch": "nova-3"}


def flag(value: str | None, default: bool = False) -> bool:
    """Query booleans arrive as "true"/"True"/"1"; be tolerant like the real service."""
    if value is None:
        return default
    return value.strip().lower() in ("true", "1", "yes")


def int_or_none(value: str | None, default: int | None) -> int | None:
    """An int, or None when the feature is switched off ("false")."""
    if value is None:
        return default
    if value.strip().lower() in ("false", "0", "none", ""):
        return None
    try:
        return int(float(value))
    except ValueError:
        return default


class Transcriber:
    """Audio-time STT state machine of one listen session; returns the JSON messages to send."""

    def __init__(self, query: dict[str, str]) -> None:
        self.request_id = str(uuid.uuid4())
        self.interim = flag(query.get("interim_results"))
        self.vad_events = flag(query.get("vad_events"))
        self.punctuate = flag(query.get("punctuate")) or flag(query.get("smart_format"))
        self.endpointing = int_or_none(query.get("endpointing"), 10)
        self.utterance_end_ms = int_or_none(query.get("utterance_end_ms"), None)
        self.decoder = SpeechDecoder()
        self.gate = SpeechGate()  # VAD: music and other non-speech sound carry no voice, no words
        self.in_voice = False
        self.voice_end_at: int | None = None
        self.word_start = 0
        self.pending: list[tuple[str, int, int]] = []  # (word, start byte, end byte)
        self.segment_start = 0
        self.last_word_end: int | None = None
        self.utterance_open = False

    @property
    def offset(self) -> int:
        return self.decoder.offset

    def feed(self, audio: bytes) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in self.decoder.feed(self.gate.feed(audio)):
            out += self._advance_to(event.offset)
            if isinstance(event, VoiceStart):
                self.in_voice = True
                self.word_start = event.offset
                if self.vad_events:
                    out.append(
                        {"type": "SpeechStarted", "channel": [0], "timestamp": event.offset / SAMPLE_RATE}
                    )
            elif isinstance(event, VoiceEnd):
                self.in_voice = False
                self.voice_end_at = event.offset
            elif isinstance(event, WordHeard):
                self.pending.append((event.word, self.word_start, event.offset))
                self.word_start = event.offset
                self.last_word_end = event.offset
                self.utterance_open = True
                if self.interim and len(self.pending) % _INTERIM_EVERY == 0:
                    out.append(self._results(event.offset, is_final=False, speech_final=False))
        out += self._advance_to(self.offset)
        return out

    def _advance_to(self, offset: int) -> list[dict[str, Any]]:
        """Emit what the silence up to ``offset`` implies (endpoint, utterance end)."""
        out: list[dict[str, Any]] = []
        if self.in_voice or self.voice_end_at is None:
            return out
        if self.pending and self.endpointing is not None:
            endpoint = self.voice_end_at + self.endpointing * SAMPLE_RATE // 1000
            if offset >= endpoint:
                out.append(self._results(endpoint, is_final=True, speech_final=True))
        if self.utterance_open and self.utterance_end_ms is not None and self.last_word_end is not None:
            if offset >= self.last_word_end + self.utterance_end_ms * SAMPLE_RATE // 1000:
                self.utterance_open = False
                out.append(
                    {
                        "type": "UtteranceEnd",
                        "channel": [0, 1],
                        "last_word_end": self.last_word_end / SAMPLE_RATE,
                    }
                )
        return out

    def finalize(self) -> dict[str, Any]:
        """Finalize / CloseStream: whatever is pending becomes final now."""
        return self._results(self.offset, is_final=True, speech_final=False, from_finalize=True)

    def _results(
        self, end: int, *, is_final: bool, speech_final: bool, from_finalize: bool = False
    ) -> dict[str, Any]:
        words = [
            {
                "word": w.lower().strip(string.punctuation) or w.lower(),
                "start": s / SAMPLE_RATE,
                "end": e / SAMPLE_RATE,
                "confidence": 0.99,
                "punctuated_word": w,
            }
            for w, s, e in self.pending
        ]
        key = "punctuated_word" if self.punctuate else "word"
        start = self.segment_start
        message = {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": max(0, end - start) / SAMPLE_RATE,
            "start": start / SAMPLE_RATE,
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {
                "alternatives": [
                    {
                        "transcript": " ".join(str(w[key]) for w in words),
                        "confidence": 0.99 if words else 0.0,
                        "words": words,
                    }
                ]
            },
            "metadata": {"request_id": self.request_id, "model_info": _MODEL_INFO, "model_uuid": "sandbox"},
        }
        if is_final:
            self.pending = []
            self.segment_start = max(end, self.segment_start)
        return message
