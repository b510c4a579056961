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

import math
import random
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

SAMPLE_RATE = 8000
SILENCE_BYTE = 0xFF
_START = 0x01
_END = 0x02
# Filler: map any random byte into 0x80..0xFE (positive, non-zero µ-law samples).
_FILLER_TABLE = bytes(0x80 + (b % 0x7F) for b in range(256))
_MIN_FILLER = 8
_SILENCE_RUN = re.compile(rb"[\x7f\xff]+")
_TEXT_RUN = re.compile(rb"[\x21-\x7e]*")
_START_BYTE = bytes([_START])
_END_BYTE = bytes([_END])


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
    return b"".join(iter_speech(text, words_per_second=words_per_second))


def iter_speech(text: str, *, words_per_second: float = 3.0) -> Iterator[bytes]:
    """``encode_speech`` one word slot at a time (the same bytes), so a TTS can stream the first
    word's audio before it has rendered the rest, as a real one does."""
    if words_per_second <= 0:
        raise ValueError("words_per_second must be positive")
    slot = max(1, round(SAMPLE_RATE / words_per_second))
    rng = random.Random(len(text) * 7919 + slot)
    for word in _ascii_words(text):
        encoded = word.encode("ascii")
        filler_len = max(_MIN_FILLER, slot - len(encoded) - 2)
        yield b"".join((rng.randbytes(filler_len).translate(_FILLER_TABLE), _START_BYTE, encoded, _END_BYTE))


def hold_music(seconds: float, *, level: float = 6000.0) -> bytes:
    """``seconds`` of hold music: a slow cycle of three-note chords as real µ-law audio.

    It carries no words (no START marker: its loudest samples stay far from µ-law 0x01) and has
    negative samples from its first millisecond, so ``SpeechGate`` hears it as sound that is not
    speech. A sample that would encode as µ-law zero is nudged one step, so the music has no
    silent byte in it and is one continuous sound, as music on a line is.
    """
    chords = (
        (261.63, 329.63, 392.0),  # C major
        (220.0, 261.63, 329.63),  # A minor
        (174.61, 220.0, 261.63),  # F major
        (196.0, 246.94, 293.66),  # G major
    )
    out = bytearray()
    for n in range(max(0, round(seconds * SAMPLE_RATE))):
        chord = chords[(n // SAMPLE_RATE) % len(chords)]  # one chord a second
        t = n / SAMPLE_RATE
        # starts on the negative half-wave: -sin
        x = -sum(math.sin(2 * math.pi * f * t) for f in chord) / len(chord) * level
        out.append(_linear_to_ulaw(round(x)))
    return bytes(out)


def _linear_to_ulaw(sample: int) -> int:
    """G.711 µ-law of one 16-bit sample (never 0xFF/0x7F: those read as silence here)."""
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), clip) + bias
    exponent = max(0, magnitude.bit_length() - 8)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    byte = ~(sign | (exponent << 4) | mantissa) & 0xFF
    return {0xFF: 0xFE, 0x7F: 0x7E}.get(byte, byte)


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
        """Consume ``chunk`` and return the events it completes, in stream order.

        Scans with ``re`` and ``bytes.find`` instead of byte by byte: the callee decodes every frame
        the assistant plays, and a Python loop over each byte was the largest cost of the sandbox
        Twilio process. The rules are those of the layout above, byte for byte:
        silence ends voice and any word being read; START (re)starts a word; END completes it;
        any other byte inside a word abandons it.
        """
        events: list[SpeechEvent] = []
        base = self.offset
        self.offset += len(chunk)
        if not self.in_voice and is_silent(chunk):
            return events
        pos = 0
        for quiet in _SILENCE_RUN.finditer(chunk):
            if quiet.start() > pos:
                self._voiced(chunk, pos, quiet.start(), base, events)
            if self.in_voice:
                events.append(VoiceEnd(base + quiet.start()))
                self.in_voice = False
            self._reading = False
            pos = quiet.end()
        if pos < len(chunk):
            self._voiced(chunk, pos, len(chunk), base, events)
        return events

    def _voiced(self, chunk: bytes, pos: int, end: int, base: int, events: list[SpeechEvent]) -> None:
        """Decode ``chunk[pos:end]``, a run without silence."""
        if not self.in_voice:
            events.append(VoiceStart(base + pos))
            self.in_voice = True
        while pos < end:
            if not self._reading:
                start = chunk.find(_START_BYTE, pos, end)
                if start < 0:
                    return
                self._reading = True
                self._text.clear()
                pos = start + 1
                continue
            text = _TEXT_RUN.match(chunk, pos, end)
            assert text is not None  # the pattern matches the empty string
            self._text += text.group()
            pos = text.end()
            if pos == end:
                return  # the word continues in the next chunk
            b = chunk[pos]
            pos += 1
            if b == _START:
                self._text.clear()  # a new word starts; keep reading
            elif b == _END:
                self._reading = False
                if self._text:
                    events.append(WordHeard(self._text.decode("ascii"), base + pos))
            else:
                self._reading = False


_NOT_SPEECH = re.compile(rb"[\x00-\x7e]")


class SpeechGate:
    """The sandbox Deepgram's voice activity detection: sound that is not speech becomes silence.

    Deepgram's VAD tells speech from other sound (music on hold, tones) by its tonal qualities, and
    transcribes no words from music. Sandbox speech begins every sound with filler made only of
    positive µ-law samples (``_MIN_FILLER`` of them at least); any other sound has negative samples
    in its first bytes, and a sound shorter than that (a tone's half-wave between two samples that
    are exactly zero) is no word either. So the first ``_MIN_FILLER`` bytes of each sound decide it,
    and a sound that is not speech is passed on as silence until the next silence: the decoder
    then sees no voice, no words, no turn. Output has the same length as input, at most
    ``_MIN_FILLER - 1`` bytes later (while a sound's first bytes straddle two chunks).
    """

    def __init__(self) -> None:
        self._speech: bool | None = None  # the current sound: speech, not speech, or None in silence
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        """Pass ``chunk`` on, with sound that is not speech replaced by silence."""
        data = self._held + chunk
        self._held = b""
        if self._speech is None and is_silent(data):
            return data
        out = bytearray()
        pos = 0
        for quiet in _SILENCE_RUN.finditer(data):
            if quiet.start() > pos:
                self._sound(data, pos, quiet.start(), out, ended=True)
            out += data[quiet.start() : quiet.end()]
            self._speech = None
            pos = quiet.end()
        if pos < len(data):
            self._sound(data, pos, len(data), out, ended=False)
        return bytes(out)

    def _sound(self, data: bytes, pos: int, end: int, out: bytearray, *, ended: bool) -> None:
        if self._speech is None:
            head = data[pos : pos + _MIN_FILLER]
            if _NOT_SPEECH.search(head) or (ended and len(head) < _MIN_FILLER):
                self._speech = False  # a click or a tone's half-wave between zero samples
            elif len(head) == _MIN_FILLER:
                self._speech = True
            else:
                self._held = data[pos:end]  # too little of the sound yet to tell
                return
        out += data[pos:end] if self._speech else bytes([SILENCE_BYTE]) * (end - pos)


def decode_text(audio: bytes) -> str:
    """Convenience: every fully played word of ``audio``, joined by spaces."""
    return " ".join(e.word for e in SpeechDecoder().feed(audio) if isinstance(e, WordHeard))
