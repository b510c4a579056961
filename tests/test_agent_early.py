"""ClaudeAgent.prepare: the model started on an eager end of turn (the real SDK against sandbox.anthropic)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import pytest
from factories import FakeCalendar, claude_agent

from agent.base import AgentAction, CallConnected, CalleeSaid, Hangup, Say
from agent.conversation import ClaudeAgent
from agent.llm import build_anthropic
from sandbox.anthropic import SandboxAnthropic


async def _no_wait(seconds: float) -> None:
    return None


@pytest.fixture
async def agent(sandbox: SandboxAnthropic) -> AsyncIterator[ClaudeAgent]:
    client = build_anthropic(sandbox.api_key, sandbox.base_url)
    a = claude_agent(client, sleep=_no_wait)
    yield a
    await a.aclose()
    await client.close()


class _ReadToEnd(httpx2.AsyncByteStream):
    """A response body that sets ``done`` once the SDK has read its last byte."""

    def __init__(self, inner: httpx2.AsyncByteStream, done: asyncio.Event) -> None:
        self._inner = inner
        self._done = done

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk
        self._done.set()

    async def aclose(self) -> None:
        await self._inner.aclose()


class _WatchedTransport(httpx2.AsyncBaseTransport):
    """httpx's own transport, plus one ``read_to_end`` event per response (in request order)."""

    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self.read_to_end: list[asyncio.Event] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        # Listed when the request is sent, not when its answer starts: the sandbox records a
        # request as it arrives, and a test that saw it there may look for its event at once.
        done = asyncio.Event()
        self.read_to_end.append(done)
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_ReadToEnd(response.stream, done),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


async def run(agent: ClaudeAgent, event: Any) -> list[AgentAction]:
    return [a async for a in agent.reply(event)]


def says(actions: list[AgentAction]) -> str:
    return " ".join(a.text for a in actions if isinstance(a, Say))


async def requests_reach(sandbox: SandboxAnthropic, n: int) -> None:
    async with asyncio.timeout(5):
        while len(sandbox.requests) < n:  # noqa: ASYNC110  (the sandbox records, it does not notify)
            await asyncio.sleep(0.001)


async def test_the_reply_reads_the_prepared_answer_instead_of_asking_again(
    sandbox: SandboxAnthropic, agent: ClaudeAgent
) -> None:
    await run(agent, CallConnected())
    agent.prepare(CalleeSaid("Sorry, who is calling?"))
    await requests_reach(sandbox, 2)  # the request went out before the turn was final
    history_before = list(agent.messages)

    actions = await run(agent, CalleeSaid("Sorry, who is calling?"))

    assert len(sandbox.requests) == 2  # no second request for the same turn
    assert sandbox.requests[1]["messages"][-1]["content"][0]["text"] == "Sorry, who is calling?"
    assert says(actions) and isinstance(actions[0], Say) and actions[0].first_token_at is not None
    # the history moved on exactly as without preparation: the callee's words, then the answer
    assert agent.messages[: len(history_before)] == history_before
    assert agent.messages[-2]["content"] == [{"type": "text", "text": "Sorry, who is calling?"}]
    assert agent.messages[-1]["role"] == "assistant"


async def test_a_different_final_transcript_discards_the_prepared_answer(
    sandbox: SandboxAnthropic, agent: ClaudeAgent
) -> None:
    await run(agent, CallConnected())
    agent.prepare(CalleeSaid("Sorry, who"))
    await requests_reach(sandbox, 2)
    await run(agent, CalleeSaid("Sorry, who is calling?"))
    assert len(sandbox.requests) == 3
    assert sandbox.requests[2]["messages"][-1]["content"][0]["text"] == "Sorry, who is calling?"
    # the thrown-away guess left no trace in history
    assert "Sorry, who" not in [b.get("text") for m in agent.messages for b in m["content"]]


async def test_turn_resumed_discards_and_a_changed_history_is_not_reused(
    sandbox: SandboxAnthropic, agent: ClaudeAgent
) -> None:
    await run(agent, CallConnected())
    agent.prepare(CalleeSaid("Please hold."))
    agent.discard_prepared()
    await run(agent, CalleeSaid("Please hold."))
    assert sandbox.requests[-1]["messages"][-1]["content"][0]["text"] == "Please hold."
    asked = len(sandbox.requests)

    agent.prepare(CalleeSaid("Okay."))
    await requests_reach(sandbox, asked + 1)
    agent.interrupted("Sure,")  # history changed after the preparation: its request is stale
    await run(agent, CalleeSaid("Okay."))
    assert len(sandbox.requests) == asked + 2
    trimmed = sandbox.requests[-1]["messages"][-2]["content"]
    assert trimmed[0] == {"type": "text", "text": "Sure,"}
    assert [b["name"] for b in trimmed[1:]] == ["wait_on_hold"]  # the tool call stays, answered


async def test_a_prepared_request_that_failed_is_retried_like_any_other(
    sandbox: SandboxAnthropic, agent: ClaudeAgent
) -> None:
    sandbox.fail_next(529, "overloaded_error")
    agent.prepare(CallConnected())
    await requests_reach(sandbox, 1)
    actions = await run(agent, CallConnected())
    assert actions[:2] == [Say(agent.disclosure), Say("One moment, please.")]
    assert len(sandbox.requests) == 2


async def test_tools_of_a_prepared_answer_run_only_once_the_turn_is_final(sandbox: SandboxAnthropic) -> None:
    transport = _WatchedTransport()
    client = anthropic.AsyncAnthropic(
        api_key=sandbox.api_key,
        base_url=sandbox.base_url,
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport),
    )
    agent = claude_agent(client, sleep=_no_wait)
    try:
        calendar = agent.tools.calendar
        assert isinstance(calendar, FakeCalendar)
        await run(agent, CallConnected())
        agent.prepare(CalleeSaid("We could do 12/3 at 3pm."))
        await requests_reach(sandbox, 2)
        # The SDK has read the whole prepared answer (a check_availability call), event by event,
        # into the early round: a tool started from it would have asked the calendar by now.
        async with asyncio.timeout(5):
            await transport.read_to_end[1].wait()
        assert sandbox.requests[1]["messages"][-1]["content"][0]["text"] == "We could do 12/3 at 3pm."
        assert calendar.queries == []
        actions = await run(agent, CalleeSaid("We could do 12/3 at 3pm."))
        assert calendar.queries  # the lookup ran in the reply
        assert "December 3" in says(actions)
        assert isinstance(actions[-1], Hangup) and agent.tools.booking is not None  # a free slot: booked
    finally:
        await agent.aclose()
        await client.close()
