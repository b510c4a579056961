"""Scripted callee: the business's receptionist at the other end of a sandbox Twilio call.

Why a script over audio time: the callee must behave the same whether a test runs the line at
four times real speed or a benchmark runs it in real time. :class:`Callee` is therefore a pure
state machine advanced one 20 ms frame at a time by the media-stream pump (``sandbox.twilio_call``):
it is told which bytes of the assistant's audio played in that frame and returns the 160 bytes it
says back. Everything (turn ends, timeouts, pauses) counts frames, never wall time.
"""

from __future__ import annotations

import math
import warnings
from array import array
from dataclasses import dataclass, field

from sandbox.dtmf import DtmfDetector
from sandbox.speech import SpeechDecoder, WordHeard, encode_speech, hold_music, is_silent

with warnings.catch_warnings():  # deprecated on 3.11/3.12; audioop-lts provides it on 3.13+
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FRAME_BYTES = 160
FRAME_SECONDS = 0.02
TURN_END_FRAMES = 20  # 400 ms of audio without assistant sound ends its turn
#: After "let me check" / "one moment" a receptionist waits for the answer instead of taking the
#: floor after 400 ms: the assistant's lookup (model rounds at real-world latency) is a pause
#: inside its turn.
HOLD_END_FRAMES = 250  # 5 s
_HOLD_ENDINGS = ("let me check", "one moment", "just a moment", "bear with me")
_SILENT_FRAME = b"\xff" * FRAME_BYTES


@dataclass(frozen=True)
class Say:
    """Speak ``text`` now (after the previous step); the next step starts once it was spoken."""

    text: str


@dataclass(frozen=True)
class WaitTurn:
    """Wait until the assistant finished a turn (400 ms of audio silence) containing ``contains``.

    Turns are consumed in order, so a turn finished while the callee was still talking counts too.
    """

    contains: str | None = None
    timeout: float = 20.0


@dataclass(frozen=True)
class Interrupt:
    """Barge in: once ``after_words`` words of the current assistant reply were heard, say ``text``."""

    after_words: int
    text: str


@dataclass(frozen=True)
class WaitDigits:
    """Wait until these DTMF digits were heard in the assistant's audio."""

    digits: str
    timeout: float = 20.0


@dataclass(frozen=True)
class Pause:
    """Stay silent (hold music is silence here)."""

    seconds: float


@dataclass(frozen=True)
class Music:
    """Play hold music (real audio that is not speech) for ``seconds``; next step once it played."""

    seconds: float


@dataclass(frozen=True)
class Press:
    """The callee presses keys on its phone: Twilio reports each as a ``dtmf`` stream event."""

    digits: str


@dataclass(frozen=True)
class HangUp:
    """The callee hangs up."""


@dataclass(frozen=True)
class Beep:
    """An answering machine's beep (a real sine tone, not speech); the machine records from its end.

    The words of the assistant heard after it are ``Callee.recorded``, and ``Callee.take_beeped``
    tells the stream when it ended (the moment Twilio's async AMD reports ``machine_end_beep``).
    """

    hz: float = 1000.0
    seconds: float = 0.5


def tone(hz: float, seconds: float, amplitude: int = 8000) -> bytes:
    """``seconds`` of a sine tone at ``hz``, 8 kHz µ-law (well below full scale: no speech markers)."""
    w = 2 * math.pi * hz / 8000
    pcm = array("h", (int(amplitude * math.sin(w * i)) for i in range(round(seconds * 8000))))
    return audioop.lin2ulaw(pcm.tobytes(), 2)


CalleeStep = Say | WaitTurn | Interrupt | WaitDigits | Pause | Music | Press | HangUp | Beep
_INTERRUPT_TIMEOUT = 20.0


@dataclass
class CalleeScript:
    """What the callee does, in order; when it runs out the callee stays silently on the line."""

    steps: list[CalleeStep] = field(default_factory=list)
    words_per_second: float = 3.0


