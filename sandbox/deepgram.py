"""Sandbox Deepgram: ``/v1/listen`` (Nova STT), ``/v2/listen`` (Flux STT) and ``/v1/speak`` (TTS) sockets.

Why: the product talks to Deepgram through the real ``deepgram-sdk`` websockets; pointing the SDK at
this server (``DeepgramClientEnvironment``) exercises the real wire protocol while transcription is
exact, because the audio is sandbox speech (``sandbox.speech``) that carries its own text. All
speech timing (endpointing, utterance end, word times) is AUDIO time derived from the bytes
received (8000 B = 1 s), so results do not depend on how fast a test pushes audio.

``/v2/listen`` (Flux) shares the listen socket loop (auth, idle timeout, KeepAlive, the
``stt_latency_ms`` delayed outbox, ``self.listens``); its turn rules live in
``sandbox.deepgram_flux``. A model that is not Flux, or a threshold out of range, is refused with
HTTP 400 before the upgrade (after the key check, which answers 401).

``encoding=linear16`` (Deepgram's raw 16-bit little-endian PCM, which Pipecat's Deepgram services
send and ask for) is accepted on all three sockets at 8000 Hz: the audio is converted to and from
µ-law at the edge (G.711 round-trips every sandbox speech byte exactly), so the rules behind it
see the same bytes. Other rates are refused with HTTP 400: resampling would erase the words the
sandbox speech carries, so the sandbox cannot serve them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from sandbox.deepgram_flux import FluxTranscriber
from sandbox.deepgram_stt import Transcriber
from sandbox.speech import SAMPLE_RATE, iter_speech

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # Python 3.13+: provided by the audioop-lts package

_IDLE_SECONDS = 10.0

Message = dict[str, Any]


def _linear16(query: dict[str, str]) -> tuple[bool, str | None]:
    """Whether the socket carries linear16 PCM, and the 400 message for what the sandbox cannot do."""
    if query.get("encoding", "mulaw").lower() != "linear16":
        return False, None
    if query.get("sample_rate", str(SAMPLE_RATE)) != str(SAMPLE_RATE):
        return True, f"sandbox: linear16 only at {SAMPLE_RATE} Hz (sandbox speech cannot be resampled)"
    return True, None


def _from_pcm(feed: Callable[[bytes], list[Message]]) -> Callable[[bytes], list[Message]]:
    """A listen feed for linear16 audio: each message's PCM becomes the µ-law the rules read.

    An odd trailing byte (a sample split across messages) waits for the next message.
    """
    carry = bytearray()

    def pcm_feed(data: bytes) -> list[Message]:
        carry.extend(data)
        whole = len(carry) - len(carry) % 2
        pcm = bytes(carry[:whole])
        del carry[:whole]
        return feed(audioop.lin2ulaw(pcm, 2)) if pcm else []

    return pcm_feed


@dataclass
class ListenSession:
    """What one ``/v1/listen`` or ``/v2/listen`` connection received and sent (for assertions)."""

    query: dict[str, str]
    bytes_received: int = 0
    messages_sent: list[dict[str, Any]] = field(default_factory=list)
    text_received: list[dict[str, Any]] = field(default_factory=list)
    keepalives: int = 0
    finalizes: int = 0
    closed_code: int | None = None
    ws: web.WebSocketResponse | None = field(default=None, repr=False)


@dataclass
class SpeakSession:
    """What one ``/v1/speak`` connection received and sent (for assertions)."""

    query: dict[str, str]
    texts: list[str] = field(default_factory=list)
    flushes: int = 0
    clears: int = 0
    audio_bytes_sent: int = 0
    messages_sent: list[dict[str, Any]] = field(default_factory=list)
    closed_code: int | None = None
    ws: web.WebSocketResponse | None = field(default=None, repr=False)


class SandboxDeepgram:
    """Local Deepgram with configurable latencies (wall time) and exact transcription."""

    def __init__(
        self,
        *,
        api_key: str,
        stt_latency_ms: float = 0,
        tts_ttfb_ms: float = 0,
        tts_words_per_second: float = 3.0,
        tts_chunk_bytes: int = 800,
        idle_timeout: float = _IDLE_SECONDS,
    ) -> None:
        self.api_key = api_key
        self.stt_latency_ms = stt_latency_ms
        self.tts_ttfb_ms = tts_ttfb_ms
        self.tts_words_per_second = tts_words_per_second
        self.tts_chunk_bytes = tts_chunk_bytes
        self.idle_timeout = idle_timeout  # Deepgram closes 1011 NET-0001 after 10 s without audio/KeepAlive
        self.listens: list[ListenSession] = []
        self.speaks: list[SpeakSession] = []
        self.rest_speaks: list[str] = []  # texts synthesised through the REST ``POST /v1/speak``
        self.rejected = 0
        self.http_url = ""
        self.ws_url = ""
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Bind 127.0.0.1 on a free port."""
        app = web.Application()
        app.router.add_get("/v1/listen", self._listen)
        app.router.add_get("/v2/listen", self._listen_flux)
        app.router.add_get("/v1/speak", self._speak)
        app.router.add_post("/v1/speak", self._speak_rest)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.http_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"

    async def stop(self) -> None:
        """Close every socket and cancel every task."""
        sessions: list[ListenSession | SpeakSession] = [*self.listens, *self.speaks]
        for session in sessions:
            if session.ws is not None and not session.ws.closed:
                await session.ws.close(code=1001)
        await self._drain_tasks()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _drain_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> SandboxDeepgram:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def drop_listen(self, code: int = 1011) -> None:
        """Close every open listen socket now with ``code`` (a provider outage)."""
        for s in self.listens:
            if s.ws is not None and not s.ws.closed:
                self._spawn(s.ws.close(code=code, message=b"NET-0000"))

    def drop_speak(self, code: int = 1011) -> None:
        """Close every open speak socket now with ``code``."""
        for s in self.speaks:
            if s.ws is not None and not s.ws.closed:
                self._spawn(s.ws.close(code=code, message=b"NET-0000"))

    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        return scheme.lower() in ("token", "bearer") and token.strip() == self.api_key

    async def _open(
        self, request: web.Request, bad_query: str | None = None
    ) -> web.WebSocketResponse | web.Response:
        """Upgrade, or the HTTP error Deepgram answers instead (key checked first)."""
        if not self._authorized(request):
            self.rejected += 1
            return web.json_response(
                {"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials."}, status=401
            )
        if bad_query is not None:
            self.rejected += 1
            return web.json_response({"err_code": "Bad Request", "err_msg": bad_query}, status=400)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        return ws

    # ---------------------------------------------------------------- listen

    async def _listen(self, request: web.Request) -> web.StreamResponse:
        pcm, problem = _linear16(dict(request.query))
        ws = await self._open(request, problem)
        if not isinstance(ws, web.WebSocketResponse):
            return ws
        session = ListenSession(query=dict(request.query), ws=ws)
        stt = Transcriber(session.query)
        feed = _from_pcm(stt.feed) if pcm else stt.feed

        def control(data: Message) -> list[Message]:
            if data.get("type") != "Finalize":
                return []
            session.finalizes += 1
            return [stt.finalize()]

        def closing() -> list[Message]:
            return [*([stt.finalize()] if stt.pending else []), self._metadata(stt)]

        return await self._serve_listen(ws, session, [], feed, control, closing)

    async def _listen_flux(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        try:
            flux: FluxTranscriber | None = FluxTranscriber(query)
            problem = None
        except ValueError as e:
            flux, problem = None, str(e)
        pcm, pcm_problem = _linear16(query)
        ws = await self._open(request, problem or pcm_problem)
        if not isinstance(ws, web.WebSocketResponse) or flux is None:
            return ws
        session = ListenSession(query=query, ws=ws)
        feed = _from_pcm(flux.feed) if pcm else flux.feed
        opening = [flux.connected()]
        return await self._serve_listen(ws, session, opening, feed, flux.control, flux.close_stream)

    async def _serve_listen(
        self,
        ws: web.WebSocketResponse,
        session: ListenSession,
        opening: list[Message],
        feed: Callable[[bytes], list[Message]],
        control: Callable[[Message], list[Message]],
        closing: Callable[[], list[Message]],
    ) -> web.WebSocketResponse:
        """The socket loop both listen versions share; the protocol lives in the callbacks.

        Args:
            ws: The upgraded socket.
            session: Where the wire traffic is recorded.
            opening: Messages sent on open.
            feed: Audio in, messages out.
            control: Answers a client JSON message other than KeepAlive / CloseStream.
            closing: Messages sent after CloseStream, before the 1000 close.
        """
        self.listens.append(session)
        outbox: asyncio.Queue[tuple[float, Message | None]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def emit(messages: list[Message]) -> None:
            for m in messages:
                outbox.put_nowait((loop.time() + self.stt_latency_ms / 1000, m))

        sender = self._spawn(self._send_later(ws, session, outbox))
        try:
            emit(opening)
            if await self._listen_loop(ws, session, feed, control, emit):
                emit(closing())
                outbox.put_nowait((0.0, None))
                await sender
                await ws.close(code=1000)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            session.closed_code = ws.close_code
        return ws

    async def _listen_loop(
        self,
        ws: web.WebSocketResponse,
        session: ListenSession,
        feed: Callable[[bytes], list[Message]],
        control: Callable[[Message], list[Message]],
        emit: Callable[[list[Message]], None],
    ) -> bool:
        """True after a CloseStream; False when idle too long (1011 sent) or the peer went away."""
        while True:
            try:
                msg = await ws.receive(timeout=self.idle_timeout)
            except TimeoutError:
                await ws.close(code=1011, message=b"NET-0001")
                return False
            if msg.type == WSMsgType.BINARY:
                session.bytes_received += len(msg.data)
                emit(feed(msg.data))
            elif msg.type == WSMsgType.TEXT:
                data = json.loads(msg.data)
                session.text_received.append(data)
                kind = data.get("type")
                if kind == "KeepAlive":
                    session.keepalives += 1
                elif kind == "CloseStream":
                    return True
                else:
                    emit(control(data))
            else:
                return False

    def _metadata(self, stt: Transcriber) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": stt.request_id,
            "sha256": "0" * 64,
            "created": "2025-01-01T00:00:00.000Z",
            "duration": stt.offset / SAMPLE_RATE,
            "channels": 1,
        }

    async def _send_later(
        self,
        ws: web.WebSocketResponse,
        session: ListenSession | SpeakSession,
        outbox: asyncio.Queue[tuple[float, Message | None]],
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, message = await outbox.get()
            if message is None:
                return
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if ws.closed:
                return
            session.messages_sent.append(message)
            await ws.send_str(json.dumps(message))

    # ----------------------------------------------------------------- speak

    async def _speak_rest(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/speak``: one text's whole audio in the response body (Deepgram's REST TTS)."""
        if not self._authorized(request):
            self.rejected += 1
            error = {"err_code": "INVALID_AUTH", "err_msg": "Invalid credentials."}
            return web.json_response(error, status=401)
        text = str((await request.json()).get("text", ""))
        if request.query.get("encoding", "mulaw") != "mulaw":
            error = {"err_code": "Bad Request", "err_msg": "sandbox speaks mulaw only"}
            return web.json_response(error, status=400)
        self.rest_speaks.append(text)
        if self.tts_ttfb_ms > 0:
            await asyncio.sleep(self.tts_ttfb_ms / 1000)
        response = web.StreamResponse(headers={"Content-Type": "audio/basic"})
        await response.prepare(request)
        for chunk in self._tts_chunks(text):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def _speak(self, request: web.Request) -> web.StreamResponse:
        _, problem = _linear16(dict(request.query))
        ws = await self._open(request, problem)
        if not isinstance(ws, web.WebSocketResponse):
            return ws
        session = SpeakSession(query=dict(request.query), ws=ws)
        self.speaks.append(session)
        await self._send_json(ws, session, {
            "type": "Metadata",
            "request_id": str(uuid.uuid4()),
            "model_name": session.query.get("model", "aura-2-thalia-en"),
            "model_version": "2025-01-01.0",
            "model_uuid": "sandbox",
        })  # fmt: skip
        jobs: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        producer = self._spawn(self._produce(ws, session, jobs))
        text = ""
        sequence = 0
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                kind = data.get("type")
                if kind == "Speak":
                    piece = str(data.get("text", ""))
                    session.texts.append(piece)
                    # Clauses are streamed one by one: keep words apart at the seams.
                    if text and piece and not text[-1].isspace() and not piece[0].isspace():
                        text += " "
                    text += piece
                elif kind == "Flush":
                    session.flushes += 1
                    jobs.put_nowait((text, sequence))
                    sequence += 1
                    text = ""
                elif kind == "Clear":
                    session.clears += 1
                    text = ""
                    producer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await producer
                    while not jobs.empty():
                        jobs.get_nowait()
                    await self._send_json(
                        ws, session, {"type": "Cleared", "sequence_id": max(0, sequence - 1)}
                    )
                    producer = self._spawn(self._produce(ws, session, jobs))
                elif kind == "Close":
                    await ws.close(code=1000)
                    break
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
            session.closed_code = ws.close_code
        return ws

    async def _produce(
        self, ws: web.WebSocketResponse, session: SpeakSession, jobs: asyncio.Queue[tuple[str, int]]
    ) -> None:
        while True:
            text, sequence = await jobs.get()
            if self.tts_ttfb_ms > 0:
                await asyncio.sleep(self.tts_ttfb_ms / 1000)
            pcm = _linear16(session.query)[0]
            for chunk in self._tts_chunks(text):
                if ws.closed:
                    return
                if pcm:
                    chunk = audioop.ulaw2lin(chunk, 2)
                await ws.send_bytes(chunk)
                session.audio_bytes_sent += len(chunk)
                await asyncio.sleep(0)  # let a Clear in between chunks win
            await self._send_json(ws, session, {"type": "Flushed", "sequence_id": sequence})

    def _tts_chunks(self, text: str) -> Iterator[bytes]:
        """The clause's audio in ``tts_chunk_bytes`` pieces, rendered word by word as they are needed:
        the first audio goes out before the rest of the clause is rendered, as a real TTS streams."""
        step = max(1, self.tts_chunk_bytes)
        audio = bytearray()
        for word in iter_speech(text, words_per_second=self.tts_words_per_second):
            audio += word
            while len(audio) >= step:
                yield bytes(audio[:step])
                del audio[:step]
        if audio:
            yield bytes(audio)

    async def _send_json(
        self, ws: web.WebSocketResponse, session: SpeakSession, message: dict[str, Any]
    ) -> None:
        if not ws.closed:
            session.messages_sent.append(message)
            await ws.send_str(json.dumps(message))
