"""Socket events handed straight to a handler (``Reconnecting.deliver_to``), in order, none lost.

Against the sandbox Deepgram speak socket through the real deepgram-sdk: events that arrive before
a handler is attached wait in ``events`` and reach the handler first; afterwards each event is
handled in the socket's own receive task (no queue hop) and ``events`` stays empty.
"""

from __future__ import annotations

import asyncio

import pytest

from sandbox.deepgram import SandboxDeepgram
from sandbox.speech import decode_text
from telephony.speech import SpeakEvent, SpeechClient, TtsAudio, TtsFlushed

pytestmark = [
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning"),
]


async def test_queued_events_first_then_straight_from_the_receive_task(dg: SandboxDeepgram) -> None:
    speaker = SpeechClient(api_key=dg.api_key, http_url=dg.http_url, ws_url=dg.ws_url).speaker()
    run = asyncio.create_task(speaker.run())
    got: list[SpeakEvent] = []
    tasks: set[asyncio.Task[object] | None] = set()
    second_flushed = asyncio.Event()

    async def handler(ev: SpeakEvent) -> None:
        got.append(ev)
        tasks.add(asyncio.current_task())
        await asyncio.sleep(0)  # a handler may await (the session sends to Twilio)
        if isinstance(ev, TtsFlushed) and sum(isinstance(e, TtsFlushed) for e in got) == 2:
            second_flushed.set()

    try:
        async with asyncio.timeout(5):
            await speaker.connected.wait()
            await speaker.speak("first clause")
            await speaker.flush()
            while not any(isinstance(e, TtsFlushed) for e in list(speaker.events._queue)):  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            queued = speaker.events.qsize()
            await speaker.deliver_to(handler)
            assert speaker.events.empty()
            assert len(got) == queued and isinstance(got[-1], TtsFlushed)
            tasks.clear()  # the queued ones were handed over by deliver_to's caller

            await speaker.speak("second clause")
            await speaker.flush()
            await second_flushed.wait()
        assert speaker.events.empty()
        assert tasks == {run}  # handled where the socket's messages are read
        audio = [e.data for e in got if isinstance(e, TtsAudio)]
        assert decode_text(b"".join(audio)) == "first clause second clause"
    finally:
        await speaker.close()
        async with asyncio.timeout(5):
            await run
