"""What the source checkout plugs into the ``concierge`` command (see ``concierge.cli``).

Kept light: ``concierge jobs`` and ``doctor`` load these entry points too, so
the sandbox and the scenario runner are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concierge.serve import Wiring
    from concierge.settings import Settings


class DemoCommand:
    """``concierge demo [--list] [--scenario NAME]``."""

    help = "run a scripted call end to end against the sandbox"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--scenario", help="scenario name (see --list)")
        parser.add_argument("--list", action="store_true", help="list the scenarios and exit")

    def run(self, args: argparse.Namespace) -> int:
        from demo.runner import demo

        return asyncio.run(demo(args))


DEMO = DemoCommand()


class PlaygroundCommand:
    """``concierge playground [--port P] [--host H]``."""

    help = "try Concierge in your browser against the sandbox, playing the business yourself"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--port", type=int, default=8321, help="port of the page (default 8321)")
        parser.add_argument(
            "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
        )

    def run(self, args: argparse.Namespace) -> int:
        from demo.playground import serve

        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(serve(args.host, args.port))
        return 0


PLAYGROUND = PlaygroundCommand()


@asynccontextmanager
async def sandbox(settings: Settings, port: int, ready: Callable[[str], Any]) -> AsyncIterator[Wiring]:
    """``concierge serve --sandbox``: every outside service on loopback, the settings pointed at it.

    Credentials already set are kept; the database is a fresh temporary one unless
    DATABASE_URL is set. The clock can be fast-forwarded like the demo's.
    """
    from concierge.clock import OffsetClock
    from concierge.serve import Wiring
    from demo.world import SandboxWorld, sandbox_graph_credential

    world = await SandboxWorld(base=settings).start()
    try:
        public = settings.public_base_url or f"http://{settings.host}:{port}"
        wired = world.settings(
            public_base_url=public,
            port=port,
            # DATABASE_URL as given (a SQLite file or PostgreSQL), so sandbox nodes can share one.
            **({"database_url": settings.database_url} if "DATABASE_URL" in os.environ else {}),
        )
        for name, url in world.endpoints().items():
            ready(f"sandbox {name:10} {url}")
        yield Wiring(wired, clock=OffsetClock(), graph_credential=sandbox_graph_credential())
    finally:
        await world.stop()
