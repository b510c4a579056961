"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pg_server import PostgresServer, PostgresUnavailable, missing_server_outcome

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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for this worker (started on first use, stopped at the end).

    No server binaries: skipped with the reason, except in CI (``CI=true``), where it fails.
    """
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as e:
        unavailable = str(e)
    else:
        unavailable = ""
    if unavailable and missing_server_outcome(os.environ) == "fail":
        pytest.fail(f"{unavailable} (CI is set: PostgreSQL tests must run, not skip)", pytrace=False)
    if unavailable:
        pytest.skip(unavailable)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def pg_url(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """The URL of a fresh, empty PostgreSQL database of its own, dropped after the test."""
    url = await postgres_server.create_database()
    try:
        yield url
    finally:
        await postgres_server.drop_database(url.rsplit("/", 1)[1])


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL on each backend in turn (ids ``sqlite`` / ``postgresql``): for storage tests."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'q.db'}"
    return str(request.getfixturevalue("pg_url"))
