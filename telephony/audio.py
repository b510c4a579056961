"""8 kHz µ-law helpers: silence, frame size, DTMF tone generation.

Twilio media streams and the Deepgram sockets both speak raw 8 kHz µ-law, so
the product never transcodes speech; only DTMF key presses are synthesised
here (as linear PCM, then µ-law encoded).
"""

from __future__ import annotations

import math
import warnings
from array import array

with warnings.catch_warnings():
    # Python 3.11/3.12 warn that audioop is deprecated; 3.13+ gets the same API
    # from the audioop-lts package (pyproject installs it there).
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SAMPLE_RATE = 8000
BYTES_PER_SECOND = 8000  # one byte per µ-law sample
FRAME_BYTES = 160  # 20 ms, Twilio's frame size
SILENCE_BYTE = 0xFF  # µ-law encoding of 0
SILENCE_FRAME = bytes([SILENCE_BYTE]) * FRAME_BYTES

_DTMF_FREQS: dict[str, tuple[float, float]] = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "A": (697, 1633),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477), "B": (770, 1633),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "C": (852, 1633),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477), "D": (941, 1633),
}  # fmt: skip

#: Per-tone peak amplitude (16-bit); two tones sum to ~-6 dBFS: loud enough to
#: detect, far from clipping.
_AMPLITUDE = 8000


def silence(seconds: float) -> bytes:
    """``seconds`` of µ-law silence."""
    return bytes([SILENCE_BYTE]) * int(round(seconds * BYTES_PER_SECOND))


def is_silence(chunk: bytes) -> bool:
    """True if every byte is µ-law zero (0xFF; 0x7F is negative zero)."""
    return not chunk.strip(b"\xff\x7f")


def dtmf_tones(digits: str, tone_ms: int = 100, gap_ms: int = 60) -> bytes:
    """µ-law audio that presses ``digits`` on a phone menu.

    Each digit is a dual tone of ``tone_ms`` followed by ``gap_ms`` of silence
    (a detector needs the gap to see two equal digits as two presses).

    Raises:
        ValueError: a character that is not a DTMF key (0-9, *, #, A-D).
    """
    n_tone = SAMPLE_RATE * tone_ms // 1000
    gap = silence(gap_ms / 1000)
    out = bytearray()
    for d in digits.upper():
        if d not in _DTMF_FREQS:
            raise ValueError(f"not a DTMF key: {d!r}")
        lo, hi = _DTMF_FREQS[d]
        w1, w2 = 2 * math.pi * lo / SAMPLE_RATE, 2 * math.pi * hi / SAMPLE_RATE
        pcm = array("h", (int(_AMPLITUDE * (math.sin(w1 * i) + math.sin(w2 * i))) for i in range(n_tone)))
        out += audioop.lin2ulaw(pcm.tobytes(), 2)
        out += gap
    return bytes(out)
