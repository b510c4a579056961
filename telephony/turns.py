"""The call transcript as it happens: callee utterances and assistant turns, in order.

Assistant turns are recorded when they are settled — fully played, or cut off
by barge-in (then only the heard part is kept) — never when the text was
merely generated, so the transcript matches what the callee heard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from storage.models import Turn
from telephony.playback import AssistantTurn
from telephony.speech import Listener, PhraseCache, Speaker


class HangUpper(Protocol):
    async def hang_up(self, call_sid: str) -> None: ...


class SpeechFactory(Protocol):
    phrases: PhraseCache

    def listener(self) -> Listener: ...
    def speaker(self) -> Speaker: ...


@dataclass(frozen=True)
class SessionConfig:
    """Conversation timing (seconds)."""

    silence_timeout: float = 8.0
    #: On hold (the agent agreed to wait), how long the line is kept without the callee's voice.
    hold_max: float = 300.0
    max_call_seconds: float = 600.0
    greet_after: float = 1.5
    attach_timeout: float = 120.0  # ringing + answering, until the media stream connects
    drain_timeout: float = 30.0  # waiting for queued audio to play before hanging up
    #: After a reply's first clause goes to TTS, the rest of the reply (later clauses, a tool round)
    #: waits until that clause's first audio is on its way to Twilio, for at most this long: the
    #: first words are what the callee is waiting for, and the rest is not needed until they have
    #: played (``telephony.replies``).
    first_audio_priority: float = 0.05


class TurnLog:
    """Collects ``Turn``s of one call; ``at`` is seconds since the media stream started."""

    def __init__(self) -> None:
        self.started_at: float | None = None
        self._turns: list[Turn] = []
        self._open: list[AssistantTurn] = []

    def since_start(self, t: float) -> float:
        return 0.0 if self.started_at is None else max(0.0, t - self.started_at)

    def add(self, turn: Turn) -> None:
        self._turns.append(turn)

    def open(self, at: float) -> AssistantTurn:
        turn = AssistantTurn(at=at)
        self._open.append(turn)
        return turn

    def open_turns(self) -> list[AssistantTurn]:
        return [t for t in self._open if not t.closed]

    def close(self, turn: AssistantTurn, *, interrupted: bool, barge_in_ms: float | None = None) -> None:
        """Record ``turn`` once (heard part only when ``interrupted``)."""
        if turn.closed:
            return
        turn.closed = True
        if turn in self._open:
            self._open.remove(turn)
        record = turn.to_turn(interrupted=interrupted, barge_in_ms=barge_in_ms)
        if record.text or interrupted and turn.clauses:
            self._turns.append(record)

    def turns(self) -> list[Turn]:
        """The transcript in spoken order (by start time; stable for ties)."""
        return sorted(self._turns, key=lambda t: t.at)


class Timers:
    """When to greet, prompt a silent callee, or give up — in audio seconds (pure).

    Audio time (bytes received from Twilio) runs at wall speed on a real call and
    faster in a sandbox replay, so timing behaviour never depends on replay speed.
    """

    def __init__(self, *, greet_after: float, silence_timeout: float, hold_max: float = 300.0) -> None:
        self.greet_after = greet_after
        self.silence_timeout = silence_timeout
        self.hold_max = hold_max
        #: Audio time the call went on hold, or None. On hold nobody is prompted and silence (or
        #: music) ends nothing until ``hold_max``; the callee's next words end the hold.
        self.on_hold_since: float | None = None
        self.greeted = False
        self.callee_spoke = False
        self.last_callee_activity = 0.0
        self.idle_since = 0.0
        self.silence_prompted = False

    def callee_active(self, now: float) -> None:
        self.callee_spoke = True
        self.silence_prompted = False
        self.last_callee_activity = now

    def hold(self, now: float) -> None:
        """The call is on hold from ``now``: the silence prompt and give-up wait for the callee."""
        self.on_hold_since = now

    def resume(self, now: float) -> None:
        """The callee spoke: the hold is over and silence counts from ``now`` again."""
        self.on_hold_since = None
        self.callee_active(now)

    def due(self, now: float) -> str | None:
        """Call while the assistant is idle: "greet", "prompt" (with ``quiet``), "give_up",
        "hold_over" (on hold for ``hold_max``) or None."""
        if self.on_hold_since is not None:
            return "hold_over" if now - self.on_hold_since >= self.hold_max else None
        if not self.greeted and not self.callee_spoke:
            if now >= self.greet_after:
                self.greeted = True
                return "greet"
            return None
        if self.quiet(now) >= self.silence_timeout:
            if not self.silence_prompted:
                self.silence_prompted = True
                return "prompt"
            return "give_up"
        return None

    def quiet(self, now: float) -> float:
        return now - max(self.last_callee_activity, self.idle_since)
