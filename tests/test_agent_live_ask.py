"""Asking the person live (``ask_person``): the real anthropic SDK against sandbox.anthropic (scripted)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from factories import claude_agent

from agent.base import AgentAction, CalleeSaid, Hangup, Say
from agent.conversation import STILL_CHECKING
from agent.llm import build_anthropic
from sandbox.anthropic import SandboxAnthropic
from storage.models import OutcomeKind

QUESTION = "Would Alex prefer the 30 or 60 minute cut?"


@pytest.fixture
async def client(sandbox: SandboxAnthropic) -> AsyncIterator[Any]:
    c = build_anthropic(sandbox.api_key, sandbox.base_url)
    yield c
    await c.close()


def scripted(*replies: list[dict[str, Any]]) -> Any:
    queue = list(replies)
    return lambda body: queue.pop(0)


def tool(name: str, **args: Any) -> dict[str, Any]:
    return {"type": "tool_use", "name": name, "input": args}


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


class Ticks:
    """A fake clock for the "still checking" cadence: the first ``free`` waits pass at once, the
    rest wait until cancelled (the answer came)."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if len(self.waits) > self.free:
            await asyncio.Event().wait()


class Person:
    """The chat side: records the question and answers when told to."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, tuple[str, ...]]] = []
        self.answer: asyncio.Future[str | None] | None = None
        self.cancelled = False
        self.waiting = asyncio.Event()

    async def __call__(self, question: str, options: Sequence[str]) -> str | None:
        self.asked.append((question, tuple(options)))
        self.answer = asyncio.get_running_loop().create_future()
        self.waiting.set()
        try:
            return await self.answer
        except asyncio.CancelledError:
            self.cancelled = True
            raise


def check_history(messages: list[dict[str, Any]]) -> None:
    for a, b in zip(messages, messages[1:], strict=False):
        assert a["role"] != b["role"]
    for i, m in enumerate(messages):
        for block in m["content"]:
            if block["type"] == "tool_use":
                assert block["id"] in [r.get("tool_use_id") for r in messages[i + 1]["content"]]


def says(actions: list[AgentAction]) -> list[str]:
    return [a.text for a in actions if isinstance(a, Say)]


async def test_the_answer_reaches_the_model_as_the_persons_and_the_line_is_kept_meanwhile(
    sandbox: SandboxAnthropic, client: Any
) -> None:
    sandbox.responder = scripted(
        [tool("ask_person", question=QUESTION, options="30 minutes|60 minutes")],
        [text("Thanks for waiting, Alex would like the 60 minute cut.")],
    )
    person, ticks = Person(), Ticks(free=1)
    agent = claude_agent(client, ask=person, sleep=ticks)
    got: list[AgentAction] = []
    async with asyncio.timeout(10):
        async for action in agent.reply(CalleeSaid(f"Sure. {QUESTION}")):
            got.append(action)
            if isinstance(action, Say) and action.text == STILL_CHECKING:
                assert person.answer is not None
                person.answer.set_result("60 minutes")
    # disclosure first, then the fixed "checking" line, one keep-alive, then the model goes on
    assert " | ".join(says(got)) == " | ".join(
        [
            agent.disclosure,
            "One moment, let me check with Alex.",
            STILL_CHECKING,
            "Thanks for waiting, | Alex would like the 60 minute cut.",
        ]
    )
    assert person.asked == [(QUESTION, ("30 minutes", "60 minutes"))]
    assert ticks.waits == [15.0, 15.0]
    result = sandbox.requests[-1]["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and not result.get("is_error")
    assert "ANSWER FROM ALEX" in result["content"] and "“60 minutes”" in result["content"]
    assert "not the callee's words" in result["content"]
    assert agent.outcome() is None
    check_history(agent.messages)


async def test_no_answer_in_time_ends_the_call_as_needs_user_with_the_question(
    sandbox: SandboxAnthropic, client: Any
) -> None:
    sandbox.responder = scripted([tool("ask_person", question=QUESTION, options="")])

    async def nobody(question: str, options: Sequence[str]) -> str | None:
        return None  # the app's timeout passed

    agent = claude_agent(client, ask=nobody, sleep=Ticks(free=0))
    actions = [a async for a in agent.reply(CalleeSaid(f"Sure. {QUESTION}"))]
    assert isinstance(actions[-1], Hangup)
    outcome = actions[-1].outcome
    assert outcome.kind is OutcomeKind.NEEDS_USER and outcome.question == QUESTION
    assert "I'll call you back with the answer" in " ".join(says(actions))
    assert len(sandbox.requests) == 1  # no model round after the timeout
    assert agent.messages[-1]["content"][0]["content"].endswith("they will be called back.")
    check_history(agent.messages)


async def test_the_callee_speaking_while_waiting_cancels_the_question_and_keeps_history_whole(
    sandbox: SandboxAnthropic, client: Any
) -> None:
    sandbox.responder = scripted(
        [tool("ask_person", question=QUESTION, options="")],
        [text("Of course.")],
    )
    person = Person()
    agent = claude_agent(client, ask=person, sleep=Ticks(free=0))
    reply = agent.reply(CalleeSaid(f"Sure. {QUESTION}"))
    first = [await anext(reply), await anext(reply)]
    assert says(first) == [agent.disclosure, "One moment, let me check with Alex."]
    waiting = asyncio.ensure_future(anext(reply))
    await asyncio.wait_for(person.waiting.wait(), 5)  # the callee speaks once it waits on the person
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await reply.aclose()
    assert person.cancelled
    assert "Interrupted before the person answered" in agent.messages[-1]["content"][0]["content"]
    check_history(agent.messages)
    actions = [a async for a in agent.reply(CalleeSaid("Actually, never mind."))]
    assert says(actions) == ["Of course."]


async def test_without_an_ask_the_model_is_not_offered_ask_person(
    sandbox: SandboxAnthropic, client: Any
) -> None:
    sandbox.responder = scripted([text("Hello.")])
    agent = claude_agent(client)
    [a async for a in agent.reply(CalleeSaid("Hi."))]
    assert "ask_person" not in [t["name"] for t in sandbox.requests[0]["tools"]]
    with_ask = claude_agent(client, ask=Person())
    assert "ask_person" in [t["name"] for t in with_ask.tools.schemas()]
