"""Deepgram streaming speech-to-text (``Listener``) and text-to-speech (``Speaker``).

Both use the real ``deepgram-sdk`` websocket clients, pointed at any base URL
(the sandbox in tests). Each call opens one listen socket and one speak socket
as early as possible (while the phone rings) so that answering costs no
handshake, and keeps them for the whole call. A dropped socket (Deepgram
closes with 1011 on errors) is reopened with back-off and the call goes on:

* listen: inbound audio is kept from the end of the last *final* transcript
  on, so after a drop the new socket is sent everything the old one had not
  finalized (words cut by the drop included) plus what arrived meanwhile;
* speak: text not yet acknowledged by ``Flushed`` is sent again on the new
  socket, so a clause cut by the drop is spoken again instead of lost (the
  callee may hear its first words twice — better than a silent gap that the
  transcript would claim was said).

Audio passes through untouched: Twilio's 8 kHz µ-law bytes go straight to the
listen socket and the speak socket is asked for the same format, so nothing is
transcoded on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import warnings
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

with warnings.catch_warnings():
    # deepgram-sdk 7.x imports websockets' legacy client, which warns on import
    # with websockets >= 14; the legacy client is what the SDK uses, so there is
    # nothing for us to change.
    warnings.simplefilter("ignore", DeprecationWarning)
    import deepgram.listen.v1.client  # noqa: F401  (the SDK imports these lazily, at first connect)
    import deepgram.speak.v1.client  # noqa: F401
    from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
    from deepgram.core.api_error import ApiError
    from deepgram.speak.v1.types.speak_v1text import SpeakV1Text
    from websockets.exceptions import ConnectionClosed, WebSocketException

from storage.errors import ProviderConnectionError, ProviderError, ProviderStatusError
from telephony.ws_tuning import send_uncompressed

log = logging.getLogger(__name__)

Clock = Callable[[], float]

BYTES_PER_SECOND = 8000
KEEPALIVE_SECONDS = 4.0
#: Audio kept while the listen socket is reconnecting (30 s of µ-law).
MAX_BUFFER_BYTES = 30 * BYTES_PER_SECOND
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (ConnectionClosed, WebSocketException, OSError)


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Voice onset detected by Deepgram VAD.

    Attributes:
        t: when it was received (clock seconds).
        onset: when the onset audio byte arrived from Twilio (clock seconds), if known.
    """

    t: float
    onset: float | None = None


@dataclass(frozen=True, slots=True)
class Transcript:
    """An interim or final transcript.

    Attributes:
        speech_end: clock time at which the audio of the last word's end arrived
            from Twilio, if it could be mapped (finals only).
    """

    text: str
    is_final: bool
    speech_final: bool
    t: float
    speech_end: float | None = None


@dataclass(frozen=True, slots=True)
class UtteranceEnd:
    """Deepgram saw a gap after the last word (fallback when ``speech_final`` is missed)."""

    t: float


ListenEvent = SpeechStarted | Transcript | UtteranceEnd


@dataclass(frozen=True, slots=True)
class TtsAudio:
    """A chunk of synthesised µ-law audio."""

    data: bytes


@dataclass(frozen=True, slots=True)
class TtsFlushed:
    """All audio for the text sent before the matching flush has been delivered."""


@dataclass(frozen=True, slots=True)
class TtsCleared:
    """The speak socket dropped pending audio after a clear."""


@dataclass(frozen=True, slots=True)
class TtsReset:
    """Pending text will produce no more audio.

    No longer emitted: since ``Speaker`` resends unacknowledged text after a
    reconnect, every flushed clause gets its ``TtsFlushed``. Kept so consumers
    that still handle it keep working.
    """


SpeakEvent = TtsAudio | TtsFlushed | TtsCleared | TtsReset


# --- client -----------------------------------------------------------------------------------


