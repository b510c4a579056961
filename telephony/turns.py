"""The call transcript as it happens: callee utterances and assistant turns, in order.

Assistant turns are recorded when they are settled — fully played, or cut off
by barge-in (then only the heard part is kept) — never when the text was
merely generated, so the transcript matches what the callee heard.
"""

from __future__ import annotations

from storage.models import Turn
from telephony.playback import AssistantTurn


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
