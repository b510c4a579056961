"""Per-call caps that bound what one callee (or a looping model) can make a call do.

A call that reaches a cap ends politely with a FAILED outcome whose summary names the cap: it is
not retried, because the next call would hit the same loop.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CallLimits:
    """Caps for one call (``concierge.settings``: ``MAX_TURNS_PER_CALL`` and friends).

    Attributes:
        max_turns: caller inputs (callee utterances, silences, digits) the agent answers.
        max_tool_calls_per_round: tool calls in one model answer.
        max_tool_calls: tool calls in the whole call.
        max_dtmf_presses: keys pressed on phone menus in the whole call.
    """

    max_turns: int = 40
    max_tool_calls_per_round: int = 4
    max_tool_calls: int = 30
    max_dtmf_presses: int = 24
