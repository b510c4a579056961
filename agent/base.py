"""The interface between a live call (telephony) and whatever holds the conversation.

The call session feeds ``CallerInput`` events in and plays the ``AgentAction``s
that come out, streaming: the first ``Say`` clause is spoken while the model is
still writing the rest. On barge-in the session cancels the reply iterator and
tells the agent exactly what the callee heard, so history never claims the
callee heard words that were never played.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from storage.models import CallOutcome, Job


@dataclass(frozen=True)
class CallConnected:
    """The call was answered and nobody has spoken for a moment: greet first."""


@dataclass(frozen=True)
class CalleeSaid:
    """A final transcript of what the callee said (one utterance)."""

    text: str


@dataclass(frozen=True)
class DigitsHeard:
    """DTMF digits the callee side sent (rare; surfaced for completeness)."""

    digits: str


@dataclass(frozen=True)
class CalleeSilent:
    """The callee has said nothing for ``seconds``; the agent may prompt once."""

    seconds: float


@dataclass(frozen=True)
class MachineBeep:
    """An answering machine has beeped (Twilio's AMD): it records from now, and nobody answers.

    The agent leaves its fixed message (or nothing) and hangs up with a VOICEMAIL outcome.
    """


CallerInput = CallConnected | CalleeSaid | DigitsHeard | CalleeSilent | MachineBeep


@dataclass(frozen=True)
class Say:
    """A clause to speak now. ``first_token_at`` (``time.monotonic``) is set on the
    first clause of a reply, for the per-turn latency record."""

    text: str
    first_token_at: float | None = None


@dataclass(frozen=True)
class SendDigits:
    """Press keys on the phone menu (DTMF)."""

    digits: str


@dataclass(frozen=True)
class Hangup:
    """End the call once everything said so far has been played."""

    outcome: CallOutcome


@dataclass(frozen=True)
class Hold:
    """The callee put the call on hold: wait silently for their voice (the session's hold mode)."""


AgentAction = Say | SendDigits | Hangup


@dataclass(frozen=True)
class PreparedCounts:
    """Early model requests of one call (``Agent.prepare``): how many started, how many thrown away."""

    started: int = 0
    discarded: int = 0


class Agent(ABC):
    """One conversation (one call). Not shared between calls.

    Agents subclass this: ``reply``, ``interrupted`` and ``outcome`` are theirs to write, while
    ``prepare``, ``answers_at_once``, ``discard_prepared``, ``aclose``, ``fixed_phrases`` and
    ``prepared_counts`` are
    inherited defaults that an agent overrides only if it starts work ahead of time, owns
    background work or says fixed words (``holds`` likewise, if it can wait on hold), so the
    session calls them all unconditionally.
    """

    @abstractmethod
    def reply(self, event: CallerInput) -> AsyncGenerator[AgentAction, None]:
        """Stream the answer to one caller input. May yield nothing.

        An async generator rather than any async iterator: the session closes it (``aclose``) when
        the reply ends early, so the agent's own clean-up runs at once, not whenever it is collected.
        """

    @abstractmethod
    def interrupted(self, heard: str) -> None:
        """The last reply was cut off by the callee; ``heard`` is what was played."""

    @abstractmethod
    def outcome(self) -> CallOutcome | None:
        """The result so far (e.g. booked once a slot was confirmed), or None."""

    @property
    def holds(self) -> int:
        """How many times the agent has agreed to hold so far; the session waits silently after each.

        A count rather than a flag, so the session notices each new hold once and alone decides
        when it ends (at the callee's next words), with no race against the agent's next reply.
        """
        return 0

    def prepare(self, event: CallerInput) -> None:  # noqa: B027  (a deliberate no-op default)
        """``event`` has probably ended the callee's turn (Flux eager end of turn): the agent may
        start working on its answer now, for a ``reply(event)`` that is likely to follow."""

    def answers_at_once(self, event: CallerInput) -> bool:
        """Would ``reply(event)`` say fixed words without any model round (the fixed opening)?

        Then the session may start that reply on a probable end of turn (Flux eager end of turn)
        instead of waiting for the final one, and cut it off if the callee goes on talking.
        """
        return False

    def discard_prepared(self) -> None:  # noqa: B027
        """The callee went on talking: whatever ``prepare`` started will not be used."""

    async def aclose(self) -> None:  # noqa: B027
        """The call is over: stop any background work the agent owns."""

    def fixed_phrases(self) -> tuple[str, ...]:
        """Clauses this agent will say word for word (its opening, acknowledgements), each as one
        ``Say``: the session renders their audio ahead of time, so they play without waiting for TTS."""
        return ()

    def prepared_counts(self) -> PreparedCounts:
        """How many ``prepare`` requests were started and thrown away so far (per-call metrics)."""
        return PreparedCounts()


AgentFactory = Callable[[Job], Agent]