class Callee:
    """Frame-by-frame callee state machine (pure; no I/O, no clock)."""

    def __init__(self, script: CalleeScript | None = None) -> None:
        self.script = script or CalleeScript()
        self.heard: list[str] = []  # assistant turns as heard (only fully played words)
        self.said: list[str] = []
        self.digits_heard = ""
        self.recorded: list[str] = []  # words heard after a Beep (what the machine recorded)
        self.recording = False
        self._beeped = False
        self.pressed: list[str] = []  # keys pressed and not yet reported on the stream (take_pressed)
        self.errors: list[str] = []
        self.frames = 0
        self.hung_up = False
        self._decoder = SpeechDecoder()
        self._dtmf = DtmfDetector()
        self._turns: list[str] = []  # completed assistant turns, including empty ones (tones only)
        self._turn_words: list[str] | None = None  # words of the turn in progress
        self._quiet_frames = 0
        self._turn_cursor = 0
        self._digit_cursor = 0
        self._out = bytearray()
        self._step = 0
        self._step_started: int | None = None
        self._barged_in = False

    @property
    def seconds(self) -> float:
        """Audio time elapsed on the line."""
        return self.frames * FRAME_SECONDS

    @property
    def speaking(self) -> bool:
        """True while the callee still has speech to send."""
        return bool(self._out)

    @property
    def hearing(self) -> str:
        """The words of the assistant turn still in progress, as heard so far ("" between turns)."""
        return " ".join(self._turn_words or [])

    @property
    def script_done(self) -> bool:
        return self._step >= len(self.script.steps)

    def hear_digits(self, digits: str) -> None:
        """Digits played through another route (e.g. ``<Play digits>`` TwiML)."""
        self.digits_heard += digits

    def take_beeped(self) -> bool:
        """True once, in the frame a ``Beep`` finished playing."""
        beeped, self._beeped = self._beeped, False
        return beeped

    def take_pressed(self) -> list[str]:
        """Keys pressed since the last call, for the stream to report as ``dtmf`` events."""
        keys, self.pressed = self.pressed, []
        return keys

    def tick(self, played: bytes) -> bytes | None:
        """Advance one frame.

        Args:
            played: the assistant's bytes that played during this frame (0-160; the rest was silence).

        Returns:
            The callee's 160-byte frame, or None when the callee hangs up.
        """
        self.frames += 1
        self._hear(played)
        if not self.hung_up:
            self._advance()
        if self.hung_up:
            return None
        frame = bytes(self._out[:FRAME_BYTES])
        del self._out[:FRAME_BYTES]
        return frame + _SILENT_FRAME[len(frame) :]

    def finish(self) -> None:
        """The call ended: a turn still in progress counts as heard as far as it played."""
        if self._turn_words is not None:
            self._close_turn()

    # ------------------------------------------------------------------ hearing

    def _hear(self, played: bytes) -> None:
        if played:
            for event in self._decoder.feed(played):
                if isinstance(event, WordHeard):
                    self._open_turn().append(event.word)
                    if self.recording:
                        self.recorded.append(event.word)
            self.digits_heard += "".join(self._dtmf.feed(played))
        if played and not is_silent(played):
            self._open_turn()
            self._quiet_frames = 0
        elif self._turn_words is not None:
            self._quiet_frames += 1
            if self._quiet_frames >= self._turn_end_frames():
                self._close_turn()

    def _turn_end_frames(self) -> int:
        said = " ".join(self._turn_words or []).lower().rstrip(".!?, ")
        return HOLD_END_FRAMES if said.endswith(_HOLD_ENDINGS) else TURN_END_FRAMES

    def _open_turn(self) -> list[str]:
        if self._turn_words is None:
            self._turn_words = []
            self._quiet_frames = 0
        return self._turn_words

    def _close_turn(self) -> None:
        text = " ".join(self._turn_words or [])
        self._turns.append(text)
        if text:
            self.heard.append(text)
        self._turn_words = None

    # ------------------------------------------------------------------ script

    def _say(self, text: str) -> None:
        self._out += encode_speech(text, words_per_second=self.script.words_per_second)
        self.said.append(text)

    def _check_timeout(self, limit: float, what: str) -> bool:
        """A scripted callee that does not hear what it expects hangs up (and says why in errors)."""
        assert self._step_started is not None
        if (self.frames - self._step_started) * FRAME_SECONDS >= limit:
            self.errors.append(f"timed out after {limit:g}s of audio waiting for {what}")
            self.hung_up = True
        return False

    def _advance(self) -> None:
        """Run steps until one has to wait for more audio."""
        while not self.hung_up and self._step < len(self.script.steps):
            step = self.script.steps[self._step]
            first = self._step_started is None
            if first:
                self._step_started = self.frames
            if not self._run(step, first):
                return
            self._step += 1
            self._step_started = None
            self._barged_in = False

    def _run(self, step: CalleeStep, first: bool) -> bool:
        """One step for this frame; True when it is complete."""
        if isinstance(step, Say):
            if first:
                self._say(step.text)
            return not self._out
        if isinstance(step, WaitTurn):
            while self._turn_cursor < len(self._turns):
                text = self._turns[self._turn_cursor]
                self._turn_cursor += 1
                if step.contains is None or step.contains.lower() in text.lower():
                    return True
            return self._check_timeout(step.timeout, f"a turn containing {step.contains!r}")
        if isinstance(step, Interrupt):
            if self._barged_in:  # wait until our words are out
                return not self._out
            words = self._turn_words
            if words is not None and len(words) >= step.after_words:
                self._say(step.text)
                self._turn_cursor = len(self._turns) + 1  # the interrupted turn is not an answer
                self._barged_in = True
                return not self._out
            return self._check_timeout(_INTERRUPT_TIMEOUT, f"{step.after_words} words to interrupt")
        if isinstance(step, WaitDigits):
            found = self.digits_heard.find(step.digits, self._digit_cursor)
            if found >= 0:
                self._digit_cursor = found + len(step.digits)
                return True
            return self._check_timeout(step.timeout, f"digits {step.digits!r}")
        if isinstance(step, Pause):
            assert self._step_started is not None
            return (self.frames - self._step_started) * FRAME_SECONDS >= step.seconds
        if isinstance(step, Beep):
            if first:
                self._out += tone(step.hz, step.seconds)
            if self._out:
                return False
            self.recording = self._beeped = True
            return True
        if isinstance(step, Music):
            if first:
                self._out += hold_music(step.seconds)
            return not self._out
        if isinstance(step, Press):
            self.pressed += list(step.digits)
            return True
        self.hung_up = True  # HangUp
        return True
