"""The ear (``sandbox.ear``): per-turn gaps timed on the sandbox's own clock, fixed phrases skipped.

Driven frame by frame with a fake clock, the way the media pump drives it: the callee's frames
going out, the app's audio messages coming in.
"""

from __future__ import annotations

from sandbox.callee import FRAME_BYTES
from sandbox.ear import Ear, HeardTurn
from sandbox.speech import encode_speech, silence

SILENT = silence(0.02)
DISCLOSURE = "Hi, this is Ava, an AI assistant calling on behalf of Alex Doe."


class Line:
    """A call line on a fake clock: the callee speaks frames, the app sends audio."""

    def __init__(self) -> None:
        self.now = 100.0
        self.ear = Ear(clock=lambda: self.now)

    def callee_says(self, text: str, *, over: bytes = b"") -> float:
        """Send ``text`` frame by frame, then one silent frame; returns when the last voiced one went."""
        audio = encode_speech(text)
        for i in range(0, len(audio), FRAME_BYTES):
            frame = audio[i : i + FRAME_BYTES].ljust(FRAME_BYTES, b"\xff")
            self.ear.callee_frame(frame, played=over if i == 0 else b"", said=text)
            last = self.now
            self.now += 0.02
        self.quiet(0.02)
        return last

    def quiet(self, seconds: float) -> None:
        for _ in range(round(seconds / 0.02)):
            self.ear.callee_frame(SILENT)
            self.now += 0.02

    def app_sends(self, text: str, *, chunk: int = 800, every: float = 0.01) -> None:
        audio = encode_speech(text)
        for i in range(0, len(audio), chunk):
            self.ear.assistant_audio(audio[i : i + chunk])
            self.now += every


def test_opening_gap_and_content_after_the_disclosure() -> None:
    line = Line()
    last_voiced = line.callee_says("Joe's Barbershop, how can I help you?")
    line.now += 0.3  # the app's silence
    first = line.now
    line.app_sends(f"{DISCLOSURE} I'd like to book a haircut.")
    line.ear.finish()
    [turn] = line.ear.turns
    assert turn.kind == "opening"
    assert turn.gap_ms == round((first - last_voiced) * 1000, 3)
    # 13 disclosure words of 2,667 bytes each arrive in 800-byte chunks every 10 ms: the content's
    # first byte came with chunk 43 (byte 34,671 of the reply), 430 ms after the first.
    assert turn.content_gap_ms is not None
    assert turn.content_gap_ms == round((first + 0.43 - last_voiced) * 1000, 3)


def test_fillers_are_not_content_and_a_time_offer_makes_a_tool_turn() -> None:
    line = Line()
    line.callee_says("Hello?")
    line.app_sends(f"{DISCLOSURE} Hello.")
    line.quiet(0.5)
    end = line.callee_says("How about Wednesday at 3:30 PM?")
    line.now += 0.1
    gap = round((line.now - end) * 1000, 3)
    line.app_sends("Let me check.")
    line.quiet(1.0)
    content_at = line.now
    line.app_sends("That works, book it please.")
    line.ear.finish()
    tool = line.ear.turns[1]
    assert tool.kind == "tool"
    assert tool.gap_ms == gap
    assert tool.content_gap_ms == round((content_at - end) * 1000, 3)


def test_barge_in_turn_and_a_cut_disclosure_is_no_content() -> None:
    line = Line()
    line.callee_says("Hello?")
    words = encode_speech(DISCLOSURE)
    line.ear.assistant_audio(words[:8000])  # three words of the disclosure
    end = line.callee_says("Sorry, who is calling?", over=words[:FRAME_BYTES])
    line.now += 0.18
    gap = round((line.now - end) * 1000, 3)
    line.app_sends(DISCLOSURE)  # said again whole, then the callee hangs up
    line.ear.finish()
    opening, barge = line.ear.turns
    assert opening.kind == "opening" and opening.content_gap_ms is None  # cut: never got to content
    assert barge.kind == "barge_in" and barge.content_gap_ms is None
    assert barge.gap_ms == gap


def test_unanswered_utterance_leaves_no_turn_and_speaking_again_restarts_the_wait() -> None:
    line = Line()
    line.callee_says("Hello?")
    line.quiet(1.0)
    end = line.callee_says("Anyone there?")
    line.now += 0.05
    gap = round((line.now - end) * 1000, 3)
    line.app_sends("Yes, hello.")
    line.callee_says("Thanks, bye.")  # never answered
    line.ear.finish()
    assert line.ear.turns == [HeardTurn("opening", gap, gap)]
