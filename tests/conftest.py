"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sandbox.deepgram import SandboxDeepgram

#: The key the shared sandbox Deepgram accepts (``dg.api_key``).
DEEPGRAM_TEST_KEY = "dg-test-key"


@pytest.fixture
async def dg() -> AsyncIterator[SandboxDeepgram]:
    """A sandbox Deepgram (listen + speak sockets) on loopback, stopped after the test."""
    server = SandboxDeepgram(api_key=DEEPGRAM_TEST_KEY)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
