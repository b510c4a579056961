"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sandbox.anthropic import SandboxAnthropic
from sandbox.deepgram import SandboxDeepgram

#: The key the shared sandbox Deepgram accepts (``dg.api_key``).
DEEPGRAM_TEST_KEY = "dg-test-key"
#: The key the shared sandbox Messages API accepts (``sandbox.api_key``).
ANTHROPIC_TEST_KEY = "sk-sandbox-test"


@pytest.fixture
async def dg() -> AsyncIterator[SandboxDeepgram]:
    """A sandbox Deepgram (listen + speak sockets) on loopback, stopped after the test."""
    server = SandboxDeepgram(api_key=DEEPGRAM_TEST_KEY)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(name="sandbox")
async def anthropic_sandbox() -> AsyncIterator[SandboxAnthropic]:
    """A sandbox Anthropic Messages API on loopback, stopped after the test (the agent tests' model)."""
    server = SandboxAnthropic(api_key=ANTHROPIC_TEST_KEY)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
