"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbox.anthropic import SandboxAnthropic
from sandbox.deepgram import SandboxDeepgram

#: Folders whose every test is slow (whole stacks, subprocesses, minutes of paced audio): marked
#: ``slow`` here, so a new test there cannot forget it and ``make test-fast`` leaves them out.
SLOW_FOLDERS = ("e2e", "reliability")
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE) and item.path.relative_to(_HERE).parts[0] in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)


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
