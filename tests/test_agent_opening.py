"""ClaudeAgent's fixed opening (no model round) and its pre-rendered acknowledgements.

The real Anthropic SDK against ``sandbox.anthropic`` (its phone model): what the model is asked is
read from the sandbox's recorded requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from factories import call_request, claude_agent

from agent.base import AgentAction, CallConnected, CalleeSaid, Say, SendDigits
from agent.conversation import ACKS, ClaudeAgent, opening_line
from agent.llm import build_anthropic
from agent.prompts import ACK_SAID
from sandbox.anthropic import SandboxAnthropic


async def _no_wait(seconds: float) -> None:
    return None


@pytest.fixture
async def agent(sandbox: SandboxAnthropic) -> AsyncIterator[ClaudeAgent]:
    client = build_anthropic(sandbox.api_key, sandbox.base_url)
    a = claude_agent(client, sleep=_no_wait, fixed_opening=True, acknowledgements=True)
    yield a
    await a.aclose()
    await client.close()


async def run(agent: ClaudeAgent, event: Any) -> list[AgentAction]:
    return [a async for a in agent.reply(event)]


def texts(actions: list[AgentAction]) -> list[str]:
    return [a.text for a in actions if isinstance(a, Say)]


def test_the_opening_line_states_the_errand_from_the_request() -> None:
    line = opening_line(call_request())
    assert line.startswith("I'd like to book a haircut, ")
    assert line.endswith("Do you have anything available?")


async def test_the_greeting_is_answered_with_the_fixed_opening_without_the_model(
    sandbox: SandboxAnthropic, agent: ClaudeAgent
) -> None:
    assert agent.fixed_phrases()[:2] == (agent.disclosure, agent.opening)
    agent.prepare(CalleeSaid("Joe's Barbershop, how can I help?"))  # no early request for it either
    actions = await run(agent, CalleeSaid("Joe's Barbershop, how can I help?"))
    assert texts(actions) == [agent.disclosure, agent.opening]  # the disclosure is still first
    assert sandbox.requests == []
    assert agent.prepared_counts().started == 0
    # the model takes over from the callee's answer, knowing what was said
    await run(agent, CalleeSaid("Sure, what day works?"))
    sent = sandbox.requests[0]["messages"]
    said = f"{agent.disclosure} {agent.opening}"
    assert sent[1] == {"role": "assistant", "content": [{"type": "text", "text": said}]}
    assert sent[-1]["content"][-1]["text"] == "Sure, what day works?"


async def test_the_greet_timer_also_gets_the_fixed_opening(
    sandbox: SandboxAnthropic, agent: ClaudeAgent
) -> None:
    assert texts(await run(agent, CallConnected())) == [agent.disclosure, agent.opening]
    assert sandbox.requests == []


async def test_an_opening_cut_before_the_disclosure_was_heard_is_said_again_whole(
    sandbox: SandboxAnthropic, agent: ClaudeAgent
) -> None:
    await run(agent, CalleeSaid("Hello?"))
    agent.interrupted("Hi, this is Robin,")
    assert texts(await run(agent, CalleeSaid("Sorry, who is calling?"))) == [agent.disclosure, agent.opening]
    assert sandbox.requests == []
    # heard this time: the next answer is the model's, with no disclosure before it
    actions = await run(agent, CalleeSaid("Sorry, what was that?"))
    assert len(sandbox.requests) == 1 and agent.disclosure not in texts(actions)


async def test_a_phone_menu_is_the_models_to_answer_and_the_opening_follows_the_human(
    sandbox: SandboxAnthropic, agent: ClaudeAgent
) -> None:
    actions = await run(agent, CalleeSaid("For appointments, press 1. For opening hours, press 2."))
    assert actions == [SendDigits("1")]  # keys only: nothing said, so nothing disclosed yet
    asked = len(sandbox.requests)  # the keys, then the model's (empty) answer to their result
    assert texts(await run(agent, CalleeSaid("Front desk, hello?"))) == [agent.disclosure, agent.opening]
    assert len(sandbox.requests) == asked


async def test_a_request_to_hold_is_answered_by_the_model_after_the_disclosure(
    sandbox: SandboxAnthropic, agent: ClaudeAgent
) -> None:
    said = texts(await run(agent, CalleeSaid("Joe's Barbershop, please hold.")))
    assert said == [agent.disclosure, "Sure, I'll hold."]
    assert len(sandbox.requests) == 1


async def test_a_lookup_starts_with_one_acknowledgement_that_history_keeps(
    sandbox: SandboxAnthropic, agent: ClaudeAgent
) -> None:
    await run(agent, CalleeSaid("Hello, Joe's."))
    actions = await run(agent, CalleeSaid("We could do 12/3 at 3pm."))
    said = texts(actions)
    assert said[0] == ACKS["check_availability"] and said.count(ACKS["check_availability"]) == 1
    assert ACKS["confirm_booking"] not in said  # one acknowledgement per reply, not per tool round
    assert actions[0] == Say(ACKS["check_availability"], actions[0].first_token_at)
    assert actions[0].first_token_at is not None  # it starts the turn: the latency record needs it
    system = sandbox.requests[0]["system"]
    assert ACK_SAID in (system if isinstance(system, str) else system[0]["text"])
    # the model's next request shows the acknowledgement as said, before its tool call
    lookup = sandbox.requests[1]["messages"][-2]
    assert lookup["role"] == "assistant" and lookup["content"][0] == {"type": "text", "text": "Let me check."}
    assert lookup["content"][1]["type"] == "tool_use"


async def test_without_acknowledgements_the_model_says_its_own_words(sandbox: SandboxAnthropic) -> None:
    client = build_anthropic(sandbox.api_key, sandbox.base_url)
    agent = claude_agent(client, sleep=_no_wait)
    try:
        await run(agent, CallConnected())
        said = texts(await run(agent, CalleeSaid("We could do 12/3 at 3pm.")))
        assert said.count("Let me check.") == 1  # the model's, as the prompt asks
        assert ACK_SAID not in sandbox.requests[0]["system"][0]["text"]
    finally:
        await agent.aclose()
        await client.close()


async def test_discarded_early_requests_are_counted(sandbox: SandboxAnthropic, agent: ClaudeAgent) -> None:
    await run(agent, CalleeSaid("Hello, Joe's."))
    agent.prepare(CalleeSaid("We could do"))
    agent.discard_prepared()  # Flux TurnResumed
    agent.prepare(CalleeSaid("We could do 12/3 at 3pm."))
    await asyncio.sleep(0)
    await run(agent, CalleeSaid("We could do 12/3 at 3pm."))  # the second one is used
    counts = agent.prepared_counts()
    assert (counts.started, counts.discarded) == (2, 1)


async def test_an_offered_time_is_acknowledged_before_the_model_has_answered(
    sandbox: SandboxAnthropic, agent: ClaudeAgent
) -> None:
    await run(agent, CalleeSaid("Hello, Joe's."))
    sandbox.ttft_ms = 60_000  # the model would take a minute: the acknowledgement cannot wait for it
    reply = agent.reply(CalleeSaid("We could do 12/3 at 3pm."))
    first = await anext(reply)
    assert first == Say(ACKS["check_availability"], first.first_token_at)
    assert first.first_token_at is not None  # it starts the turn's latency record
    await reply.aclose()  # the callee spoke again while the model was still thinking
    agent.interrupted(ACKS["check_availability"])
    # history holds what was heard: the acknowledgement, and no tool call that never ran
    assert agent.messages[-1] == {"role": "assistant", "content": [{"type": "text", "text": "Let me check."}]}


async def test_words_without_a_time_get_no_acknowledgement_before_the_model(
    sandbox: SandboxAnthropic, agent: ClaudeAgent
) -> None:
    await run(agent, CalleeSaid("Hello, Joe's."))
    said = texts(await run(agent, CalleeSaid("What's the name for the booking?")))
    assert said and ACKS["check_availability"] not in said
