"""``concierge serve``: run the application until SIGINT/SIGTERM, optionally against stand-ins.

The product does not know the sandbox. ``concierge serve --sandbox`` passes in
an ``Environment`` (loaded by the CLI from an entry point the source checkout
declares): it starts whatever the server should talk to, once the port is
bound, and hands back the settings, clock and Graph credential to run with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential

from concierge import warmup
from concierge.app import Concierge, bind
from concierge.clock import Clock
from concierge.settings import Settings


@dataclass(frozen=True)
class Wiring:
    """What the application runs with: the settings and, when given, an injected clock and credential."""

    settings: Settings
    clock: Clock | None = None
    graph_credential: AsyncTokenCredential | None = None


#: Prepares what ``serve`` runs against. Called with the configured settings, the bound port and
#: the ``ready`` printer; enters to the ``Wiring`` to run with and exits after the app has stopped
#: (so the services it started outlive every call the server ends on shutdown).
Environment = Callable[[Settings, int, Callable[[str], Any]], AbstractAsyncContextManager[Wiring]]


async def serve(settings: Settings, *, environment: Environment | None = None, ready: Any = print) -> None:
    """Run the server until SIGINT/SIGTERM, then shut down gracefully.

    Args:
        settings: configuration from the environment (and the command line).
        environment: stand-ins to run against (``serve --sandbox``); ``None`` runs against the
            services the settings name.
        ready: prints one status line.
    """
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    async with contextlib.AsyncExitStack() as stack:
        wiring = Wiring(settings)
        if environment is not None:
            wiring = await stack.enter_async_context(environment(settings, port, ready))
        settings = wiring.settings
        app = Concierge(settings, clock=wiring.clock, graph_credential=wiring.graph_credential)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            listening = await app.start(sock)
            warmup.freeze_heap()  # start-up's objects out of every later full collection
            ready(
                f"concierge ready on {listening.url} (node {app.owner}, public {settings.public_base_url});"
                " Ctrl-C to stop"
            )
            await stop.wait()
            ready("shutting down: no new calls; waiting for live calls to finish")
        finally:
            await app.stop()


def quiet_noisy_loggers() -> None:
    """HTTP client and access logs at INFO print request URLs — Telegram's carry the bot token.

    The redaction filter installed by ``Concierge.start`` scrubs them at any level;
    this only keeps ``serve``'s output readable.
    """
    for name in (
        "httpx",
        "httpcore",
        "aiohttp.access",
        "twilio.http_client",
        "twilio.async_http_client",
        "telegram.ext.Updater",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def serve_main(args: Any, *, environment: Environment | None = None) -> int:
    """Entry point of ``concierge serve`` (``environment``: see ``serve``)."""
    from storage.errors import ConfigError

    settings = Settings()
    update: dict[str, Any] = {}
    if args.host:
        update["host"] = args.host
    if args.port is not None:
        update["port"] = args.port
    settings = settings.model_copy(update=update)
    # Every line names the node: several nodes' logs are read side by side.
    node = settings.node.replace("%", "%%")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s {node} %(name)s: %(message)s")
    quiet_noisy_loggers()
    try:
        asyncio.run(serve(settings, environment=environment, ready=lambda line: print(line, flush=True)))
    except ConfigError as e:
        print(f"concierge: {e}\n`concierge doctor` lists what is missing.", flush=True)
        return 2
    return 0
