"""A model that stalls mid-answer: the read timeout turns it into a retry with a filler, not a dead line.

Focused on ``ClaudeAgent`` with the real SDK against the sandbox Messages API,
whose ``ttft_ms`` holds the stream open (after ``message_start`` and ``ping``)
without a byte — exactly what a stuck upstream looks like to the client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from factories import call_request

from agent.base import AgentAction, CallConnected, Hangup, Say
from agent.conversation import APOLOGY, ClaudeAgent
from agent.llm import MODEL_RETRY, build_anthropic
from sandbox.anthropic import SandboxAnthropic
from storage.models import OutcomeKind


class NoCalendar:
    async def busy(self, start: Any, end: Any) -> list[Any]:
        return []


async def collect(agent: ClaudeAgent) -> list[AgentAction]:
    async with aclosing(agent.reply(CallConnected())) as actions:  # type: ignore[type-var]
        return [a async for a in actions]


def make_agent(client: Any, sleep: Callable[[float], Awaitable[None]]) -> ClaudeAgent:
    return ClaudeAgent(
        client,
        model="claude-haiku-4-5",
        request=call_request(),
        calendar=NoCalendar(),
        assistant_name="Robin",
        sleep=sleep,
        retry=replace(MODEL_RETRY, max_attempts=3, base_delay=0.01),
    )


async def test_a_stalled_stream_is_retried_with_a_filler(sandbox: SandboxAnthropic) -> None:
    client = build_anthropic(sandbox.api_key, sandbox.base_url, read_timeout=0.3)
    waits: list[float] = []
    sandbox.ttft_ms = 2000  # stalls far past the 0.3 s read timeout

    async def unstall(seconds: float) -> None:  # the outage ends while we back off
        waits.append(seconds)
        sandbox.ttft_ms = 0

    agent = make_agent(client, unstall)
    try:
        actions = await collect(agent)
    finally:
        await client.close()
    said = [a.text for a in actions if isinstance(a, Say)]
    assert said[:2] == [agent.disclosure, "One moment, please."]  # the disclosure is never skipped
    assert not any(isinstance(a, Hangup) for a in actions)
    assert len(sandbox.requests) == 2 and len(waits) == 1


async def test_a_model_that_keeps_stalling_ends_the_call_politely(sandbox: SandboxAnthropic) -> None:
    client = build_anthropic(sandbox.api_key, sandbox.base_url, read_timeout=0.2)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    sandbox.ttft_ms = 1000
    agent = make_agent(client, sleep)
    try:
        actions = await collect(agent)
    finally:
        await client.close()
    said = [a.text for a in actions if isinstance(a, Say)]
    assert said == [agent.disclosure, "One moment, please.", APOLOGY]
    hangup = actions[-1]
    assert isinstance(hangup, Hangup) and hangup.outcome.kind is OutcomeKind.ERROR
    assert "AI assistant" in said[0]
    assert len(sandbox.requests) == 3
