"""``concierge serve`` as a real subprocess pointed at a sandbox world running in the test process.

The server is configured only through environment variables (the settings'
field names upper-cased), exactly as a deployment would be. The one thing an
environment variable cannot give it is the Graph credential the sandbox
accepts (the sandbox has no sign-in service): run as a script, this module is
``concierge serve`` (``serve_main``) with that credential injected, the way
``serve --sandbox`` injects it. The working directory is a temporary one, so no
``.env`` of the checkout is read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from concierge.serve import Wiring, serve_main
from concierge.settings import Settings
from demo.world import SandboxWorld, sandbox_graph_credential

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()


def free_port() -> int:
    """A free loopback port below the ephemeral range, for a server restarted on the same port.

    A port from ``bind(0)`` would come out of the ephemeral range, where any of the many client
    sockets of the suite (and of parallel workers) may take it while the server is down between
    a kill and its restart; below that range only an explicit bind can.
    """
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(200 if low > 21_000 else 0):
        port = rng.randrange(20_000, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # no room below the ephemeral range on this machine
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


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
    """One ``concierge serve`` process (this module as a script); its log goes to ``log_path``."""

    def __init__(self, env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.env, self.cwd, self.log_path = env, cwd, log_path
        self.proc: asyncio.subprocess.Process | None = None
        self._log: int | None = None  # file descriptor of the log

    async def start(self, timeout: float = 120.0) -> None:  # noqa: ASYNC109
        """Start and wait for the "concierge ready" line (the dispatcher has run recovery by then).

        The timeout only catches a hang (a process that dies is seen at once, by EOF). It is not a
        speed expectation: start-up imports the SDKs (~3.5 s of CPU), and under a parallel suite on
        2 cores that took more than 30 s of wall time.
        """
        self._log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # closed in wait()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            cwd=self.cwd,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"concierge serve exited before ready; see {self.log_path}")
                if b"concierge ready" in line:
                    return

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs at all."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        await self.wait()

    async def terminate(self, timeout: float = 30.0) -> int:  # noqa: ASYNC109
        """SIGTERM (graceful) and the exit code."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout):
            return await self.wait()

    async def wait(self) -> int:
        assert self.proc is not None
        if self.proc.stdout is not None:
            with contextlib.suppress(Exception):
                await self.proc.stdout.read()
        code = await self.proc.wait()
        if self._log is not None:
            os.close(self._log)
            self._log = None
        return code

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


if __name__ == "__main__":
    sys.exit(serve_main(argparse.Namespace(host=None, port=None), environment=sandbox_graph))
