"""The throwaway PostgreSQL server of the test suite (``tests/pg_server.py``) and its fixtures."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import psutil
import pytest
from pg_server import (
    DIR_PREFIX,
    PG_BIN_ENV,
    PostgresServer,
    PostgresUnavailable,
    find_pg_bin,
    missing_server_outcome,
    sweep_stale_dirs,
)


@pytest.mark.parametrize(
    ("environ", "outcome"),
    [
        ({}, "skip"),
        ({"CI": ""}, "skip"),
        ({"CI": "false"}, "skip"),
        ({"CI": "0"}, "skip"),
        ({"CI": "true"}, "fail"),
        ({"CI": "TRUE"}, "fail"),
        ({"CI": "1"}, "fail"),
        ({"CI": "yes"}, "fail"),
    ],
)
def test_a_missing_server_skips_except_in_ci(environ: dict[str, str], outcome: str) -> None:
    assert missing_server_outcome(environ) == outcome


def test_a_pg_bin_without_the_server_is_reported_with_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(PostgresUnavailable, match=rf"{PG_BIN_ENV}=.*initdb and postgres.*apt-get install"):
        find_pg_bin({PG_BIN_ENV: str(tmp_path), "PATH": ""})


def test_pg_bin_overrides_the_search(postgres_server: PostgresServer) -> None:
    assert find_pg_bin({PG_BIN_ENV: str(postgres_server.bin_dir)}) == postgres_server.bin_dir


async def test_a_database_is_reachable_with_asyncpg(postgres_server: PostgresServer, pg_url: str) -> None:
    assert pg_url.startswith(f"postgresql://postgres@127.0.0.1:{postgres_server.port}/")
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT current_database()") == pg_url.rsplit("/", 1)[1]
        assert await conn.fetchval("SHOW fsync") == "off"
        tables = await conn.fetch("SELECT 1 FROM pg_tables WHERE schemaname = 'public'")
        assert tables == []  # fresh and empty
    finally:
        await conn.close()


async def test_two_databases_are_isolated(postgres_server: PostgresServer, pg_url: str) -> None:
    other_url = await postgres_server.create_database()
    try:
        first, second = await asyncpg.connect(pg_url), await asyncpg.connect(other_url)
        try:
            await first.execute("CREATE TABLE jobs (id int); INSERT INTO jobs VALUES (1)")
            seen = await second.fetchval("SELECT count(*) FROM pg_tables WHERE tablename = 'jobs'")
            assert seen == 0
            await second.execute("CREATE TABLE jobs (id int)")  # the same name, no clash
            assert await second.fetchval("SELECT count(*) FROM jobs") == 0
            assert await first.fetchval("SELECT count(*) FROM jobs") == 1
        finally:
            await first.close()
            await second.close()
    finally:
        await postgres_server.drop_database(other_url.rsplit("/", 1)[1])


async def test_dropping_a_database_cuts_its_open_connections(postgres_server: PostgresServer) -> None:
    url = await postgres_server.create_database()
    conn = await asyncpg.connect(url)
    try:
        await postgres_server.drop_database(url.rsplit("/", 1)[1])
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await conn.fetchval("SELECT 1")
        with pytest.raises(asyncpg.InvalidCatalogNameError):
            await asyncpg.connect(url)
    finally:
        await conn.close()


def test_the_server_listens_only_on_loopback(postgres_server: PostgresServer) -> None:
    listening = [
        c.laddr
        for c in psutil.Process(postgres_server.process.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening, "the postmaster listens on no TCP socket"
    assert {addr.port for addr in listening} == {postgres_server.port}
    assert all(ipaddress.ip_address(addr.ip).is_loopback for addr in listening), listening


def test_the_server_is_not_run_as_root(postgres_server: PostgresServer) -> None:
    assert psutil.Process(postgres_server.process.pid).uids().real != 0


def test_db_url_names_each_backend(request: pytest.FixtureRequest, db_url: str) -> None:
    backend = request.node.callspec.id
    assert db_url.startswith({"sqlite": "sqlite:////", "postgresql": "postgresql://"}[backend])
    if backend == "sqlite":
        assert db_url.endswith("/q.db")


def test_the_sweep_leaves_a_live_server_alone(postgres_server: PostgresServer) -> None:
    assert postgres_server.root not in sweep_stale_dirs(postgres_server.root.parent)
    assert (postgres_server.root / "data" / "postmaster.pid").exists()


# A worker killed outright runs no teardown and no atexit: the kernel's parent-death signal stops
# the server, and the next start sweeps the directory.
_CHILD = """
import sys
from pg_server import PostgresServer
server = PostgresServer.start()
print(server.process.pid, server.root, flush=True)
sys.stdin.read()
"""


@pytest.mark.slow
def test_a_server_does_not_outlive_a_killed_owner(postgres_server: PostgresServer) -> None:
    if postgres_server.process.args[0].rsplit("/", 1)[-1] != "setpriv":
        pytest.skip("no setpriv here: nothing stops the server of a killed owner")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True
    ) as child:
        assert child.stdout is not None
        pid_text, root_text = child.stdout.readline().split()
        postmaster, root = psutil.Process(int(pid_text)), Path(root_text)
        try:
            assert root.name.startswith(DIR_PREFIX) and (root / "data" / "postmaster.pid").exists()
            child.kill()
            child.wait()
            postmaster.wait(timeout=30)  # the parent-death signal's fast shutdown
            assert root in sweep_stale_dirs(root.parent)
            assert not root.exists()
        finally:
            if postmaster.is_running():
                postmaster.kill()
