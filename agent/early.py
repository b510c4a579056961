"""A model round started before the callee's turn is final (Deepgram Flux ``EagerEndOfTurn``).

Why: with a real model, time to first token (~0.6 s) is the largest wait between the callee's last
word and the assistant's first. Flux says "probably done" (``EagerEndOfTurn``) a little before it says
"done" (``EndOfTurn``), and guarantees that the final transcript equals the eager one unless a
``TurnResumed`` came in between. Starting the request at the eager event hides the round trip behind
that wait; if the callee goes on talking, the request is cancelled and a fresh one is made at the end.

Nothing here touches the conversation: ``EarlyRound`` holds the exact request history it was started
with, and ``ClaudeAgent.reply`` uses it only if the history it would send is equal. The answer's
events are buffered as they arrive, and the round's usual parsing (clauses, tools, disclosure) reads
them as if the stream were its own. Tools never run early: they run in ``reply`` as always.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from agent.history import Message


class EarlyRound:
    """One streaming Messages API request running ahead in its own task.

    Args:
        messages: the history the request was sent with (a private copy; compared by ``matches``).
        create: starts the request and returns the SDK's ``AsyncStream`` of raw events.
    """

    def __init__(self, messages: list[Message], create: Callable[[], Awaitable[Any]]) -> None:
        self.messages = messages
        self.stream: Any = None  # the SDK stream once the response started (its ``response.request``)
        self._events: deque[Any] = deque()
        self._arrived = asyncio.Event()
        self._done = False
        self._error: BaseException | None = None
        self._task = asyncio.create_task(self._pump(create))

    def matches(self, messages: list[Message]) -> bool:
        """Would a request made now send exactly the history this one was started with?"""
        return messages == self.messages

    async def _pump(self, create: Callable[[], Awaitable[Any]]) -> None:
        try:
            self.stream = stream = await create()
            async with stream:
                async for event in stream:
                    self._events.append(event)
                    self._arrived.set()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # handed to the reader, which maps and retries it as its own
            self._error = e
        finally:
            self._done = True
            self._arrived.set()

    async def events(self) -> AsyncIterator[Any]:
        """The raw stream events, as they arrive; re-raises the request's error where it happened."""
        while True:
            while self._events:
                yield self._events.popleft()
            if self._done:
                if self._error is not None:
                    raise self._error
                return
            self._arrived.clear()
            await self._arrived.wait()

    def discard(self) -> None:
        """Stop the request without waiting (its task closes the response as it unwinds)."""
        self._task.cancel()

    async def cancel(self) -> None:
        """Stop the request (closing its HTTP response) and wait until it has stopped."""
        if not self._task.done():
            self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
