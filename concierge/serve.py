"""``concierge serve``: run the application until SIGINT/SIGTERM, optionally against the sandbox."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

from concierge import warmup
from concierge.app import Concierge, bind
from concierge.clock import Clock
from concierge.settings import Settings


async def serve(settings: Settings, *, sandbox: bool, ready: Any = print) -> None:
    """Run the server until SIGINT/SIGTERM, then shut down gracefully.

    With ``sandbox`` every outside service is started on loopback first and the
    settings point at it (credentials already set are kept).
    """
    world = None
    sock = bind(settings.host, settings.port)
    port = sock.getsockname()[1]
    clock: Clock | None = None
    credential = None
    if sandbox:
        from concierge.clock import OffsetClock
        from concierge.demo_env import SandboxWorld, sandbox_graph_credential

        world = await SandboxWorld(base=settings).start()
        public = settings.public_base_url or f"http://{settings.host}:{port}"
        settings = world.settings(
            public_base_url=public,
            port=port,
            database_path=settings.database_path if "DATABASE_URL" in os.environ else None,
        )
        clock, credential = OffsetClock(), sandbox_graph_credential()
        for name, url in world.endpoints().items():
            ready(f"sandbox {name:10} {url}")
    app = Concierge(settings, clock=clock, graph_credential=credential)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        listening = await app.start(sock)
        warmup.freeze_heap()  # start-up's objects out of every later full collection
        ready(f"concierge ready on {listening.url} (public {settings.public_base_url}); Ctrl-C to stop")
        await stop.wait()
        ready("shutting down: no new calls; waiting for live calls to finish")
    finally:
        await app.stop()
        if world is not None:
            await world.stop()


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


def serve_main(args: Any) -> int:
    """Entry point of ``concierge serve``."""
    from storage.errors import ConfigError

    settings = Settings()
    update: dict[str, Any] = {}
    if args.host:
        update["host"] = args.host
    if args.port is not None:
        update["port"] = args.port
    settings = settings.model_copy(update=update)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_noisy_loggers()
    try:
        asyncio.run(serve(settings, sandbox=bool(args.sandbox), ready=lambda line: print(line, flush=True)))
    except ConfigError as e:
        print(f"concierge: {e}\n`concierge doctor` lists what is missing.", flush=True)
        return 2
    return 0
