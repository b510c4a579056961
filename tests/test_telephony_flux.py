"""The Flux listener (``/v2/listen``) through the real deepgram-sdk against the sandbox Deepgram."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from sandbox.deepgram import SandboxDeepgram
from sandbox.speech import encode_speech, silence
from telephony import stt_flux
from telephony.speech import (
    EagerEndOfTurn,
    FluxListener,
    Listener,
    SpeechClient,
    SpeechStarted,
    Transcript,
    TurnResumed,
)
from telephony.speech_common import ListenEvent

pytestmark = [
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning"),
]

FRAME = 160  # bytes of one 20 ms Twilio frame
KEEPALIVE_BYTES = 320  # the 40 ms of silence stt_flux sends while the phone rings


def flux(dg: SandboxDeepgram, eager: float | None = 0.5) -> SpeechClient:
    return SpeechClient(
        api_key=dg.api_key,
        http_url=dg.http_url,
        ws_url=dg.ws_url,
        stt_model="flux-general-en",
        stt_chunk_ms=40,
        eager_eot_threshold=eager,
    )


@contextlib.asynccontextmanager
async def running(listener: Listener) -> AsyncIterator[Listener]:
    """``listener.run()`` in a task, connected on entry; closed and awaited on exit."""
    task = asyncio.create_task(listener.run())
    try:
        async with asyncio.timeout(5):
            await listener.connected.wait()
        yield listener
    finally:
        await listener.close()
        async with asyncio.timeout(5):
            await task


async def play(listener: Listener, audio: bytes) -> None:
    for i in range(0, len(audio), FRAME):
        await listener.send(audio[i : i + FRAME])
        await asyncio.sleep(0)


async def events_until_final(listener: Listener, limit: float = 5.0) -> list[ListenEvent]:
    out: list[ListenEvent] = []
    async with asyncio.timeout(limit):
        while True:
            ev = await listener.events.get()
            out.append(ev)
            if isinstance(ev, Transcript) and ev.speech_final:
                return out


async def test_a_turn_maps_to_speech_started_interims_eager_and_a_final(dg: SandboxDeepgram) -> None:
    listener = flux(dg).listener()
    assert isinstance(listener, FluxListener)
    async with running(listener):
        sent_at = time.monotonic()
        await play(listener, encode_speech("Yes we have Tuesday at three.") + silence(0.5))
        events = await events_until_final(listener)
    query = dg.listens[0].query
    assert query["model"] == "flux-general-en" and query["encoding"] == "mulaw"
    assert query["eager_eot_threshold"] == "0.5" and query["eot_threshold"] == "0.7"
    assert isinstance(events[0], SpeechStarted) and events[0].onset is not None
    assert any(isinstance(e, Transcript) and not e.is_final and e.text for e in events)
    eager = [e for e in events if isinstance(e, EagerEndOfTurn)]
    final = events[-1]
    assert isinstance(final, Transcript) and final.is_final
    assert final.text == "Yes we have Tuesday at three."
    assert [e.text for e in eager] == [final.text]  # Flux's promise: the final repeats the eager text
    assert final.speech_end is not None and final.speech_end >= sent_at


async def test_without_eager_mode_there_is_no_early_event(dg: SandboxDeepgram) -> None:
    async with running(flux(dg, eager=None).listener()) as listener:
        await play(listener, encode_speech("Please hold.") + silence(0.5))
        events = await events_until_final(listener)
    assert "eager_eot_threshold" not in dg.listens[0].query
    assert not any(isinstance(e, EagerEndOfTurn | TurnResumed) for e in events)
    assert isinstance(events[-1], Transcript) and events[-1].text == "Please hold."


async def test_while_the_phone_rings_silence_keeps_the_socket_open_and_times_stay_right(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stt_flux, "KEEPALIVE_SECONDS", 0.05)
    async with SandboxDeepgram(api_key="dg-test-key", idle_timeout=0.3) as dg:
        listener = flux(dg).listener()
        async with running(listener):
            # No call audio yet. Keep-alives go out at least 0.05 s apart, so once this many have
            # arrived the socket has lived through twice the sandbox's idle timeout.
            async with asyncio.timeout(10):
                while not dg.listens or dg.listens[0].bytes_received < 12 * KEEPALIVE_BYTES:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)  # the sandbox records, it does not notify
            assert listener.connections == 1 and dg.listens[0].bytes_received > 0
            lead_in = listener._lead_in
            assert lead_in == dg.listens[0].bytes_received
            sent_at = time.monotonic()
            await play(listener, encode_speech("Hello?") + silence(0.5))
            events = await events_until_final(listener)
    final = events[-1]
    assert isinstance(final, Transcript) and final.text == "Hello?"
    # the lead-in silence is not counted as call audio: the word's end maps to when it was sent
    assert final.speech_end is not None and final.speech_end >= sent_at
    assert listener.connections == 1 and listener._lead_in == lead_in
