"""Stand-ins for a live call's session, for tests about the webhooks around it."""

from __future__ import annotations

import asyncio

from aiohttp import web

from storage.models import CallOutcome, OutcomeKind, Turn
from telephony import media_stream


class QuietSession:
    """A call session with no audio: it ends when the webhooks end it (an unanswered call)."""

    def __init__(self) -> None:
        self._outcome = CallOutcome(OutcomeKind.ERROR, summary="ended")
        self._ended = asyncio.Event()

    async def run(self) -> tuple[CallOutcome, list[Turn]]:
        await self._ended.wait()
        return self._outcome, []

    async def attach(self, ws: web.WebSocketResponse, start: media_stream.Start) -> None:
        return None

    def end(self, reason: str, outcome: CallOutcome | None = None, *, hang_up: bool = False) -> None:
        self._outcome = outcome or self._outcome
        self._ended.set()

    def machine_beeped(self, fallback: CallOutcome) -> None:
        self.end("voicemail", fallback)
