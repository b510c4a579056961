"""Deepgram sockets closed with 1011 in the middle of a live call: reconnect, nothing lost, call goes on.

The whole product runs against the sandbox world; the sandbox Deepgram closes
its listen (or speak) socket the way Deepgram does on an internal error. The
call must carry on over a fresh socket and book in that same single call.
"""

from __future__ import annotations

import pytest
from reliability_kit import Stack, assert_clean, callee_said, first_call, scenario_programmer, wait_until

from storage.models import Job, JobState, Speaker

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*BasicAuth.*:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*'auth' parameter.*:DeprecationWarning"),
]


async def test_listen_socket_dropped_while_the_callee_speaks() -> None:
    """Audio that arrives while the listen socket is down is buffered and transcribed after it reopens."""
    stack = await Stack.start()
    try:

        async def drop_mid_offer(stack: Stack, job: Job) -> None:
            call = await first_call(stack, job)
            await callee_said(call, 2)  # "How about Wednesday, ... at 3:30 PM?" is being spoken
            stack.world.deepgram.drop_listen(1011)

        result = await stack.run(scenario_programmer("happy"), during=drop_mid_offer)
    finally:
        await stack.stop()
    assert_clean(result)
    assert result.job.state is JobState.BOOKED, result.history
    assert len(result.calls) == 1  # the same call carried on
    assert len(stack.world.deepgram.listens) >= 2  # dropped and reconnected
    callee = [t.text for t in result.turns if t.speaker is Speaker.CALLEE]
    # the words spoken across the drop were all transcribed
    assert any("How about Wednesday" in t and "3:30" in t for t in callee), callee


async def test_speak_socket_dropped_while_a_clause_waits_for_audio() -> None:
    """A clause whose audio was cut by the drop is spoken again on the new socket, not silently lost."""
    stack = await Stack.start()
    dg = stack.world.deepgram
    dg.tts_ttfb_ms = 300  # each flushed clause waits 300 ms for its first audio: room to drop it

    async def drop_pending_clause(stack: Stack, job: Job) -> None:
        call = await first_call(stack, job)
        await callee_said(call, 1)

        async def clause_pending() -> bool:
            return any(s.flushes and not s.audio_bytes_sent for s in dg.speaks)

        await wait_until(clause_pending, 30, "the assistant's first clause to be sent to TTS")
        dg.drop_speak(1011)

    try:
        result = await stack.run(scenario_programmer("happy"), during=drop_pending_clause)
    finally:
        await stack.stop()
    assert_clean(result)
    assert result.job.state is JobState.BOOKED, result.history
    assert len(result.calls) == 1
    first, second = dg.speaks[0], dg.speaks[1]
    assert first.audio_bytes_sent == 0 and first.texts
    assert second.texts[: len(first.texts)] == first.texts  # resent on the new socket, in order
    heard = result.calls[0].heard
    assert heard and heard[0].startswith("Hi, this is Robin, an AI assistant"), heard
    said = [t for t in result.turns if t.speaker is Speaker.ASSISTANT]
    assert said[0].text.startswith(heard[0]), (said[0].text, heard[0])
