"""``concierge serve`` as a real subprocess pointed at a sandbox world running in the test process.

The server is configured only through environment variables (the settings'
field names upper-cased), exactly as a deployment would be. The one thing an
environment variable cannot give it is the Graph credential the sandbox
accepts (the sandbox has no sign-in service): each server runs ``serve_main`` with
that credential injected, the way ``serve --sandbox`` injects it. The working
directory is a temporary one, so no ``.env`` of the checkout is read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from concierge.serve import Wiring, serve_main
from concierge.settings import Settings
from demo.world import SandboxWorld, sandbox_graph_credential

ROOT = Path(__file__).resolve().parents[1]


def server_env(world: SandboxWorld, *, port: int, database_path: Path, **overrides: Any) -> dict[str, str]:
    """Environment for ``concierge serve`` against ``world`` (every setting explicit)."""
    settings = world.settings(
        public_base_url=f"http://127.0.0.1:{port}",
        port=port,
        database_path=str(database_path),
        **overrides,
    )
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        env[name.upper()] = ",".join(value) if isinstance(value, list) else str(value)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@contextlib.asynccontextmanager
async def sandbox_graph(settings: Settings, port: int, ready: Callable[[str], Any]) -> AsyncIterator[Wiring]:
    """The settings as the environment gave them, plus the Graph credential the sandbox accepts."""
    yield Wiring(settings, graph_credential=sandbox_graph_credential())


class Server:
    """One ``concierge serve`` process, forked from a server that has already imported the product.

    Every start used to pay the SDKs' imports (~3 s of CPU): 21 times in the SIGKILL test, most
    of its minutes on a loaded machine. A ``multiprocessing`` fork server imports the product once
    per test process; each server is a fresh fork of it, with its own
    pid, environment, working directory and log, that ``kill`` ends with SIGKILL as before (the
    fork server only reaps it). Its stdout is a pipe to the test; its stderr goes to ``log_path``.
    """

    def __init__(self, env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.env, self.cwd, self.log_path = env, cwd, log_path
        self.proc: BaseProcess | None = None
        self.stdout: asyncio.StreamReader | None = None
        self._pipe: asyncio.BaseTransport | None = None

    async def start(self, timeout: float = 120.0) -> None:  # noqa: ASYNC109
        """Start and wait for the "concierge ready" line (the dispatcher has run recovery by then).

        The timeout only catches a hang (a process that dies is seen at once, by EOF). It is not a
        speed expectation: the first start in a test process imports the SDKs in the fork server.
        """
        read_end, write_end = _FORKS.Pipe(duplex=False)
        self.proc = _FORKS.Process(
            target=_child, args=(self.env, str(self.cwd), str(self.log_path), write_end), daemon=False
        )
        self.proc.start()
        write_end.close()  # the child holds the only writer: its exit is EOF here
        fd = os.dup(read_end.fileno())
        read_end.close()
        loop = asyncio.get_running_loop()
        self.stdout = stdout = asyncio.StreamReader()
        pipe = os.fdopen(fd, "rb", buffering=0)  # a pipe's end, not a file on disk
        self._pipe, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdout), pipe)
        async with asyncio.timeout(timeout):
            while True:
                line = await stdout.readline()
                if not line:
                    raise RuntimeError(f"concierge serve exited before ready; see {self.log_path}")
                if b"concierge ready" in line:
                    return

    @property
    def returncode(self) -> int | None:
        """The exit code (negative: the signal), ``None`` while it runs."""
        return None if self.proc is None else self.proc.exitcode

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs at all."""
        assert self.proc is not None and self.proc.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        await self.wait()

    async def terminate(self, timeout: float = 30.0) -> int:  # noqa: ASYNC109
        """SIGTERM (graceful) and the exit code."""
        assert self.proc is not None and self.proc.pid is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        async with asyncio.timeout(timeout):
            return await self.wait()

    async def wait(self) -> int:
        assert self.proc is not None
        if self.stdout is not None:
            with contextlib.suppress(Exception):
                await self.stdout.read()
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        await asyncio.to_thread(self.proc.join)
        code = self.proc.exitcode
        assert code is not None
        return code

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _child(env: dict[str, str], cwd: str, log_path: str, stdout: Connection) -> None:
    """The forked server: the test's environment, directory and log, then ``concierge serve``."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    os.dup2(stdout.fileno(), 1)
    os.close(log)
    stdout.close()
    sys.exit(serve_main(argparse.Namespace(host=None, port=None), environment=sandbox_graph))


#: The fork server every ``Server`` is forked from; it imports the product and the sandbox world once
#: (by their installed names: Python 3.11's fork server ignores the test path, so not this module).
_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload(["concierge.serve", "demo.world"])
