"""Deepgram streaming speech-to-text for one call (``Listener``): reconnects without losing words."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from bisect import bisect_left
from collections import deque
from typing import Any

from telephony.speech_common import (
    _CONNECTION_ERRORS,
    BYTES_PER_SECOND,
    KEEPALIVE_SECONDS,
    MAX_BUFFER_BYTES,
    AsyncDeepgramClient,
    Clock,
    ConnectionClosed,
    ListenEvent,
    Reconnecting,
    SpeechStarted,
    Transcript,
    UtteranceEnd,
)
from telephony.ws_tuning import send_uncompressed

log = logging.getLogger(__name__)


class Listener(Reconnecting):
    """One streaming transcription for one call; survives socket drops.

    ``run()`` is a long-lived coroutine the call session owns (it returns only
    when closed, and raises ``ProviderError`` when reconnecting gave up);
    ``send()`` passes audio through; ``events`` yields ``ListenEvent``s.

    Args:
        sdk: the Deepgram client the socket is opened with (``SpeechClient`` builds one per process).
        model: listen model, e.g. ``nova-3``.
        clock: monotonic clock for event timestamps and the arrival-time map.
        chunk_bytes: inbound audio is sent in messages of this many bytes (``send``).
    """

    max_reconnects = 6

    what = "listen"

    def __init__(self, sdk: AsyncDeepgramClient, *, model: str, clock: Clock, chunk_bytes: int) -> None:
        self._sdk = sdk
        self._model = model
        self._clock = clock
        self.events: asyncio.Queue[ListenEvent] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.connections = 0
        self._conn: Any = None
        # Audio not yet covered by a final transcript (stream offsets _pending_base..._accepted):
        # what a new socket must be sent after a drop.
        self._pending = bytearray()
        self._pending_base = 0
        self._accepted = 0  # bytes ever passed to send()
        self._sent = 0  # stream offset up to which the current socket was sent audio
        self._chunk = chunk_bytes
        self._conn_base = 0  # stream offset of the first byte the current socket received
        self._lead_in = 0  # bytes of silence the current socket was sent before our audio (Flux)
        self._last_send = self._clock()
        self._closing = False
        # (stream offset after a chunk, clock time it arrived): maps Deepgram's
        # audio timestamps back to arrival times for the latency record.
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=1500)

    async def send(self, audio: bytes) -> None:
        """Forward inbound µ-law bytes untouched, in chunks of ``stt_chunk_bytes`` (buffered while
        reconnecting): one websocket message per chunk instead of per 20 ms Twilio frame."""
        self._accepted += len(audio)
        self._arrivals.append((self._accepted, self._clock()))
        self._pending += audio
        if len(self._pending) > MAX_BUFFER_BYTES + BYTES_PER_SECOND:  # trim in 1 s steps, not per frame
            cut = len(self._pending) - MAX_BUFFER_BYTES
            del self._pending[:cut]
            self._pending_base += cut
        conn = self._conn
        if conn is not None and self._accepted - self._sent >= self._chunk:
            await self._send_unsent(conn)

    async def _send_unsent(self, conn: Any) -> None:
        """Send the socket what it has not had yet (one message: the chunking of ``send``)."""
        start = max(self._sent, self._pending_base) - self._pending_base
        self._sent = self._accepted
        try:
            await conn.send_media(bytes(self._pending[start:]))
            self._last_send = self._clock()
        except _CONNECTION_ERRORS:
            self._conn = None  # run() notices the drop, reconnects and replays _pending

    def arrival_time(self, stream_seconds: float) -> float | None:
        """Clock time at which the audio at ``stream_seconds`` arrived, if still known."""
        if not self._arrivals:
            return None
        offset = int(stream_seconds * BYTES_PER_SECOND)
        offsets = [o for o, _ in self._arrivals]
        i = bisect_left(offsets, offset)
        if i == len(offsets) or (i == 0 and offset < offsets[0] - 8000):
            return None
        return self._arrivals[i][1]

    async def close(self) -> None:
        """Ask Deepgram to finish (CloseStream); ``run()`` then returns."""
        self._closing = True
        conn = self._conn
        if conn is not None and self._sent < self._accepted:
            await self._send_unsent(conn)  # the last words must reach the final transcript
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await conn.send_close_stream()

    def _connect(self) -> Any:
        """The SDK's socket context for this listener's protocol (Nova: ``/v1/listen``)."""
        return self._sdk.listen.v1.connect(
            model=self._model,
            encoding="mulaw",
            sample_rate=8000,
            channels=1,
            # strings, not bools: the SDK urlencodes True as "True"
            interim_results="true",
            endpointing=300,
            utterance_end_ms=1000,
            vad_events="true",
            smart_format="true",
            punctuate="true",
        )

    async def _session(self) -> None:
        self._lead_in = 0
        async with self._connect() as conn:
            send_uncompressed(conn)  # µ-law does not deflate; save the CPU (ws_tuning)
            self.connections += 1
            # Replay everything not yet finalized (cut off by a drop, or arrived while
            # disconnected), then go live; audio arriving during the replay follows in order.
            self._conn_base = position = self._pending_base
            while position < (end := self._pending_base + len(self._pending)):
                start = max(position, self._pending_base)
                await conn.send_media(bytes(self._pending[start - self._pending_base :]))
                position = end
            self._sent = position
            self._conn = conn
            self._last_send = self._clock()
            self.connected.set()
            keepalive = asyncio.create_task(self._keepalive(conn))
            try:
                async for msg in conn:
                    await self._handle(msg)
                    if self._conn is None and not self._closing:
                        # a send failed: the socket is gone even if iteration has not noticed
                        raise ConnectionClosed(None, None)
            finally:
                keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keepalive
            if not self._closing:
                raise ConnectionClosed(None, None)  # closed cleanly by the server: reopen

    def _finalized(self, stream_seconds: float) -> None:
        """Deepgram will not revisit audio before ``stream_seconds``: stop keeping it for a replay."""
        done = min(int(stream_seconds * BYTES_PER_SECOND), self._accepted)
        if done > self._pending_base:
            del self._pending[: done - self._pending_base]
            self._pending_base = done

    async def _keepalive(self, conn: Any) -> None:
        # Deepgram closes an idle socket after 10 s; before the callee answers
        # (and while a stream stalls) no audio flows.
        while True:
            wait = self._last_send + KEEPALIVE_SECONDS - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await conn.send_keep_alive()
            self._last_send = self._clock()

    def _stream_base(self) -> float:
        """Stream seconds at the current socket's audio time 0 (what its timestamps are relative to)."""
        return (self._conn_base - self._lead_in) / BYTES_PER_SECOND

    async def _handle(self, msg: Any) -> None:
        kind = getattr(msg, "type", None)
        now = self._clock()
        base = self._stream_base()
        if kind == "Results":
            alts = msg.channel.alternatives
            text = alts[0].transcript if alts else ""
            speech_end = None
            if msg.is_final and alts and alts[0].words:
                speech_end = self.arrival_time(base + alts[0].words[-1].end)
            if msg.is_final:
                self._finalized(base + float(msg.start or 0) + float(msg.duration or 0))
            await self._emit(
                Transcript(text or "", bool(msg.is_final), bool(msg.speech_final), now, speech_end)
            )
        elif kind == "SpeechStarted":
            ts = getattr(msg, "timestamp", None)
            onset = self.arrival_time(base + ts) if isinstance(ts, int | float) else None
            await self._emit(SpeechStarted(now, onset))
        elif kind == "UtteranceEnd":
            await self._emit(UtteranceEnd(now))
