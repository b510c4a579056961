"""The sandbox Messages API wire details and the rule-based phone model's reading of the callee."""

from __future__ import annotations

import json
from datetime import date, time
from typing import Any

import anthropic
import pytest
from factories import call_request

from agent.llm import build_anthropic
from agent.prompts import build_system_prompt
from sandbox import phone_model
from sandbox.anthropic import SandboxAnthropic
from storage.models import BookingWindow, ChatOrigin, Platform

REQUEST = call_request(
    window=BookingWindow(date(2026, 12, 1), date(2026, 12, 4), time(13, 0), time(18, 0), 45),
    origin=ChatOrigin(Platform.CLI, "c", "u"),
)
SYSTEM = build_system_prompt(REQUEST, assistant_name="Robin", today=date(2026, 11, 25))


def ask(said: str) -> list[dict[str, Any]]:
    return phone_model.respond({"system": SYSTEM, "messages": [{"role": "user", "content": said}]})


@pytest.mark.parametrize(
    ("said", "start"),
    [
        ("We have Tuesday, December 1 at 2 PM.", "2026-12-01T14:00"),
        ("How about 2:30 pm on December 2?", "2026-12-02T14:30"),
        ("I can do 12/2 at 3pm", "2026-12-02T15:00"),
        ("Thursday at 16:15 works", "2026-12-03T16:15"),
        ("Dec. 4th at noon?", "2026-12-04T12:00"),
    ],
)
def test_offered_times_are_checked(said: str, start: str) -> None:
    ack, block = ask(said)
    assert ack == {"type": "text", "text": phone_model.ACK}  # words first: the line is never silent
    assert block["type"] == "tool_use" and block["name"] == "check_availability"
    assert block["input"]["start"] == start
    assert block["input"]["end"] > start


def test_words_after_an_unanswered_key_press_are_answered() -> None:
    keys = {"type": "text", "text": "[the callee's phone sent DTMF digits: 5]"}
    assert phone_model.respond({"system": SYSTEM, "messages": [{"role": "user", "content": [keys]}]}) == []
    words = {"type": "text", "text": "We have Tuesday, December 1 at 2 PM."}
    body = {"system": SYSTEM, "messages": [{"role": "user", "content": [keys, words]}]}
    ack, block = phone_model.respond(body)
    assert ack["text"] == phone_model.ACK and block["input"]["start"] == "2026-12-01T14:00"


def test_name_is_spelled_and_hold_is_polite() -> None:
    assert (
        ask("Can you spell the name for the booking?")[0]["text"]
        == "It's for Alex Doe. That's spelled A-L-E-X, D-O-E."
    )
    said, hold = ask("One moment please.")
    assert said["text"] == "Sure, I'll hold."
    assert hold["type"] == "tool_use" and hold["name"] == "wait_on_hold"


def test_opening_introduces_an_ai_assistant() -> None:
    [block] = ask("[call connected: the callee picked up and has not spoken yet]")
    assert block["text"].startswith("Hi, this is Robin, an AI assistant calling on behalf of Alex Doe.")


async def test_wire_auth_and_non_streaming() -> None:
    sandbox = SandboxAnthropic(api_key="k", responder=lambda body: [{"type": "text", "text": "Hello there."}])
    await sandbox.start()
    good, bad = build_anthropic("k", sandbox.base_url), build_anthropic("nope", sandbox.base_url)
    try:
        msg = await good.messages.create(
            model="claude-haiku-5-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
        assert msg.content[0].type == "text" and msg.content[0].text == "Hello there."
        assert msg.stop_reason == "end_turn" and msg.usage.output_tokens > 0
        with pytest.raises(anthropic.AuthenticationError):
            await bad.messages.create(
                model="claude-haiku-5-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
        sandbox.fail_next(429)
        with pytest.raises(anthropic.RateLimitError):
            await good.messages.create(
                model="claude-haiku-5-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
        sandbox.fail_next(529)
        with pytest.raises(anthropic.InternalServerError) as err:
            await good.messages.create(
                model="claude-haiku-5-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )
        assert err.value.status_code == 529
        assert json.dumps(sandbox.requests[0]["messages"]) == '[{"role": "user", "content": "hi"}]'
    finally:
        await good.close()
        await bad.close()
        await sandbox.stop()


@pytest.mark.parametrize(
    "said",
    [
        "Please don't call this number again.",
        "Stop calling us, please.",
        "Take us off your list. We do not call back robots.",
    ],
)
def test_asked_not_to_call_again_it_says_goodbye_and_opts_out(said: str) -> None:
    goodbye, end = ask(said)
    assert "won't call this number again" in goodbye["text"] and "Goodbye" in goodbye["text"]
    assert end["name"] == "end_call" and end["input"]["outcome"] == "opted_out"
    assert said in end["input"]["summary"]  # the callee's own words, quoted for the person


def test_the_prompt_tells_the_model_about_opting_out() -> None:
    assert "end_call with opted_out" in SYSTEM