class SpeechClient:
    """Builds the Deepgram SDK client and the per-call listen/speak sockets.

    Args:
        api_key: Deepgram key.
        http_url: REST base, e.g. ``https://api.deepgram.com``.
        ws_url: websocket base, e.g. ``wss://api.deepgram.com``.
        stt_model: listen model, e.g. ``nova-3``.
        tts_model: speak voice, e.g. ``aura-2-thalia-en``.
        clock: monotonic clock for event timestamps.
    """

    def __init__(
        self,
        *,
        api_key: str,
        http_url: str,
        ws_url: str,
        stt_model: str = "nova-3",
        tts_model: str = "aura-2-thalia-en",
        clock: Clock = time.monotonic,
    ) -> None:
        self.stt_model = stt_model
        self.tts_model = tts_model
        self.clock = clock
        env = DeepgramClientEnvironment(base=http_url, production=ws_url, agent=ws_url, agent_rest=http_url)
        self.sdk = AsyncDeepgramClient(api_key=api_key, environment=env)

    def listener(self) -> Listener:
        return Listener(self)

    def speaker(self) -> Speaker:
        return Speaker(self)


def _backoff(attempt: int) -> float:
    return min(0.1 * 2 ** (attempt - 1), 2.0)


def _map_error(e: BaseException, what: str) -> ProviderError:
    if isinstance(e, ApiError) and isinstance(e.status_code, int):
        return ProviderStatusError(f"deepgram {what}: HTTP {e.status_code}", provider="deepgram",
                                   status=e.status_code)
    return ProviderConnectionError(f"deepgram {what}: {e!r}", provider="deepgram")


class Listener:
    """One streaming transcription for one call; survives socket drops.

    ``run()`` is a long-lived coroutine the call session owns (it returns only
    when closed, and raises ``ProviderError`` when reconnecting gave up);
    ``send()`` passes audio through; ``events`` yields ``ListenEvent``s.
    """

    max_reconnects = 6

    def __init__(self, client: SpeechClient) -> None:
        self._client = client
        self._clock = client.clock
        self.events: asyncio.Queue[ListenEvent] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.connections = 0
        self._conn: Any = None
        # Audio not yet covered by a final transcript (stream offsets _pending_base..._accepted):
        # what a new socket must be sent after a drop.
        self._pending = bytearray()
        self._pending_base = 0
        self._accepted = 0  # bytes ever passed to send()
        self._conn_base = 0  # stream offset of the first byte the current socket received
        self._last_send = self._clock()
        self._closing = False
        # (stream offset after a chunk, clock time it arrived): maps Deepgram's
        # audio timestamps back to arrival times for the latency record.
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=1500)

    async def send(self, audio: bytes) -> None:
        """Forward inbound µ-law bytes untouched (buffered while reconnecting)."""
        self._accepted += len(audio)
        self._arrivals.append((self._accepted, self._clock()))
        self._pending += audio
        if len(self._pending) > MAX_BUFFER_BYTES + BYTES_PER_SECOND:  # trim in 1 s steps, not per frame
            cut = len(self._pending) - MAX_BUFFER_BYTES
            del self._pending[:cut]
            self._pending_base += cut
        conn = self._conn
        if conn is not None:
            try:
                await conn.send_media(audio)
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
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await conn.send_close_stream()

    async def run(self) -> None:
        """Keep a listen socket open until ``close()``; reconnect with back-off on drops.

        Raises:
            ProviderError: the socket could not be (re)opened after several tries.
        """
        failures = 0
        while not self._closing:
            opened = self.connections
            try:
                await self._session()
                failures = 0
            except (ApiError, *_CONNECTION_ERRORS) as e:
                if self._closing:
                    return
                # count failures in a row: a socket that was up before it dropped starts afresh
                failures = 1 if self.connections > opened else failures + 1
                log.warning("deepgram listen socket lost (%r); reconnect #%d", e, failures)
                if failures > self.max_reconnects or (isinstance(e, ApiError) and e.status_code == 401):
                    raise _map_error(e, "listen") from e
                await asyncio.sleep(_backoff(failures))
            finally:
                self._conn = None
                self.connected.clear()

    async def _session(self) -> None:
        async with self._client.sdk.listen.v1.connect(
            model=self._client.stt_model,
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
        ) as conn:
            send_uncompressed(conn)  # µ-law does not deflate; save the CPU (ws_tuning)
            self.connections += 1
            # Replay everything not yet finalized (cut off by a drop, or arrived while
            # disconnected), then go live; audio arriving during the replay follows in order.
            self._conn_base = position = self._pending_base
            while position < (end := self._pending_base + len(self._pending)):
                start = max(position, self._pending_base)
                await conn.send_media(bytes(self._pending[start - self._pending_base :]))
                position = end
            self._conn = conn
            self._last_send = self._clock()
            self.connected.set()
            keepalive = asyncio.create_task(self._keepalive(conn))
            try:
                async for msg in conn:
                    self._handle(msg)
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

    def _handle(self, msg: Any) -> None:
        kind = getattr(msg, "type", None)
        now = self._clock()
        base = self._conn_base / BYTES_PER_SECOND
        if kind == "Results":
            alts = msg.channel.alternatives
            text = alts[0].transcript if alts else ""
            speech_end = None
            if msg.is_final and alts and alts[0].words:
                speech_end = self.arrival_time(base + alts[0].words[-1].end)
            if msg.is_final:
                self._finalized(base + float(msg.start or 0) + float(msg.duration or 0))
            self.events.put_nowait(
                Transcript(text or "", bool(msg.is_final), bool(msg.speech_final), now, speech_end)
            )
        elif kind == "SpeechStarted":
            ts = getattr(msg, "timestamp", None)
            onset = self.arrival_time(base + ts) if isinstance(ts, int | float) else None
            self.events.put_nowait(SpeechStarted(now, onset))
        elif kind == "UtteranceEnd":
            self.events.put_nowait(UtteranceEnd(now))


