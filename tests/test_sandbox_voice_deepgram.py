"""Sandbox Deepgram driven by the REAL deepgram-sdk (listen + speak websockets)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
from deepgram.core.api_error import ApiError
from deepgram.speak.v1.types.speak_v1text import SpeakV1Text
from websockets.exceptions import ConnectionClosed

from sandbox.deepgram import SandboxDeepgram
from sandbox.speech import decode_text, encode_speech, silence

# deepgram-sdk 7.17 imports websockets' legacy client API, deprecated since websockets 14 (third party,
# raised at the SDK's lazy import; nothing we can fix here).
pytestmark = [
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings(
        "ignore:websockets.exceptions.InvalidStatusCode is deprecated:DeprecationWarning"
    ),
]

KEY = "dg-test-key"  # what the shared ``dg`` fixture (tests/conftest.py) accepts
LISTEN_ARGS: dict[str, Any] = dict(
    model="nova-3", encoding="mulaw", sample_rate=8000, channels=1, interim_results=True,
    endpointing=300, utterance_end_ms=1000, vad_events="true", smart_format=True, punctuate=True,
)  # fmt: skip
SPEAK_ARGS: dict[str, Any] = dict(model="aura-2-thalia-en", encoding="mulaw", sample_rate=8000)


def client(server: SandboxDeepgram, key: str = KEY) -> AsyncDeepgramClient:
    env = DeepgramClientEnvironment(
        base=server.http_url, production=server.ws_url, agent=server.ws_url, agent_rest=server.http_url
    )
    return AsyncDeepgramClient(api_key=key, environment=env)


async def frames(conn: Any, audio: bytes, size: int = 160) -> None:
    for i in range(0, len(audio), size):
        await conn.send_media(audio[i : i + size])


async def recv_until(conn: Any, kind: str, limit: float = 5.0) -> list[Any]:
    """Collect messages up to and including the first of type ``kind``."""
    got: list[Any] = []
    async with asyncio.timeout(limit):
        while True:
            msg = await conn.recv()
            got.append(msg)
            if getattr(msg, "type", None) == kind:
                return got


async def test_bad_key_raises_at_connect(dg: SandboxDeepgram) -> None:
    with pytest.raises(ApiError) as err:
        async with client(dg, "wrong").listen.v1.connect(**LISTEN_ARGS):
            pass
    assert err.value.status_code == 401
    with pytest.raises(ApiError):
        async with client(dg, "wrong").speak.v1.connect(**SPEAK_ARGS):
            pass
    assert dg.rejected == 2 and dg.listens == [] and dg.speaks == []


async def test_listen_transcribes_with_vad_interim_final_and_utterance_end(dg: SandboxDeepgram) -> None:
    async with client(dg).listen.v1.connect(**LISTEN_ARGS) as conn:
        await frames(conn, silence(0.2) + encode_speech("Hello there.") + silence(1.5))
        msgs = await recv_until(conn, "UtteranceEnd")
        kinds = [(m.type, getattr(m, "is_final", None)) for m in msgs]
        assert kinds == [
            ("SpeechStarted", None),
            ("Results", False),
            ("Results", True),
            ("UtteranceEnd", None),
        ]
        started, interim, final, end = msgs
        assert started.timestamp == pytest.approx(0.2)
        assert interim.channel.alternatives[0].transcript == "Hello there."
        assert final.speech_final is True and final.from_finalize is False
        alt = final.channel.alternatives[0]
        assert alt.transcript == "Hello there."
        assert [w.word for w in alt.words] == ["hello", "there"]
        assert alt.words[0].start == pytest.approx(0.2) and alt.words[1].end == pytest.approx(
            0.2 + 2 * 2667 / 8000
        )
        assert final.start == 0 and final.duration == pytest.approx(alt.words[1].end + 0.3)
        assert end.last_word_end == pytest.approx(alt.words[1].end)
        session = dg.listens[0]
        assert session.query["encoding"] == "mulaw" and session.query["endpointing"] == "300"
        # a second utterance: the next final starts where the first one ended
        await frames(conn, encode_speech("yes please") + silence(0.4))
        msgs = await recv_until(conn, "Results")  # SpeechStarted, interim
        msgs = await recv_until(conn, "Results")
        assert msgs[-1].is_final and msgs[-1].channel.alternatives[0].transcript == "yes please"
        assert msgs[-1].start == pytest.approx(final.start + final.duration)
        await conn.send_close_stream()
        tail = await recv_until(conn, "Metadata")
        assert tail[-1].duration == pytest.approx(session.bytes_received / 8000)
    assert session.bytes_received == 8000 * 0.2 + 2 * 2667 + 8000 * 1.5 + 2 * 2667 + 8000 * 0.4


async def test_keepalive_keeps_open_and_finalize_flushes(dg: SandboxDeepgram) -> None:
    async with client(dg).listen.v1.connect(**LISTEN_ARGS) as conn:
        await conn.send_keep_alive()
        await frames(conn, encode_speech("one two three"))  # still speaking: no final yet
        await recv_until(conn, "Results")
        await conn.send_finalize()
        msgs = await recv_until(conn, "Results")
        final = msgs[-1]
        assert final.is_final and final.from_finalize and not final.speech_final
        assert final.channel.alternatives[0].transcript == "one two three"
        await conn.send_keep_alive()
        await conn.send_close_stream()
        await recv_until(conn, "Metadata")
    assert dg.listens[0].keepalives == 2 and dg.listens[0].finalizes == 1
    assert dg.listens[0].closed_code == 1000


async def test_drop_listen_closes_with_1011(dg: SandboxDeepgram) -> None:
    async with client(dg).listen.v1.connect(**LISTEN_ARGS) as conn:
        await frames(conn, silence(0.1))
        dg.drop_listen()
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                while True:
                    await conn.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


async def test_speak_flush_audio_decodes_and_clear(dg: SandboxDeepgram) -> None:
    async with client(dg).speak.v1.connect(**SPEAK_ARGS) as conn:
        first = await conn.recv()
        assert first.type == "Metadata"
        await conn.send_text(SpeakV1Text(text="Hi, this is an AI assistant"))
        await conn.send_text(SpeakV1Text(text="calling for Sam."))
        await conn.send_flush()
        msgs = await recv_until(conn, "Flushed")
        chunks = [m for m in msgs if isinstance(m, bytes)]
        audio = b"".join(chunks)
        assert decode_text(audio) == "Hi, this is an AI assistant calling for Sam."
        # rendered word by word, but cut from the clause's byte stream: 800-byte chunks, then the rest
        assert audio == encode_speech("Hi, this is an AI assistant calling for Sam.")
        assert {len(c) for c in chunks[:-1]} == {800} and 0 < len(chunks[-1]) <= 800
        assert msgs[-1].sequence_id == 0
        await conn.send_text(SpeakV1Text(text="never mind"))
        await conn.send_clear()
        cleared = await recv_until(conn, "Cleared")
        assert not any(isinstance(m, bytes) for m in cleared)
        await conn.send_text(SpeakV1Text(text="Tuesday works"))
        await conn.send_flush()
        msgs = await recv_until(conn, "Flushed")
        assert decode_text(b"".join(m for m in msgs if isinstance(m, bytes))) == "Tuesday works"
        assert msgs[-1].sequence_id == 1
        await conn.send_close()
    session = dg.speaks[0]
    assert session.flushes == 2 and session.clears == 1
    assert session.query == {"model": "aura-2-thalia-en", "encoding": "mulaw", "sample_rate": "8000"}


async def test_clear_interrupts_pending_audio() -> None:
    server = SandboxDeepgram(api_key=KEY, tts_ttfb_ms=300)
    await server.start()
    try:
        async with client(server).speak.v1.connect(**SPEAK_ARGS) as conn:
            await recv_until(conn, "Metadata")
            await conn.send_text(SpeakV1Text(text="a long sentence that will be cut"))
            await conn.send_flush()
            await conn.send_clear()
            msgs = await recv_until(conn, "Cleared")
            assert not any(isinstance(m, bytes) for m in msgs)
            await conn.send_flush()  # nothing pending: no audio, just Flushed
            msgs = await recv_until(conn, "Flushed")
            assert not any(isinstance(m, bytes) for m in msgs)
        assert server.speaks[0].audio_bytes_sent == 0
    finally:
        await server.stop()


async def test_drop_speak_closes_with_1011(dg: SandboxDeepgram) -> None:
    async with client(dg).speak.v1.connect(**SPEAK_ARGS) as conn:
        await recv_until(conn, "Metadata")
        dg.drop_speak()
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(5):
                while True:
                    await conn.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


async def test_idle_socket_closes_with_net_0001_and_latency_is_applied() -> None:
    server = SandboxDeepgram(api_key=KEY, idle_timeout=0.3, stt_latency_ms=150)
    await server.start()
    try:
        async with client(server).listen.v1.connect(**LISTEN_ARGS) as conn:
            loop = asyncio.get_running_loop()
            sent_at = loop.time()
            await frames(conn, encode_speech("ok") + silence(0.5))
            msgs = await recv_until(conn, "Results")
            assert loop.time() - sent_at >= 0.15
            assert msgs[0].type == "SpeechStarted"
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(5):
                    while True:
                        await conn.recv()
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, "NET-0001")
    finally:
        await server.stop()
