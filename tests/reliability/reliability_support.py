"""Shared helpers for the reliability tests: one whole product stack, signing, state snapshots.

Every test here runs the real ``Concierge`` application (every route, the
dispatcher, both chat front ends) against the sandbox world on loopback, the
way ``concierge demo`` does; only the requests an attacker or a broken client
would send are hand-made.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
from twilio.request_validator import RequestValidator

from concierge.app import Concierge
from concierge.clock import OffsetClock
from demo.runner import start_stack
from demo.world import SandboxWorld
from storage.models import ChatOrigin, Job, Platform

#: Warnings the sandbox's Twilio SDK client raises on aiohttp 3.13 (not ours to fix).
TWILIO_SDK_WARNINGS = [
    "ignore:.*BasicAuth.*:DeprecationWarning",
    "ignore:.*'auth' parameter.*:DeprecationWarning",
]


@dataclass(repr=False)
class Stack:
    """The sandbox world, the product on a free loopback port, its clock and an HTTP client."""

    world: SandboxWorld
    app: Concierge
    clock: OffsetClock
    http: aiohttp.ClientSession

    def __repr__(self) -> str:  # hypothesis prints the fixtures of a failing example
        return f"Stack({self.base})"

    @property
    def base(self) -> str:
        return self.app.settings.public_base_url

    def url(self, path: str) -> str:
        return self.base + path

    async def close(self) -> None:
        await self.http.close()
        await self.app.stop(grace=2)
        await self.world.stop()


async def open_stack(*, pace: float = 8.0, **overrides: Any) -> Stack:
    """``demo.runner.start_stack`` plus a client session (closed by ``Stack.close``)."""
    world, app, clock = await start_stack(pace=pace, **overrides)
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    return Stack(world, app, clock, http)


async def open_quiet_stack(**overrides: Any) -> Stack:
    """A stack whose dispatcher is stopped, so it never claims or dials anything itself.

    For tests that aim requests at a job they put in ``dialing`` by hand (``dialing_job``):
    nothing but the requests under test may touch it. (A cap of 0 calls would do the same,
    but the settings refuse caps below 1.)
    """
    stack = await open_stack(**overrides)
    dispatcher = stack.app.dispatcher

    async def running() -> bool:
        return dispatcher.running

    async def stopped() -> bool:
        return not dispatcher.running

    try:
        await wait_until(running, 10, "the dispatcher to start")  # a stop before run() would be lost
        dispatcher.stop()
        await wait_until(stopped, 10, "the dispatcher to stop")
    except BaseException:
        await stack.close()
        raise
    return stack


def twilio_signature(stack: Stack, url: str, params: dict[str, str]) -> str:
    """What Twilio would put in ``X-Twilio-Signature`` for ``url`` + ``params``."""
    return str(RequestValidator(stack.app.settings.twilio_auth_token).compute_signature(url, params))


async def snapshot(stack: Stack) -> tuple[Any, ...]:
    """Everything a request could change: every job (state, meta, history length) and every
    message or call the product sent out."""
    jobs = await stack.app.store.list(limit=100_000)
    rows = []
    for j in jobs:
        history = await stack.app.store.history(j.id)
        meta = json.dumps(j.meta.to_dict(), sort_keys=True, default=str)
        rows.append((j.id, str(j.state), j.attempts, j.call_sid, meta, len(history)))
    w = stack.world
    return (
        sorted(rows),
        len(w.telegram.sent),
        len(w.slack.posted),
        len(w.slack.responses),
        len(w.twilio.calls),
        await stack.app.drafts.count(),
    )


async def dialing_job(stack: Stack, phone: str = "+14155550123") -> Job:
    """A job in ``dialing`` with a call sid, claimed under the app's own node name (a node acts
    only on calls it holds), as its dispatcher would (which must run stopped, see
    ``open_quiet_stack``, so it never claims it first)."""
    origin = ChatOrigin(Platform.TELEGRAM, chat_id="4242", user_id="4242")
    reply = stack.app.flow.intake.from_command(
        "rel:setup", origin, f"{phone} Test Shop | haircut | next week"
    )
    assert reply.request is not None, reply.text
    store = stack.app.store
    job = await store.enqueue(reply.request, due_at=stack.clock.now() - timedelta(minutes=1), max_attempts=3)
    claimed = await store.claim_due(stack.app.owner, limit=1, lease_seconds=3600)
    assert [j.id for j in claimed] == [job.id]
    return await store.set_call_sid(job.id, "CA" + job.id.replace("-", "")[:32].ljust(32, "0"))


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:  # noqa: ASYNC109
    """Re-check ``check`` (on every loop turn that lets others run, at most every 20 ms)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)
