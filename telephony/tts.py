"""Deepgram text-to-speech: streaming for one call (``Speaker``: one socket, a Flush per clause), and
whole fixed phrases rendered ahead of time (``PhraseCache``: REST ``/v1/speak``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import Any

import httpx

from telephony.speech_common import (
    _CONNECTION_ERRORS,
    ApiError,
    AsyncDeepgramClient,
    ConnectionClosed,
    Reconnecting,
    SpeakEvent,
    SpeakV1Text,
    TtsAudio,
    TtsCleared,
    TtsFlushed,
)
from telephony.ws_tuning import send_uncompressed

log = logging.getLogger(__name__)


class Speaker(Reconnecting):
    """One streaming TTS socket for a whole call.

    ``speak(text)`` + ``flush()`` per clause; ``clear()`` on barge-in. Audio and
    acknowledgements arrive on ``events``. Deepgram's SDK parses ``Cleared`` into
    its ``Flushed`` class, so messages are told apart by ``msg.type`` only.

    Everything sent since the last ``Flushed`` is remembered; when the socket
    drops, ``run()`` reopens it and sends that again, so each flushed clause
    still ends in exactly one ``TtsFlushed`` and its audio is never lost.

    Args:
        sdk: the Deepgram client the socket is opened with (``SpeechClient`` builds one per process).
        model: speak voice, e.g. ``aura-2-thalia-en``.
    """

    max_reconnects = 6

    what = "speak"

    def __init__(self, sdk: AsyncDeepgramClient, *, model: str) -> None:
        self._sdk = sdk
        self._model = model
        self.events: asyncio.Queue[SpeakEvent] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.connections = 0
        self._conn: Any = None
        self._closing = False
        self._unacked: list[tuple[str, str]] = []  # ("speak", text) / ("flush", "") since the last Flushed
        self._clearing = False  # a Clear was asked for and its Cleared has not come back

    async def _send(self, op: str, text: str = "") -> None:
        if op == "clear":
            self._unacked.clear()  # never replay what the callee must no longer hear
            self._clearing = True
        else:
            self._unacked.append((op, text))
        conn = self._conn
        if conn is None:
            return  # not connected: run() sends it (or, for a clear, confirms it) on connect
        try:
            await _send_op(conn, op, text)
        except _CONNECTION_ERRORS:
            log.warning("deepgram speak socket lost during %s; it is resent after the reconnect", op)

    async def speak(self, text: str) -> None:
        await self._send("speak", text)

    async def flush(self) -> None:
        await self._send("flush")

    async def clear(self) -> None:
        await self._send("clear")

    async def close(self) -> None:
        self._closing = True
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await conn.send_close()

    async def _session(self) -> None:
        async with self._sdk.speak.v1.connect(model=self._model, encoding="mulaw", sample_rate=8000) as conn:
            send_uncompressed(conn)
            self.connections += 1
            if self._clearing:
                # the Clear never reached the old socket; this one holds nothing from before it
                self._clearing = False
                await self._emit(TtsCleared())
            i = 0
            while i < len(self._unacked):  # sends made during the replay are appended: keep going
                op, text = self._unacked[i]
                await _send_op(conn, op, text)
                i += 1
            if self._clearing:  # cleared during the replay: clear what was just resent
                await conn.send_clear()
            self._conn = conn
            self.connected.set()
            await self._receive(conn)
            if not self._closing:
                raise ConnectionClosed(None, None)

    def _acked_flush(self) -> None:
        if ("flush", "") in self._unacked:
            del self._unacked[: self._unacked.index(("flush", "")) + 1]

    async def _receive(self, conn: Any) -> None:
        async for msg in conn:
            if isinstance(msg, bytes):
                await self._emit(TtsAudio(msg))
                continue
            kind = getattr(msg, "type", None)
            if kind == "Flushed":
                self._acked_flush()
                await self._emit(TtsFlushed())
            elif kind == "Cleared":
                self._clearing = False
                await self._emit(TtsCleared())
            elif kind == "Warning":
                log.warning("deepgram speak warning: %s", getattr(msg, "description", msg))


async def _send_op(conn: Any, op: str, text: str) -> None:
    if op == "speak":
        await conn.send_text(SpeakV1Text(type="Speak", text=text))
    elif op == "flush":
        await conn.send_flush()
    else:
        await conn.send_clear()


class PhraseCache:
    """Whole-phrase audio (µ-law 8 kHz), synthesised once per voice and kept for the process.

    Why: words fixed before they are needed (a call's opening, short acknowledgements) need not
    wait for the streaming socket's time to first byte when they are due: rendered in advance
    (while the phone rings, or at a call's start for the acknowledgements every call shares), they
    go to Twilio the moment they are said. Deepgram's REST endpoint returns one text's whole audio,
    which is the shape wanted here, and it keeps these requests off the call's streaming socket.

    Concurrent requests for one text share one synthesis; a failed one is forgotten (the text is
    then simply spoken through the call's socket as usual), so a later call tries again.

    Args:
        sdk: the Deepgram client (``SpeechClient`` builds one per process).
        model: the voice; audio of one voice is never played for another.
        size: phrases kept (least recently used first out); a call's opening is one phrase.
    """

    def __init__(self, sdk: AsyncDeepgramClient, *, model: str, size: int = 256) -> None:
        self._sdk = sdk
        self.model = model
        self._size = size
        self._phrases: OrderedDict[str, asyncio.Task[bytes | None]] = OrderedDict()
        self.synthesised = 0  # REST requests made (each text once while it stays cached)

    def ready(self, text: str) -> bytes | None:
        """The phrase's audio if it has been synthesised already (never waits)."""
        task = self._phrases.get(text)
        if task is None or not task.done() or task.cancelled():
            return None
        self._phrases.move_to_end(text)
        return task.result()

    async def audio(self, text: str) -> bytes | None:
        """The phrase's audio, synthesising it first if needed; None if synthesis failed."""
        task = self._phrases.get(text)
        if task is None or (task.done() and (task.cancelled() or task.result() is None)):
            task = asyncio.get_running_loop().create_task(self._synthesise(text))
            self._phrases[text] = task
            while len(self._phrases) > self._size:
                self._phrases.popitem(last=False)[1].cancel()
        self._phrases.move_to_end(text)
        # shielded: a call that stops waiting (hung up) does not cancel it for the others
        return await asyncio.shield(task)

    async def aclose(self) -> None:
        """Cancel renders still running (the process is shutting down)."""
        pending = [task for task in self._phrases.values() if not task.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _synthesise(self, text: str) -> bytes | None:
        self.synthesised += 1
        audio = bytearray()
        try:
            async for chunk in self._sdk.speak.v1.audio.generate(
                text=text, model=self.model, encoding="mulaw", sample_rate=8000, container="none"
            ):
                audio += chunk
        except (ApiError, httpx.HTTPError, *_CONNECTION_ERRORS) as e:
            log.warning("deepgram speak: pre-rendering a phrase failed (%r); it is streamed instead", e)
            return None
        return bytes(audio) or None
