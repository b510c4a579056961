"""Prompt caching: the product's marks against the sandbox Messages API's documented cache rules.

The sandbox reports ``cache_creation_input_tokens`` / ``cache_read_input_tokens`` as Anthropic
does (first request with a long enough marked prefix writes it, later identical prefixes read it,
prefixes under the model's minimum are never cached), read here through the real SDK.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from factories import claude_agent

from agent.base import CallConnected, CalleeSaid
from agent.llm import build_anthropic
from sandbox.anthropic import PromptCache, SandboxAnthropic, cache_minimum

SONNET = "claude-sonnet-4-5"  # 1,024-token minimum: the product's system + tools prefix is above it


@pytest.fixture
async def client(sandbox: SandboxAnthropic) -> AsyncIterator[Any]:
    c = build_anthropic(sandbox.api_key, sandbox.base_url)
    yield c
    await c.close()


async def _call(agent: Any) -> None:
    said = ("Sure, who is it for?", "How about Tuesday at 3 pm?")
    for event in (CallConnected(), *(CalleeSaid(s) for s in said)):
        [a async for a in agent.reply(event)]


async def test_second_and_later_rounds_of_a_call_read_the_cached_prompt(
    sandbox: SandboxAnthropic, client: Any
) -> None:
    sandbox.cache = PromptCache()
    sandbox.usages.clear()
    await _call(claude_agent(client, model=SONNET))
    first, *later = sandbox.usages
    assert len(later) >= 3  # opening, the answer, the lookup round(s) and the one after the tool
    assert first["cache_creation_input_tokens"] >= cache_minimum(SONNET)
    assert first["cache_read_input_tokens"] == 0
    for usage in later:
        assert usage["cache_read_input_tokens"] == first["cache_creation_input_tokens"], usage
        assert usage["cache_creation_input_tokens"] == 0
        assert usage["input_tokens"] > 0  # the conversation after the breakpoints is not cached


async def test_the_sdk_reads_cache_usage_from_the_stream_and_the_plain_answer() -> None:
    server = SandboxAnthropic(api_key="k", responder=lambda body: [{"type": "text", "text": "Hello."}])
    await server.start()
    client = build_anthropic("k", server.base_url)
    try:
        await _plain_then_streamed(client)
    finally:
        await client.close()
        await server.stop()


async def _plain_then_streamed(client: Any) -> None:
    system = [{"type": "text", "text": "rules " * 1200, "cache_control": {"type": "ephemeral"}}]
    kw: dict[str, Any] = {"model": SONNET, "max_tokens": 50, "system": system}
    plain = await client.messages.create(messages=[{"role": "user", "content": "Hello?"}], **kw)
    assert plain.usage.cache_creation_input_tokens > 0 and plain.usage.cache_read_input_tokens == 0
    stream = await client.messages.create(messages=[{"role": "user", "content": "Hi!"}], stream=True, **kw)
    starts = [e async for e in stream if e.type == "message_start"]
    usage = starts[0].message.usage
    assert usage.cache_read_input_tokens == plain.usage.cache_creation_input_tokens
    assert usage.cache_creation_input_tokens == 0


async def test_a_prefix_under_the_models_minimum_is_never_cached(
    sandbox: SandboxAnthropic, client: Any
) -> None:
    """The product's default Haiku: ~1,200 tokens of system + tools against a 4,096-token minimum."""
    sandbox.cache = PromptCache()
    sandbox.usages.clear()
    await _call(claude_agent(client))  # claude-haiku-5-5
    assert cache_minimum("claude-haiku-5-5") == 4096
    assert all(u["cache_creation_input_tokens"] == u["cache_read_input_tokens"] == 0 for u in sandbox.usages)


def test_entries_expire_five_minutes_after_their_last_use_and_lookback_finds_an_earlier_prefix() -> None:
    now = [0.0]
    cache = PromptCache(clock=lambda: now[0])
    big = {"type": "text", "text": "x" * 8000}  # ~2,000 tokens
    marked = {**big, "cache_control": {"type": "ephemeral"}}
    first = {"model": SONNET, "system": [marked], "messages": [{"role": "user", "content": "a"}]}
    assert cache.usage(first)["cache_creation_input_tokens"] > 0
    # The breakpoint moved to the end of a longer conversation: the system prefix is found by lookback.
    last = {"type": "text", "text": "c", "cache_control": {"type": "ephemeral"}}
    turns = [
        {"role": "user", "content": [{"type": "text", "text": "a"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "b"}]},
        {"role": "user", "content": [last]},
    ]
    longer = {"model": SONNET, "system": [big], "messages": turns}
    now[0] = 299.0
    usage = cache.usage(longer)
    assert usage["cache_read_input_tokens"] == 8000 // 4 + 6  # the system block: text and its keys
    assert usage["cache_creation_input_tokens"] > 0  # the longer prefix is written too
    now[0] = 299.0 + 301.0  # both entries unused for more than five minutes
    assert cache.usage(first)["cache_read_input_tokens"] == 0
