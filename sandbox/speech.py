"""Sandbox speech: real 8 kHz µ-law audio that also carries its own text.

Why: tests need a speech-to-text stand-in that transcribes exactly, and a callee that knows exactly
which words of the assistant's audio were actually played before it barged in. Audio produced here
is ordinary µ-law bytes, so it crosses every wire (Twilio media frames, Deepgram sockets) unchanged
and survives any re-chunking of the byte stream.

Layout of one word (a "slot" of ``8000 / words_per_second`` bytes, i.e. its spoken duration)::

    [voice filler bytes ...][START][ascii text][END]

Filler bytes are pseudo-random positive samples (0x80-0xFE), the text is printable ASCII
(0x21-0x7E), START is 0x01 and END is 0x02. Because the text sits at the END of the slot, a
decoder reports a word only once the whole slot was played; a word cut off by ``clear`` is never
heard. Silence is 0xFF (µ-law zero); 0x7F (negative zero) is also treated as silence for tolerance.
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass

SAMPLE_RATE = 8000
SILENCE_BYTE = 0xFF
_SILENT = frozenset({0xFF, 0x7F})
_START = 0x01
_END = 0x02
# Filler: map any random byte into 0x80..0xFE (positive, non-zero µ-law samples).
_FILLER_TABLE = bytes(0x80 + (b % 0x7F) for b in range(256))
_MIN_FILLER = 8


@dataclass(frozen=True)
class VoiceStart:
    """First non-silent byte after silence (what VAD / SpeechStarted keys on)."""

    offset: int


@dataclass(frozen=True)
class WordHeard:
    """A word whose whole slot was played; ``offset`` is the byte offset just after the slot."""

    word: str
    offset: int


@dataclass(frozen=True)
class VoiceEnd:
    """First silence byte after voice."""

    offset: int


SpeechEvent = VoiceStart | WordHeard | VoiceEnd


def _ascii_words(text: str) -> list[str]:
    """Transliterate to printable ASCII (drop what cannot be) and split on whitespace."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    words = []
    for raw in folded.split():
        word = "".join(ch for ch in raw if 0x21 <= ord(ch) <= 0x7E)
        if word:
            words.append(word)
    return words


def encode_speech(text: str, *, words_per_second: float = 3.0) -> bytes:
    """Render ``text`` as continuous voice audio, one slot per word, no leading/trailing silence.

    Args:
        text: What is said. Non-ASCII characters are transliterated or dropped.
        words_per_second: Speaking rate; each word lasts ``8000 / words_per_second`` bytes.

    Returns:
        µ-law bytes (deterministic for a given text and rate).
    """
    if words_per_second <= 0:
        raise ValueError("words_per_second must be positive")
    slot = max(1, round(SAMPLE_RATE / words_per_second))
    rng = random.Random(len(text) * 7919 + slot)
    out = bytearray()
    for word in _ascii_words(text):
        encoded = word.encode("ascii")
        filler_len = max(_MIN_FILLER, slot - len(encoded) - 2)
        out += rng.randbytes(filler_len).translate(_FILLER_TABLE)
        out.append(_START)
        out += encoded
        out.append(_END)
    return bytes(out)


def silence(seconds: float) -> bytes:
    """Return ``seconds`` of µ-law silence (0xFF bytes)."""
    return bytes([SILENCE_BYTE]) * max(0, round(seconds * SAMPLE_RATE))


def is_silent(chunk: bytes) -> bool:
    """True when every byte of ``chunk`` is silence."""
    return chunk.count(0xFF) + chunk.count(0x7F) == len(chunk)


class SpeechDecoder:
    """Streaming decoder: feed bytes in any chunking, get voice/word events with absolute offsets."""

    def __init__(self) -> None:
        self.offset = 0
        self.in_voice = False
        self._reading = False
        self._text = bytearray()

    def feed(self, chunk: bytes) -> list[SpeechEvent]:
        """Consume ``chunk`` and return the events it completes, in stream order."""
        events: list[SpeechEvent] = []
        base = self.offset
        self.offset += len(chunk)
        if not self.in_voice and is_silent(chunk):
            return events
        for i, b in enumerate(chunk):
            if b in _SILENT:
                if self.in_voice:
                    events.append(VoiceEnd(base + i))
                    self.in_voice = False
                self._reading = False
                continue
            if not self.in_voice:
                events.append(VoiceStart(base + i))
                self.in_voice = True
            if b == _START:
                self._reading = True
                self._text.clear()
            elif self._reading:
                if b == _END:
                    self._reading = False
                    if self._text:
                        events.append(WordHeard(self._text.decode("ascii"), base + i + 1))
                elif 0x21 <= b <= 0x7E:
                    self._text.append(b)
                else:
                    self._reading = False
        return events


def decode_text(audio: bytes) -> str:
    """Convenience: every fully played word of ``audio``, joined by spaces."""
    return " ".join(e.word for e in SpeechDecoder().feed(audio) if isinstance(e, WordHeard))
