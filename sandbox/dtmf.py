"""Streaming DTMF detector for the sandbox callee (what the business "hears" when we press keys).

Why a real detector: the product synthesises its own tones (``telephony/audio.py``); the sandbox
must check them as a phone line would, by frequency, not by trusting a side channel.

Method: decode µ-law to linear PCM, then take overlapping 205-sample windows (25.6 ms, hop 100
samples) and measure the DFT power at the eight DTMF frequencies. A window holds a digit when the
strongest row and column tone each carry a large share of the window's energy and clearly dominate
the other tones of their group. Overlap guarantees that a 40 ms tone fills at least one window.
A digit is reported once per tone: it re-arms after a window without it.
"""

from __future__ import annotations

import math
import warnings
from array import array

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # Python 3.13+: provided by the audioop-lts package

__all__ = ["DtmfDetector", "detect_digits"]

_RATE = 8000
_WINDOW = 205
_HOP = 100
_ROWS = (697.0, 770.0, 852.0, 941.0)
_COLS = (1209.0, 1336.0, 1477.0, 1633.0)
_KEYS = ("123A", "456B", "789C", "*0#D")
_MIN_MEAN_SQUARE = 100.0**2  # quieter than this is line noise, not a key press
_MIN_SHARE = 0.08  # power / (energy * N); a clean equal-level two-tone pair gives ~0.25
_DOMINANCE = 4.0  # strongest tone vs the runner-up of its group
#: Zero crossings a window must have to be worth measuring. Passing the share test takes at least
#: ~66 samples of a (zero-mean) key's two tones, which cross zero 11 times or more (the fewest
#: seen in any detecting window: 14). Sandbox speech is samples of one sign with its text bytes of
#: the other: at most 2 crossings, so the callee, which hears every frame the assistant plays,
#: skips the eight tone measurements on speech (they were the sandbox Twilio's largest cost).
_MIN_CROSSINGS = 6


_SCALE = 32767.0


def _table(freq: float, phase: float) -> tuple[bytes, float]:
    """One reference tone as 16-bit PCM and its energy (for ``audioop.findfactor``)."""
    w = 2 * math.pi * freq / _RATE
    ref = [round(_SCALE * math.cos(w * n + phase)) for n in range(_WINDOW)]
    return array("h", ref).tobytes(), float(sum(v * v for v in ref))


# cos and sin references per DTMF frequency
_TABLES = [(_table(f, 0.0), _table(f, -math.pi / 2)) for f in _ROWS + _COLS]


def _dot(window: bytes, ref: tuple[bytes, float]) -> float:
    """sum(window * ref) / _SCALE in C: ``findfactor`` is sum(a*r) / sum(r*r).

    The callee runs this on every frame of the assistant's audio; the pure-Python dot products
    were two thirds of the sandbox Twilio process's CPU.
    """
    return audioop.findfactor(window, ref[0]) * ref[1] / _SCALE


def _powers(window: bytes, groups: slice) -> list[float]:
    out = []
    for cos_t, sin_t in _TABLES[groups]:
        re, im = _dot(window, cos_t), _dot(window, sin_t)
        out.append(re * re + im * im)
    return out


def _best(powers: list[float], energy: float) -> int | None:
    order = sorted(range(4), key=lambda i: powers[i], reverse=True)
    top, second = powers[order[0]], powers[order[1]]
    if top < _MIN_SHARE * energy * _WINDOW or top < _DOMINANCE * second:
        return None
    return order[0]


def _window_digit(window: bytes) -> str | None:
    """The key in one window of 16-bit PCM, if any."""
    energy = float(audioop.rms(window, 2)) ** 2 * _WINDOW
    if energy < _MIN_MEAN_SQUARE * _WINDOW:
        return None
    if audioop.cross(window, 2) < _MIN_CROSSINGS:
        return None  # cannot hold two tones (e.g. sandbox speech): skip the eight measurements
    row = _best(_powers(window, slice(0, 4)), energy)
    if row is None:  # speech: no need to look at the column tones
        return None
    col = _best(_powers(window, slice(4, 8)), energy)
    if col is None:
        return None
    return _KEYS[row][col]


class DtmfDetector:
    """Feed µ-law bytes in any chunking; get each detected key press once."""

    def __init__(self) -> None:
        self._pending = bytearray()  # 16-bit PCM not yet consumed by a window
        self._current: str | None = None

    def feed(self, mulaw: bytes) -> list[str]:
        """Consume ``mulaw`` and return the digits whose tones started being detected in it."""
        if not mulaw:
            return []
        self._pending += audioop.ulaw2lin(mulaw, 2)
        digits: list[str] = []
        start = 0
        span, hop = 2 * _WINDOW, 2 * _HOP
        while len(self._pending) - start >= span:
            digit = _window_digit(bytes(self._pending[start : start + span]))
            if digit is not None and digit != self._current:
                digits.append(digit)
            self._current = digit
            start += hop
        del self._pending[:start]
        return digits


def detect_digits(mulaw: bytes) -> str:
    """Detect every key press in a complete µ-law clip."""
    return "".join(DtmfDetector().feed(mulaw))