class Speaker:
    """One streaming TTS socket for a whole call.

    ``speak(text)`` + ``flush()`` per clause; ``clear()`` on barge-in. Audio and
    acknowledgements arrive on ``events``. Deepgram's SDK parses ``Cleared`` into
    its ``Flushed`` class, so messages are told apart by ``msg.type`` only.

    Everything sent since the last ``Flushed`` is remembered; when the socket
    drops, ``run()`` reopens it and sends that again, so each flushed clause
    still ends in exactly one ``TtsFlushed`` and its audio is never lost.
    """

    max_reconnects = 6

    def __init__(self, client: SpeechClient) -> None:
        self._client = client
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

    async def run(self) -> None:
        """Keep the speak socket open until ``close()``; reconnect with back-off on drops.

        Raises:
            ProviderError: the socket could not be (re)opened after several tries.
        """
        failures = 0
        while not self._closing:
            opened = self.connections
            try:
                await self._session()
                failures = 0
            except (ApiError, *_CONNECTION_ERRORS) as e:
                if self._closing:
                    return
                failures = 1 if self.connections > opened else failures + 1
                log.warning("deepgram speak socket lost (%r); reconnect #%d", e, failures)
                if failures > self.max_reconnects or (isinstance(e, ApiError) and e.status_code == 401):
                    raise _map_error(e, "speak") from e
                await asyncio.sleep(_backoff(failures))
            finally:
                self._conn = None
                self.connected.clear()

    async def _session(self) -> None:
        async with self._client.sdk.speak.v1.connect(
            model=self._client.tts_model, encoding="mulaw", sample_rate=8000
        ) as conn:
            send_uncompressed(conn)
            self.connections += 1
            if self._clearing:
                # the Clear never reached the old socket; this one holds nothing from before it
                self._clearing = False
                self.events.put_nowait(TtsCleared())
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
                self.events.put_nowait(TtsAudio(msg))
                continue
            kind = getattr(msg, "type", None)
            if kind == "Flushed":
                self._acked_flush()
                self.events.put_nowait(TtsFlushed())
            elif kind == "Cleared":
                self._clearing = False
                self.events.put_nowait(TtsCleared())
            elif kind == "Warning":
                log.warning("deepgram speak warning: %s", getattr(msg, "description", msg))


async def _send_op(conn: Any, op: str, text: str) -> None:
    if op == "speak":
        await conn.send_text(SpeakV1Text(type="Speak", text=text))
    elif op == "flush":
        await conn.send_flush()
    else:
        await conn.send_clear()
