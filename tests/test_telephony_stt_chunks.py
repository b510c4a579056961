"""Inbound audio goes to the listen socket in chunks (``stt_chunk_ms``), and nothing is held back.

Against the sandbox Deepgram through the real deepgram-sdk: the sandbox counts the bytes and the
KeepAlive messages it received, and a websocket keeps messages in order, so once a KeepAlive sent
after some audio has arrived, all audio sent before it has arrived too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from sandbox.deepgram import SandboxDeepgram
from telephony.speech import SpeechClient

pytestmark = [
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning"),
]

FRAME = b"\xff" * 160  # 20 ms of µ-law silence, as Twilio sends it


async def until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll the sandbox's counters (it exposes no event for "a message arrived")."""
    async with asyncio.timeout(limit):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


@pytest.mark.parametrize(("chunk_ms", "sent_before_close"), [(40, 320), (20, 480), (100, 0)])
async def test_frames_are_sent_in_chunks_and_the_rest_on_close(
    dg: SandboxDeepgram, chunk_ms: int, sent_before_close: int
) -> None:
    speech = SpeechClient(api_key=dg.api_key, http_url=dg.http_url, ws_url=dg.ws_url, stt_chunk_ms=chunk_ms)
    listener = speech.listener()
    task = asyncio.create_task(listener.run())
    try:
        async with asyncio.timeout(5):
            await listener.connected.wait()
        for _ in range(3):
            await listener.send(FRAME)
        await listener._conn.send_keep_alive()  # a marker behind the audio sent so far
        session = dg.listens[0]
        await until(lambda: session.keepalives == 1)
        assert session.bytes_received == sent_before_close
        await listener.close()  # the last partial chunk is not lost
        await until(lambda: session.bytes_received == 480)
    finally:
        await listener.close()
        async with asyncio.timeout(5):
            await task
