"""The ear: how long the callee waits, measured at the phone, on the sandbox's own clock.

Why outside the product: the product's own turn timestamps say when *it* thinks it answered; a
caller hears the silence between the end of their sentence and the assistant's first sound, and
then how long until the assistant says something of substance. The sandbox Twilio sees both ends
of the line, so it measures them itself (``time.monotonic`` of the sandbox process), and the same
ear can later listen to any other bot dialled through the sandbox.

Per turn (``HeardTurn``):

- ``gap_ms``: the callee's **last voiced frame sent** → the **first non-silent assistant audio
  received** (a media message whose payload is not all µ-law silence).
- ``content_gap_ms``: the same start → the receipt of the first audio of the first word of the
  assistant's *own* words. Fixed phrases are not content: the product's disclosure sentence
  (``Hi, this is NAME, an AI assistant calling on behalf of PERSON.`` and the optional
  ``This call is transcribed for PERSON.``) and fillers / acknowledgements (``FIXED_PHRASES``:
  "One moment, please.", "Let me check.", "Sure.", ...). The rule works on sentences as decoded
  from the received audio (``sandbox.speech`` carries the words in the µ-law): a sentence whose
  words, lower-cased and without punctuation, equal a fixed phrase or match the disclosure is
  skipped; the first other sentence is content, timed at its first word's first byte. A sentence
  still open when the turn ends counts as content unless it is the beginning of a fixed phrase
  (a disclosure cut off by a barge-in is not content). ``None``: the turn had no content.
  Receipt, not playback: content queued behind a fixed phrase is heard only once that phrase has
  played (its length depends on the voice's speaking rate), but it was delivered, and so a faster
  pipeline can no longer improve it.

Turn kinds, decided when the callee's utterance starts/ends (never from the product's records):

- ``opening``: no assistant audio was received in this call before (the reply to the greeting);
- ``barge_in``: the callee's utterance began while assistant audio was still being played to it;
- ``tool``: the callee's utterance offered a time ("... at 3:30 PM", "noon"): an assistant cannot
  accept or refuse it without a calendar lookup, so its reply waits for one (the sandbox phone
  model calls ``check_availability`` exactly then);
- ``answer``: anything else.

A callee that speaks again before any assistant audio restarts the wait from its new last frame;
an utterance the assistant never answers (the call ends) leaves no turn.
"""

from __future__ import annotations

import bisect
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from sandbox.speech import SpeechDecoder, VoiceStart, WordHeard, is_silent

KINDS = ("opening", "answer", "tool", "barge_in")

#: Fillers and acknowledgements (lower case, no punctuation): what a voice agent says to hold the
#: floor, not an answer. Our product's retry filler and lookup acknowledgement are among them.
FIXED_PHRASES = frozenset({
    "one moment please", "one moment", "just a moment", "just a second", "one second",
    "let me check", "let me check that", "let me see", "let me look", "sure let me check",
    "sure", "okay", "ok", "alright", "all right", "got it", "mm-hmm", "uh-huh", "right",
    "sure one moment", "okay let me check", "thanks", "thank you",
})  # fmt: skip
_DISCLOSURE = (
    re.compile(r"^hi this is .+ an ai assistant calling on behalf of .+$"),
    re.compile(r"^this call is transcribed for .+$"),
)
_DISCLOSURE_START = ("hi", "this", "is")
_TIME_OFFER = re.compile(r"\b\d{1,2}(?::\d{2})?\s*(?:a\.?\s?m\b|p\.?\s?m\b)|\bnoon\b", re.I)
_SENTENCE_END = (".", "!", "?")


def _norm(words: Iterable[str]) -> str:
    return " ".join(re.sub(r"[^\w'-]", "", w.lower()) for w in words).strip()


