"""ClaudeAgent end to end: the real anthropic SDK against sandbox.anthropic (phone model or scripted)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from factories import FakeCalendar, claude_agent

from agent.base import AgentAction, CallConnected, CalleeSaid, CallerInput, Hangup, Say, SendDigits
from agent.conversation import ClaudeAgent
from agent.llm import build_anthropic
from sandbox.anthropic import SandboxAnthropic
from storage.errors import ProviderConnectionError
from storage.models import OutcomeKind

LA = ZoneInfo("America/Los_Angeles")


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
async def client(sandbox: SandboxAnthropic) -> AsyncIterator[Any]:
    c = build_anthropic(sandbox.api_key, sandbox.base_url)
    yield c
    await c.close()


def make_agent(client: Any, calendar: FakeCalendar, sleeps: Sleeps | None = None, **kw: Any) -> ClaudeAgent:
    return claude_agent(client, calendar=calendar, sleep=sleeps or Sleeps(), **kw)


async def run(agent: ClaudeAgent, event: CallerInput) -> list[AgentAction]:
    return [a async for a in agent.reply(event)]


def says(actions: list[AgentAction]) -> str:
    return " ".join(a.text for a in actions if isinstance(a, Say))


def check_history(messages: list[dict[str, Any]]) -> None:
    """Roles alternate, starting with the user, and every tool_use has its tool_result next."""
    assert messages[0]["role"] == "user"
    for a, b in zip(messages, messages[1:], strict=False):
        assert a["role"] != b["role"]
    for i, m in enumerate(messages):
        for block in m["content"]:
            assert block.get("type") != "text" or block["text"].strip()
            if block["type"] == "tool_use":
                ids = [r.get("tool_use_id") for r in messages[i + 1]["content"]]
                assert block["id"] in ids


async def test_booking_negotiated_over_three_callee_turns(sandbox: SandboxAnthropic, client: Any) -> None:
    busy = [(datetime(2026, 12, 2, 14, 0, tzinfo=LA), datetime(2026, 12, 2, 15, 0, tzinfo=LA))]
    calendar = FakeCalendar(busy)
    agent = make_agent(client, calendar)

    opening = await run(agent, CallConnected())
    assert isinstance(opening[0], Say) and opening[0].first_token_at is not None
    assert all(a.first_token_at is None for a in opening[1:] if isinstance(a, Say))
    assert "AI assistant calling on behalf of Alex Doe" in says(opening)
    assert "haircut" in says(opening)

    # 1: outside the window (13:00-18:00) -> check_availability says no -> asks again
    turn1 = await run(agent, CalleeSaid("Joe's, sure. How about Tuesday, December 1 at 10 am?"))
    assert "anything else" in says(turn1) and not any(isinstance(a, Hangup) for a in turn1)
    # 2: inside the window but busy in the calendar
    turn2 = await run(agent, CalleeSaid("Hmm. What about 2:30 pm on December 2?"))
    assert "doesn't work" in says(turn2)
    # 3: free -> check, confirm, goodbye, hang up
    turn3 = await run(agent, CalleeSaid("Okay, I can do 12/3 at 3pm."))
    assert isinstance(turn3[-1], Hangup)
    outcome = turn3[-1].outcome
    assert outcome.kind is OutcomeKind.BOOKED and outcome.booking is not None
    assert outcome.booking.start == datetime(2026, 12, 3, 15, 0, tzinfo=LA)
    assert outcome.booking.end == datetime(2026, 12, 3, 15, 30, tzinfo=LA)
    assert "Thursday, December 3 at 3:00 PM" in says(turn3)
    assert agent.outcome() == outcome

    # The wire: tools offered with cache_control on the last, the system prompt cached, tool results sent.
    last = sandbox.requests[-1]
    assert last["model"] == "claude-haiku-5-5" and last["stream"] is True
    assert last["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert "ERRAND_JSON: " in last["system"][0]["text"]
    assert last["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert {t["name"] for t in last["tools"]} == {
        "check_availability",
        "confirm_booking",
        "end_call",
        "send_dtmf",
        "wait_on_hold",
    }
    tools_called = [
        b["name"]
        for m in agent.messages
        if m["role"] == "assistant"
        for b in m["content"]
        if b["type"] == "tool_use"
    ]
    assert tools_called == [
        "check_availability",
        "check_availability",
        "check_availability",
        "confirm_booking",
        "end_call",
    ]
    check_history(agent.messages)
    # after hang-up the agent stays quiet
    assert await run(agent, CalleeSaid("Bye!")) == []


def scripted(*replies: list[dict[str, Any]]) -> Any:
    queue = list(replies)

    def responder(body: dict[str, Any]) -> list[dict[str, Any]]:
        return queue.pop(0)

    return responder


def tool(name: str, **args: Any) -> dict[str, Any]:
    return {"type": "tool_use", "name": name, "input": args}


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


async def test_busy_slot_is_refused_then_another_is_booked(sandbox: SandboxAnthropic, client: Any) -> None:
    calendar = FakeCalendar(
        [(datetime(2026, 12, 1, 14, 0, tzinfo=LA), datetime(2026, 12, 1, 15, 0, tzinfo=LA))]
    )
    sandbox.responder = scripted(
        [tool("confirm_booking", start="2026-12-01T14:00", end="2026-12-01T14:30", service="haircut")],
        [text("Sorry, that time doesn't work for Alex. Anything later?")],
        [tool("confirm_booking", start="2026-12-01T16:00", end="2026-12-01T16:30", service="haircut")],
        [text("Great, see you then. Goodbye!"), tool("end_call", outcome="booked", summary="Booked 4 PM.")],
    )
    agent = make_agent(client, calendar)
    first = await run(agent, CalleeSaid("We have 2 PM on Tuesday."))
    # the model skipped the AI disclosure, so the agent said it first
    assert says(first) == f"{agent.disclosure} Sorry, that time doesn't work for Alex. Anything later?"
    refusal = sandbox.requests[1]["messages"][-1]["content"][0]
    assert refusal["type"] == "tool_result" and refusal["content"].startswith("REFUSED: the person is busy")
    assert agent.outcome() is None

    second = await run(agent, CalleeSaid("4 PM then?"))
    assert isinstance(second[-1], Hangup)
    booking = second[-1].outcome.booking
    assert booking is not None and booking.start == datetime(2026, 12, 1, 16, 0, tzinfo=LA)
    check_history(agent.messages)


async def test_overloaded_then_success_says_a_filler_once_and_continues(
    sandbox: SandboxAnthropic, client: Any
) -> None:
    sleeps = Sleeps()
    agent = make_agent(client, FakeCalendar(), sleeps)
    sandbox.fail_next(529, "overloaded_error")
    sandbox.fail_next(429, "rate_limit_error")
    actions = await run(agent, CallConnected())
    # the disclosure comes first, even before the filler (nothing is heard before it)
    assert actions[:2] == [Say(agent.disclosure), Say("One moment, please.")]
    assert [a for a in actions if a == Say("One moment, please.")] == [actions[1]]  # once, not per retry
    assert says(actions).count("AI assistant") == 1
    assert isinstance(actions[2], Say) and actions[2].first_token_at is not None
    assert sleeps.waits == [0.25, 0.5]  # exponential back-off
    assert len(sandbox.requests) == 3
    # the filler is not in history, the disclosure is; the call carries on normally
    assert agent.messages[-1]["role"] == "assistant" and "One moment" not in str(agent.messages)
    assert agent.messages[-1]["content"][0]["text"].startswith(agent.disclosure)
    later = await run(agent, CalleeSaid("Please hold."))
    assert says(later) == "Sure, I'll hold."
    check_history(agent.messages)


async def test_error_event_mid_stream_before_speech_is_retried(
    sandbox: SandboxAnthropic, client: Any
) -> None:
    agent = make_agent(client, FakeCalendar())
    sandbox.error_mid_stream_next()
    actions = await run(agent, CallConnected())
    assert actions[:2] == [Say(agent.disclosure), Say("One moment, please.")]
    assert "AI assistant calling on behalf of Alex Doe" in says(actions)
    assert len(sandbox.requests) == 2


async def test_model_down_for_good_apologises_and_hangs_up(sandbox: SandboxAnthropic, client: Any) -> None:
    agent = make_agent(client, FakeCalendar())
    sandbox.fail_next(529, "overloaded_error", count=5)
    actions = await run(agent, CallConnected())
    # the first model request failing still discloses first: disclosure, filler, apology, hang-up
    assert actions[:2] == [Say(agent.disclosure), Say("One moment, please.")]
    assert "technical trouble" in says(actions)
    assert isinstance(actions[-1], Hangup) and actions[-1].outcome.kind is OutcomeKind.ERROR
    assert agent.outcome() is not None and agent.outcome().kind.retryable  # type: ignore[union-attr]
    assert len(sandbox.requests) == 3


async def test_barge_in_keeps_only_what_was_heard(sandbox: SandboxAnthropic, client: Any) -> None:
    agent = make_agent(client, FakeCalendar())
    async with aclosing(agent.reply(CallConnected())) as replies:
        first = await anext(replies)
        second = await anext(replies)
    assert isinstance(first, Say) and first.text == agent.disclosure
    assert isinstance(second, Say) and second.text == "I'd like to book a haircut,"
    agent.interrupted(f"{agent.disclosure} I'd like")
    await run(agent, CalleeSaid("Sorry, who is this?"))
    sent = sandbox.requests[-1]["messages"]
    heard = f"{agent.disclosure} I'd like"
    assert sent[1] == {"role": "assistant", "content": [{"type": "text", "text": heard}]}
    assert sent[2]["role"] == "user" and sent[2]["content"][0]["text"] == "Sorry, who is this?"
    check_history(agent.messages)


async def test_barge_in_before_anything_was_heard_removes_the_reply(
    sandbox: SandboxAnthropic, client: Any
) -> None:
    agent = make_agent(client, FakeCalendar())
    async with aclosing(agent.reply(CallConnected())) as replies:
        await anext(replies)
    agent.interrupted("")
    await run(agent, CalleeSaid("Hello?"))
    sent = sandbox.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user"]
    assert [b["text"] for b in sent[0]["content"]] == [
        "[call connected: the callee picked up and has not spoken yet]",
        "Hello?",
    ]


async def test_cancelled_while_a_tool_runs_leaves_no_dangling_tool_use(
    sandbox: SandboxAnthropic, client: Any
) -> None:
    calendar = FakeCalendar()
    calendar.gate = asyncio.Event()
    sandbox.responder = scripted(
        [
            text("Let me check that for you."),
            tool("check_availability", start="2026-12-01T14:00", end="2026-12-01T14:30"),
        ],
        [text("Okay.")],
    )
    agent = make_agent(client, calendar)
    got: list[AgentAction] = []

    async def consume() -> None:
        async for a in agent.reply(CalleeSaid("2 PM on Tuesday?")):
            got.append(a)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(calendar.entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert says(got) == f"{agent.disclosure} Let me check that for you."
    assert agent.messages[-1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": f"{agent.disclosure} Let me check that for you."}],
    }
    await run(agent, CalleeSaid("Hello?"))
    check_history(sandbox.requests[-1]["messages"])


async def test_tool_failure_goes_back_to_the_model_as_an_error(
    sandbox: SandboxAnthropic, client: Any
) -> None:
    calendar = FakeCalendar()
    calendar.fail = ProviderConnectionError("graph unreachable", provider="graph")
    agent = make_agent(client, calendar)
    actions = await run(agent, CalleeSaid("We could do December 1 at 2 pm."))
    result = sandbox.requests[-1]["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and result["is_error"] is True
    assert "calendar service had a problem" in result["content"]
    assert "graph unreachable" not in result["content"]  # provider text stays in the log
    assert says(actions) == f"{agent.disclosure} Let me check. Sorry, could you say that time again?"


async def test_phone_menu_presses_a_key_and_hold_is_polite(sandbox: SandboxAnthropic, client: Any) -> None:
    agent = make_agent(client, FakeCalendar())
    actions = await run(
        agent, CalleeSaid("Thanks for calling. For store hours, press 1. For appointments, press 2.")
    )
    assert actions == [SendDigits("2")]
    check_history(agent.messages)


async def test_asked_to_hold_it_says_so_then_holds_with_no_further_round(
    sandbox: SandboxAnthropic, client: Any
) -> None:
    agent = make_agent(client, FakeCalendar())
    assert agent.holds == 0
    actions = await run(agent, CalleeSaid("Joe's Barbershop, please hold."))
    assert "Sure, I'll hold." in says(actions)
    assert agent.holds == 1 and agent.outcome() is None
    assert len(sandbox.requests) == 1  # the tool result gets no model round: nothing more is said
    check_history(agent.messages)
    assert agent.messages[-1]["content"][0]["type"] == "tool_result"
    # the callee's next words continue the conversation, after the hold's tool result
    actions = await run(agent, CalleeSaid("Thanks for holding. How can I help you?"))
    assert "haircut" in says(actions).lower() and agent.holds == 1
    check_history(agent.messages)


@pytest.mark.parametrize(
    ("said", "kind", "question"),
    [
        ("Sorry, you have the wrong number.", OutcomeKind.WRONG_NUMBER, None),
        ("We're fully booked all week, sorry.", OutcomeKind.DECLINED, None),
        (
            "Sure. Would he like the stylist Sam or anyone available?",
            OutcomeKind.NEEDS_USER,
            "Would he like the stylist Sam or anyone available?",
        ),
    ],
)
async def test_call_endings(
    sandbox: SandboxAnthropic, client: Any, said: str, kind: OutcomeKind, question: str | None
) -> None:
    agent = make_agent(client, FakeCalendar())
    actions = await run(agent, CalleeSaid(said))
    assert isinstance(actions[-1], Hangup)
    assert actions[-1].outcome.kind is kind and actions[-1].outcome.question == question


async def test_wrong_api_key_is_a_final_error(sandbox: SandboxAnthropic) -> None:
    bad = build_anthropic("sk-wrong", sandbox.base_url)
    try:
        agent = make_agent(bad, FakeCalendar())
        actions = await run(agent, CallConnected())
    finally:
        await bad.close()
    assert isinstance(actions[-1], Hangup) and actions[-1].outcome.kind is OutcomeKind.ERROR
    assert "One moment" not in says(actions)  # 401 is not retried


async def test_the_first_words_always_disclose_an_ai_once(sandbox: SandboxAnthropic, client: Any) -> None:
    sandbox.responder = scripted(
        [text("Hello! I'd like to book a haircut, please.")],
        [text("Next week, in the afternoon.")],
    )
    agent = make_agent(client, FakeCalendar())
    first = await run(agent, CalleeSaid("Joe's Barbershop, how can I help?"))
    assert isinstance(first[0], Say) and first[0].text == agent.disclosure
    assert "AI assistant" in agent.disclosure and "Alex Doe" in agent.disclosure
    assert agent.messages[-1]["content"][0]["text"].startswith(agent.disclosure)
    second = await run(agent, CalleeSaid("When would you like it?"))
    assert says(second) == "Next week, in the afternoon."


async def test_a_negated_disclosure_from_the_model_does_not_count(
    sandbox: SandboxAnthropic, client: Any
) -> None:
    sandbox.responder = scripted([text("Hi, this is Robin, not an AI, just calling for Alex.")])
    agent = make_agent(client, FakeCalendar())
    actions = await run(agent, CalleeSaid("Hello?"))
    assert isinstance(actions[0], Say) and actions[0].text == agent.disclosure


async def test_a_disclosure_cut_off_by_the_callee_is_said_again(
    sandbox: SandboxAnthropic, client: Any
) -> None:
    sandbox.responder = scripted(
        [text("Hi, this is Robin, an AI assistant calling for Alex.")],
        [text("I'd like to book a haircut.")],
    )
    agent = make_agent(client, FakeCalendar())
    async with aclosing(agent.reply(CalleeSaid("Hello?"))) as replies:
        await anext(replies)
    agent.interrupted("Hi, this is")  # cut off before "AI"
    again = await run(agent, CalleeSaid("Sorry, who is calling?"))
    assert says(again) == f"{agent.disclosure} I'd like to book a haircut."
