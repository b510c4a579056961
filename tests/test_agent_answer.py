"""The assistant message assembled from raw stream events (``agent.answer.AnswerBuilder``)."""

from __future__ import annotations

import anthropic
import httpx2
import pytest
from anthropic.types import (
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    RawMessageDeltaEvent,
    RawMessageStopEvent,
)

from agent.answer import AnswerBuilder

REQUEST = httpx2.Request("POST", "http://127.0.0.1/v1/messages")


def start(index: int, block: dict[str, object]) -> RawContentBlockStartEvent:
    return RawContentBlockStartEvent.model_validate(
        {"type": "content_block_start", "index": index, "content_block": block}
    )


def stop(index: int) -> RawContentBlockStopEvent:
    return RawContentBlockStopEvent(type="content_block_stop", index=index)


def finish(builder: AnswerBuilder, reason: str = "tool_use") -> None:
    builder.on_event(
        RawMessageDeltaEvent.model_validate(
            {"type": "message_delta", "delta": {"stop_reason": reason}, "usage": {"output_tokens": 3}}
        )
    )
    builder.on_event(RawMessageStopEvent(type="message_stop"))


def test_text_and_tool_calls_are_assembled_in_order() -> None:
    b = AnswerBuilder()
    b.on_event(start(0, {"type": "text", "text": ""}))
    for piece in ("Let ", "me ", "check."):
        b.text(0, piece)
    b.on_event(stop(0))
    b.on_event(start(1, {"type": "tool_use", "id": "toolu_1", "name": "check_availability", "input": {}}))
    for piece in ('{"start": "2026-12-0', '1T14:00", "end"', ': "2026-12-01T14:30"}'):
        b.partial_json(1, piece)
    b.on_event(stop(1))
    finish(b)
    assert b.stop_reason == "tool_use"
    assert b.content(REQUEST) == [
        {"type": "text", "text": "Let me check."},
        {
            "type": "tool_use",
            "id": "toolu_1",
            "name": "check_availability",
            "input": {"start": "2026-12-01T14:00", "end": "2026-12-01T14:30"},
        },
    ]


def test_empty_text_is_dropped_and_a_tool_without_input_gets_an_empty_dict() -> None:
    b = AnswerBuilder()
    b.on_event(start(0, {"type": "text", "text": ""}))
    b.text(0, "  ")
    b.on_event(stop(0))
    b.on_event(start(1, {"type": "tool_use", "id": "toolu_2", "name": "end_call", "input": {}}))
    b.on_event(stop(1))
    finish(b)
    assert b.content(REQUEST) == [{"type": "tool_use", "id": "toolu_2", "name": "end_call", "input": {}}]


def test_broken_tool_json_becomes_an_empty_input_not_a_crash() -> None:
    b = AnswerBuilder()
    b.on_event(start(0, {"type": "tool_use", "id": "toolu_3", "name": "send_dtmf", "input": {}}))
    b.partial_json(0, '{"digits": ')
    b.on_event(stop(0))
    finish(b)
    assert b.content(REQUEST)[0]["input"] == {}


def test_an_answer_cut_off_before_message_stop_is_a_connection_error() -> None:
    b = AnswerBuilder()
    b.on_event(start(0, {"type": "text", "text": ""}))
    b.text(0, "Sure, ")
    with pytest.raises(anthropic.APIConnectionError, match="message_stop"):
        b.content(REQUEST)
