"""What the assistant sent to Twilio, and what Twilio confirmed the callee actually heard.

Audio goes out in pieces of at most ``PIECE_BYTES`` each followed by a
``mark``; Twilio echoes a mark only once the audio before it has played. So the
played position is known from echoes alone (no wall-clock guessing), to within
one piece. On barge-in the heard text is computed from those confirmed bytes,
conservatively: a word counts only if the confirmed bytes cover its whole share
of the clause (minus a safety margin), so history never claims unplayed words.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from storage.models import Speaker, Turn, TurnLatency
from telephony import media_stream

PIECE_BYTES = 1600  # 200 ms of µ-law per media message + mark
#: While at least this much sent audio is still unplayed at Twilio, TTS audio is held back until it
#: fills a whole piece (see ``Playback.take``).
LEAD_BYTES = 2 * PIECE_BYTES
#: Bytes of confirmed audio not credited to words (leading silence, rounding).
SAFETY_BYTES = 800


@dataclass(eq=False)
class AssistantTurn:
    """One assistant reply being produced and played (mutable, session-internal)."""

    at: float  # seconds since the stream started
    speech_end: float | None = None
    stt_final: float | None = None
    llm_first_token: float | None = None
    tts_first_byte: float | None = None
    first_audio_out: float | None = None
    clauses: list[Clause] = field(default_factory=list)
    reply_done: bool = False
    closed: bool = False
    cut: bool = False  # barge-in: settled by the session, not by playback

    def latency(self, barge_in_ms: float | None = None) -> TurnLatency:
        return TurnLatency(
            speech_end=self.speech_end,
            stt_final=self.stt_final,
            llm_first_token=self.llm_first_token,
            tts_first_byte=self.tts_first_byte,
            first_audio_out=self.first_audio_out,
            barge_in_ms=barge_in_ms,
        )

    @property
    def played_out(self) -> bool:
        return not self.cut and self.reply_done and all(c.done for c in self.clauses)

    def full_text(self) -> str:
        return " ".join(c.text for c in self.clauses if c.text)

    def heard_text(self) -> str:
        return " ".join(w for c in self.clauses for w in c.heard_words())

    def to_turn(self, *, interrupted: bool, barge_in_ms: float | None = None) -> Turn:
        text = self.heard_text() if interrupted else self.full_text()
        return Turn(
            Speaker.ASSISTANT, text, at=self.at, interrupted=interrupted, latency=self.latency(barge_in_ms)
        )


@dataclass(eq=False)
class Clause:
    """A piece of assistant audio: a spoken clause, or DTMF tones (``text`` empty)."""

    text: str
    turn: AssistantTurn
    sent: int = 0  # bytes written to Twilio
    played: int = 0  # bytes Twilio confirmed as played (mark echoes)
    flushed: bool = False  # all of its audio has been received from TTS
    cancelled: bool = False
    held: bytearray = field(default_factory=bytearray)  # received from TTS, not yet sent
    ready: bytes | None = None  # pre-rendered audio: played from here, never sent to TTS

    @property
    def done(self) -> bool:
        return self.cancelled or (self.flushed and self.played >= self.sent)

    def heard_words(self) -> list[str]:
        words = self.text.split()
        if not words or self.sent == 0:
            return []
        if self.flushed and self.played >= self.sent:
            return words
        if not self.flushed:
            return []  # total length unknown: claim nothing
        share = max(0, self.played - SAFETY_BYTES) / self.sent
        return words[: int(len(words) * share)]


class Playback:
    """Bookkeeping of one call's outbound audio (pure; the session does the I/O)."""

    def __init__(self, stream_sid: str) -> None:
        self.stream_sid = stream_sid
        self.tts_queue: deque[Clause] = deque()  # waiting for (more) TTS audio, in flush order
        self.open: list[Clause] = []  # not yet fully played
        self._marks: dict[str, tuple[Clause, int]] = {}
        self._names = (f"m{i}" for i in itertools.count(1))
        self.discarding = False  # stale TTS audio is still arriving after a clear

    def add_clause(self, text: str, turn: AssistantTurn, ready: bytes | None = None) -> Clause:
        """Queue a clause: its audio comes from TTS, or is ``ready`` (pre-rendered).

        A ready clause keeps its place in the queue: it plays once every clause before it has
        had all its TTS audio (``take_ready``).
        """
        clause = Clause(text, turn, ready=ready)
        turn.clauses.append(clause)
        self.tts_queue.append(clause)
        self.open.append(clause)
        return clause

    def add_tones(self, turn: AssistantTurn) -> Clause:
        clause = Clause("", turn, flushed=True)
        turn.clauses.append(clause)
        self.open.append(clause)
        return clause

    @property
    def tts_clause(self) -> Clause | None:
        """The clause the next TTS audio belongs to (None while discarding stale audio)."""
        if self.discarding or not self.tts_queue:
            return None
        return self.tts_queue[0]

    @property
    def tts_idle(self) -> bool:
        return not self.tts_queue

    @property
    def idle(self) -> bool:
        """Nothing is waiting for TTS, being sent, or unplayed."""
        return not self.open

    def take(self, clause: Clause, audio: bytes, *, final: bool = False) -> Iterator[tuple[str, str]]:
        """(media, mark) messages for TTS ``audio`` of ``clause`` that should go out now.

        A TTS streams faster than real time, in small chunks (800 bytes from the sandbox), and each
        chunk as its own media message and mark doubled the messages per second of speech: on a
        2-core machine the send calls were most of a call's cost while it talks. So audio waits
        until it fills a whole piece, but only while Twilio has ``LEAD_BYTES`` or more of this
        call's audio still to play: a clause's first audio, the end of a clause (``final``) and
        audio for a nearly drained line go out at once.
        """
        clause.held += audio
        if not final and clause.sent and self.unplayed() >= LEAD_BYTES:
            ready = len(clause.held) - len(clause.held) % PIECE_BYTES
        else:
            ready = len(clause.held)
        if not ready:
            return iter(())
        out = bytes(clause.held[:ready])
        del clause.held[:ready]
        return self.pieces(clause, out)

    def take_ready(self) -> list[tuple[Clause, list[tuple[str, str]]]]:
        """Pre-rendered clauses now at the head of the queue, with all their (media, mark) messages.

        They leave the TTS queue at once (counted as sent and flushed), so TTS audio that arrives
        while they are being sent belongs to the clause after them; the caller sends the messages
        in order before anything of a later clause (``ReplyRunner`` holds its output lock).
        """
        out: list[tuple[Clause, list[tuple[str, str]]]] = []
        while self.tts_queue and self.tts_queue[0].ready is not None:
            clause = self.tts_queue.popleft()
            audio, clause.ready = clause.ready or b"", None
            out.append((clause, list(self.pieces(clause, audio))))
            clause.flushed = True
        return out

    def unplayed(self) -> int:
        """Bytes sent to Twilio that it has not confirmed as played (to within one piece)."""
        return sum(c.sent - c.played for c in self.open if not c.cancelled)

    def pieces(self, clause: Clause, audio: bytes) -> Iterator[tuple[str, str]]:
        """(media message, mark message) pairs for ``audio``; stops if the clause is cancelled."""
        for i in range(0, len(audio), PIECE_BYTES):
            if clause.cancelled:
                return
            piece = audio[i : i + PIECE_BYTES]
            clause.sent += len(piece)
            name = next(self._names)
            self._marks[name] = (clause, clause.sent)
            yield media_stream.media_msg(self.stream_sid, piece), media_stream.mark_msg(self.stream_sid, name)

    def on_flushed(self) -> Clause | None:
        """TTS delivered the head clause completely."""
        if self.discarding or not self.tts_queue:
            return None
        clause = self.tts_queue.popleft()
        clause.flushed = True
        return self._settle(clause)

    def on_cleared(self) -> None:
        """TTS confirmed the clear: audio from now on belongs to new clauses."""
        self.discarding = False

    def on_mark(self, name: str) -> Clause | None:
        """A mark came back; returns the clause if it is now fully played."""
        entry = self._marks.pop(name, None)
        if entry is None:
            return None  # unknown, or echoed by a clear (never played)
        clause, position = entry
        clause.played = max(clause.played, position)
        return self._settle(clause)

    def _settle(self, clause: Clause) -> Clause | None:
        if clause.done and clause in self.open:
            self.open.remove(clause)
            return clause
        return None

    def clear(self) -> list[AssistantTurn]:
        """Barge-in: forget unplayed audio. Returns the turns that were cut off."""
        turns: list[AssistantTurn] = []
        for clause in self.open:
            if clause.turn not in turns:
                turns.append(clause.turn)
        for turn in turns:
            turn.cut = True
        for clause in self.open:
            clause.cancelled = True
        self.discarding = bool(self.tts_queue)
        self.tts_queue.clear()
        self.open.clear()
        self._marks.clear()  # marks echoed by Twilio's clear were never played
        return turns