@dataclass(frozen=True)
class HeardTurn:
    """One assistant turn as the callee heard it (times in ms of the sandbox's monotonic clock)."""

    kind: str
    gap_ms: float
    content_gap_ms: float | None
    #: the two ends of ``gap_ms`` on the ear's clock (``time.monotonic`` by default: one clock for
    #: every process of the machine), so a bench can line them up with the product's own marks
    end_at: float | None = field(default=None, compare=False)
    first_at: float | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Ear:
    """Listens to one call's line: told every frame the callee sends and every audio message it
    receives, it records ``turns``.

    Args:
        clock: seconds, monotonic (the sandbox process's own; tests pass a fake one).
        fixed_phrases: sentences that are not content (see the module docstring); a peer bot
            with other fillers passes its own.
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, fixed_phrases: Iterable[str] = FIXED_PHRASES
    ) -> None:
        self.clock = clock
        self.fixed = frozenset(_norm(p.split()) for p in fixed_phrases)
        self.turns: list[HeardTurn] = []
        self._voiced = False  # the callee's previous frame carried voice
        self._overlapped = False  # the callee's current utterance began over assistant audio
        self._heard_assistant = False  # any assistant audio received in this call
        # The turn being timed: callee's last voiced frame, its kind, then the reply's first audio.
        self._end: float | None = None
        self._kind = "answer"
        self._first: float | None = None
        self._decoder = SpeechDecoder()
        self._chunk_offsets: list[int] = []
        self._chunk_times: list[float] = []
        self._word_start = 0
        self._sentence: list[str] = []
        self._sentence_at: float | None = None

    # -- the callee's side -----------------------------------------------------------------------

    def callee_frame(self, frame: bytes, *, played: bytes = b"", said: str = "") -> None:
        """The callee's frame was just sent.

        Args:
            frame: its 160 bytes.
            played: the assistant audio played to the callee during this frame.
            said: the callee's latest scripted words (what this utterance said), for the kind.
        """
        voiced = not is_silent(frame)
        if voiced:
            if not self._voiced:  # an utterance starts: the turn being timed is over
                self._close()
                self._overlapped = bool(played) and not is_silent(played)
            self._end = self.clock()  # the last voiced frame so far: the wait starts after it
            self._kind = self._kind_of(said)
            self._first = None
        self._voiced = voiced

    def _kind_of(self, said: str) -> str:
        if not self._heard_assistant:
            return "opening"
        if self._overlapped:
            return "barge_in"
        if _TIME_OFFER.search(said):
            return "tool"
        return "answer"

    # -- the assistant's side --------------------------------------------------------------------

    def assistant_audio(self, audio: bytes) -> None:
        """An assistant media message was received (its decoded payload)."""
        if not self._heard_assistant and not is_silent(audio):
            self._heard_assistant = True  # even a reply we do not time (no wait open) ends the opening
        if self._end is None or self._voiced or not audio:
            return  # nothing to time (or the callee is talking over it)
        now = self.clock()
        if self._first is None:
            if is_silent(audio):
                return
            self._first = now
            self._decoder = SpeechDecoder()
            self._chunk_offsets, self._chunk_times = [], []
            self._word_start = 0
            self._sentence, self._sentence_at = [], None
        self._chunk_offsets.append(self._decoder.offset)
        self._chunk_times.append(now)
        for event in self._decoder.feed(audio):
            if isinstance(event, VoiceStart):
                self._word_start = event.offset
            elif isinstance(event, WordHeard):
                if self._word(event.word):
                    return  # recorded: the rest of this reply is not timed
                self._word_start = event.offset

    def _word(self, word: str) -> bool:
        """Add a decoded word; True once the content was found (and the turn recorded)."""
        if not self._sentence:
            i = bisect.bisect_right(self._chunk_offsets, self._word_start) - 1
            self._sentence_at = self._chunk_times[max(0, i)]
        self._sentence.append(word)
        if not word.endswith(_SENTENCE_END):
            return False
        if self._is_fixed(self._sentence):
            self._sentence, self._sentence_at = [], None
            return False
        self._record(self._sentence_at)
        return True

    def _is_fixed(self, words: list[str]) -> bool:
        text = _norm(words)
        return text in self.fixed or any(p.match(text) for p in _DISCLOSURE)

    def _fixed_prefix(self, words: list[str]) -> bool:
        text = _norm(words)
        if not text:
            return True
        head = tuple(text.split()[:3])
        if _DISCLOSURE_START[: len(head)] == head or text.startswith("this call is"):
            return True
        return any(p == text or p.startswith(text + " ") for p in self.fixed)

    def _record(self, content_at: float | None) -> None:
        assert self._end is not None and self._first is not None
        content = None if content_at is None else round((content_at - self._end) * 1000.0, 3)
        gap = round((self._first - self._end) * 1000.0, 3)
        self.turns.append(HeardTurn(self._kind, gap, content, end_at=self._end, first_at=self._first))
        self._end = self._first = None

    def _close(self) -> None:
        """The turn being timed ends (the callee speaks again, or the call ended)."""
        if self._end is None or self._first is None:
            self._end = None
            return
        partial = self._sentence
        self._record(None if self._fixed_prefix(partial) else self._sentence_at)

    def finish(self) -> None:
        """The call ended: a reply heard so far still counts."""
        self._close()

    def to_json(self) -> list[dict[str, Any]]:
        return [t.to_json() for t in self.turns]
