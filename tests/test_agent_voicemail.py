"""The voicemail message: built from the errand with no model round, the disclosure first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from factories import call_request, claude_agent

from agent.base import AgentAction, CalleeSaid, Hangup, MachineBeep, Say
from agent.conversation import ClaudeAgent, disclosure_sentence, voicemail_message
from agent.llm import build_anthropic
from agent.voicemail import spoken_number
from sandbox.anthropic import SandboxAnthropic
from storage.models import OutcomeKind

OUR_NUMBER = "+14155550199"


async def _no_wait(seconds: float) -> None:
    return None


@pytest.fixture
async def client(sandbox: SandboxAnthropic) -> AsyncIterator[Any]:
    c = build_anthropic(sandbox.api_key, sandbox.base_url)
    yield c
    await c.close()


async def run(agent: ClaudeAgent, event: Any) -> list[AgentAction]:
    return [a async for a in agent.reply(event)]


def spoken(actions: list[AgentAction]) -> str:
    return " ".join(a.text for a in actions if isinstance(a, Say))


def test_the_message_carries_disclosure_person_errand_and_number_in_that_order() -> None:
    message = voicemail_message(call_request(), OUR_NUMBER, "Robin")
    disclosure = disclosure_sentence("Robin", "Alex Doe", transcript_notice=False)
    assert message.startswith(disclosure)  # the disclosure-first rule holds on a machine too
    assert message.count("AI assistant") == 1
    rest = message.removeprefix(disclosure)
    assert "a haircut for Alex Doe" in rest
    assert "between Tuesday, December 1 and Friday, December 4" in rest
    assert "call us back at 4 1 5, 5 5 5, 0 1 9 9." in rest
    assert rest.endswith("goodbye.")
    assert len(message.split()) < 70  # short: one breath of a voicemail, not a conversation


@pytest.mark.parametrize(
    ("number", "callee", "words"),
    [
        ("+14155550199", "+14155550100", "4 1 5, 5 5 5, 0 1 9 9"),  # same country: as dialled at home
        ("+14155550199", "+442079460958", "plus 1, 4 1 5, 5 5 5, 0 1 9 9"),  # abroad: with the country
        ("+442079460958", "+442079460000", "0 2 0, 7 9 4 6, 0 9 5 8"),
        ("not a number", None, ""),
    ],
)
def test_the_number_is_read_digit_by_digit(number: str, callee: str | None, words: str) -> None:
    assert spoken_number(number, callee_phone=callee) == words
    assert all(len(word.strip(",")) == 1 for word in words.split() if word != "plus")


async def test_the_beep_gets_the_fixed_message_and_a_hang_up_without_the_model(
    sandbox: SandboxAnthropic, client: Any
) -> None:
    agent = claude_agent(client, sleep=_no_wait, fixed_opening=True, callback_number=OUR_NUMBER)
    assert agent.voicemail is not None and agent.voicemail in agent.fixed_phrases()  # rendered while ringing
    # the opening was said over the greeting; the machine records only from its beep
    greeted = await run(agent, CalleeSaid("You have reached Joe's Barbershop."))
    assert spoken(greeted).startswith(agent.disclosure)
    actions = await run(agent, MachineBeep())
    assert spoken(actions) == f"{agent.disclosure} {agent.voicemail}"
    assert spoken(actions) == voicemail_message(call_request(), OUR_NUMBER, "Robin", transcript_notice=True)
    hangup = actions[-1]
    assert isinstance(hangup, Hangup) and hangup.outcome.kind is OutcomeKind.VOICEMAIL
    assert hangup.outcome.kind.retryable and "left a voicemail" in hangup.outcome.summary
    assert agent.outcome() == hangup.outcome
    assert sandbox.requests == []  # no model round
    assert await run(agent, CalleeSaid("hello?")) == []  # nothing after the goodbye
    await agent.aclose()


async def test_without_a_callback_number_the_beep_only_hangs_up(
    sandbox: SandboxAnthropic, client: Any
) -> None:
    agent = claude_agent(client, sleep=_no_wait)
    assert agent.voicemail is None
    actions = await run(agent, MachineBeep())
    assert len(actions) == 1 and isinstance(actions[0], Hangup)
    assert actions[0].outcome.kind is OutcomeKind.VOICEMAIL and "no message" in actions[0].outcome.summary
    assert sandbox.requests == []
    await agent.aclose()


def test_a_number_that_cannot_be_read_is_left_out_rather_than_said_empty() -> None:
    message = voicemail_message(call_request(), "unknown", "Robin")
    assert "call us back" not in message and "try again later" in message
