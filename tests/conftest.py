"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest
from pg_server import PostgresServer, PostgresUnavailable, missing_server_outcome

from sandbox.anthropic import SandboxAnthropic
from sandbox.deepgram import SandboxDeepgram

#: Folders whose every test is slow (whole stacks, subprocesses, minutes of paced audio): marked
#: ``slow`` here, so a new test there cannot forget it and ``make test-fast`` leaves them out.
SLOW_FOLDERS = ("e2e", "reliability")
_HERE = Path(__file__).parent


#: The longest tests (node id prefixes under tests/), longest first: they start first, one per
#: worker, so none of them is left to begin near the end of a parallel run (``make test``).
LONGEST_FIRST = (
    "reliability/test_crash_sigkill.py",
    "e2e/test_two_nodes.py",
    "e2e/test_playground.py::test_a_whole_errand_in_the_browser",
    "reliability/test_load_errands.py",
    "e2e/test_playground.py::test_a_scripted_receptionist",
    "test_bench.py::test_two_calls_report_every_figure",
    "e2e/test_playground.py::test_the_receptionist_hangs_up",
    "e2e/test_scenarios.py::test_unbooked_endings[needs_user",
    "e2e/test_eval.py::test_every_rule_holds_with_the_sandbox_model[needs_user]",
    "test_cli.py::test_serve_sandbox",
    "e2e/test_restart.py",
    "e2e/test_scenarios.py::test_long_hold",
    "e2e/test_eval.py::test_every_rule_holds_with_the_sandbox_model[long_hold]",
)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> Generator[None]:
    for item in items:  # before ``-m`` deselects
        if item.path.is_relative_to(_HERE) and item.path.relative_to(_HERE).parts[0] in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)
    yield
    items[:] = longest_first(items)  # after: the short tests paired with long ones are selected ones


def longest_first(items: list[pytest.Item]) -> list[pytest.Item]:
    """``LONGEST_FIRST`` at the head, each followed by one short test, then the rest as collected.

    pytest-xdist (``--dist load --maxschedchunk 1``, see the Makefile) hands each worker two
    tests to begin with, in this order: pairing every long test with a short one gives each worker
    one long test, where back-to-back long tests would run one after the other on one worker.
    """

    def rank(item: pytest.Item) -> int:
        nodeid = item.nodeid.removeprefix("tests/")
        return next(
            (i for i, prefix in enumerate(LONGEST_FIRST) if nodeid.startswith(prefix)), len(LONGEST_FIRST)
        )

    long = sorted((i for i in items if rank(i) < len(LONGEST_FIRST)), key=rank)
    rest = [i for i in items if rank(i) == len(LONGEST_FIRST)]
    head: list[pytest.Item] = []
    for item in long:
        head.append(item)
        if rest:
            head.append(rest.pop())  # a short unit test from the end of the collection
    return head + rest


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
