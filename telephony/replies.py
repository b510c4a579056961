"""The assistant's side of a call: replies streamed to TTS, DTMF presses, and barge-in.

Split from ``telephony.session`` (which owns the call's tasks and the inbound audio) so each file
holds one responsibility; ``CallSession`` binds these functions as its methods and owns all the state.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from agent.base import CallerInput, Hangup, Say, SendDigits
from storage.models import Speaker, Turn
from telephony import audio, media_stream
from telephony.playback import AssistantTurn

if TYPE_CHECKING:
    from telephony.session import CallSession


def start_reply(self: CallSession, event: CallerInput) -> AssistantTurn | None:
    if self._ended.is_set() or self._hangup_pending or self._tg is None:
        return None
    previous = self._reply_task
    turn = self._log.open(self._log.since_start(self._clock()))
    self._reply_task = self._spawn(self._reply(event, turn, previous))
    return turn


async def reply(
    self: CallSession, event: CallerInput, turn: AssistantTurn, previous: asyncio.Task[None] | None
) -> None:
    if previous is not None and not previous.done():
        previous.cancel()
        await asyncio.wait([previous])
    assert self._playback is not None
    playback = self._playback
    hangup: Hangup | None = None
    replies = self._agent.reply(event)
    try:
        async for action in replies:
            if isinstance(action, Say):
                if turn.llm_first_token is None:
                    turn.llm_first_token = action.first_token_at or self._clock()
                if action.text.strip():
                    playback.add_clause(action.text.strip(), turn)
                    await self.speaker.speak(action.text)
                    await self.speaker.flush()
                    await _first_audio_first(self, turn)
            elif isinstance(action, SendDigits):
                await self._press(action.digits, turn)
            elif isinstance(action, Hangup):
                hangup = action
                self._hangup_pending = True  # committed: the goodbye is not barge-in-able
                break
    finally:
        aclose = getattr(replies, "aclose", None)
        if aclose is not None:
            await aclose()
        turn.reply_done = True
        if not turn.clauses:
            turn.closed = True  # said nothing: no transcript line
        self._settled(turn)
    if hangup is not None:
        await self._wait_until(lambda: playback.idle, self._cfg.drain_timeout)
        self.end("assistant hung up", hangup.outcome, hang_up=True)


async def _first_audio_first(self: CallSession, turn: AssistantTurn) -> None:
    """Let the turn's first audio through before the reply does more work.

    The rest of the model's answer is often buffered already (always, when it was started early),
    and a tool round costs a few milliseconds of this loop. Done first, either would sit between
    the first clause's audio arriving from TTS and its forwarding to Twilio: the audio takes
    several hops through the loop (SDK socket task, listener, session) and each waits behind it.
    The wait is bounded (``SessionConfig.first_audio_priority``): with a real TTS (~100-200 ms to
    the first byte) later clauses are only sent a little later, long before they are needed, and a
    tool round starts at most that much later while the acknowledgement plays.
    """
    if turn.first_audio_out is None:
        await self._wait_until(lambda: turn.first_audio_out is not None, self._cfg.first_audio_priority)
    else:
        await asyncio.sleep(0)  # a clause's audio goes out before the next clause is parsed


async def press(self: CallSession, digits: str, turn: AssistantTurn) -> None:
    assert self._playback is not None
    playback = self._playback
    # tones must follow the clauses already queued, not overtake them
    await self._wait_until(lambda: playback.tts_idle, self._cfg.drain_timeout)
    clause = playback.add_tones(turn)
    self._log.add(Turn(Speaker.ASSISTANT, f"[pressed {digits}]", at=self._log.since_start(self._clock())))
    for media, mark in playback.pieces(clause, audio.dtmf_tones(digits)):
        if not await self._send(media):
            return
        await self._send(mark)


async def barge_in(self: CallSession, heard_at: float) -> None:
    """Cut the assistant off; ``heard_at``: when the speech event reached us (reaction figure)."""
    if self._hangup_pending or self._playback is None:
        return
    reply = self._reply_task
    if reply is not None and not reply.done():
        reply.cancel()
    cut = self._playback.clear()
    await self._send(media_stream.clear_msg(self._playback.stream_sid))
    barge_in_ms = (self._clock() - heard_at) * 1000.0
    await self.speaker.clear()
    if reply is not None:
        await asyncio.wait([reply])
    self._timers.idle_since = self._audio_s
    for turn in cut:
        heard = turn.heard_text()
        self._log.close(turn, interrupted=True, barge_in_ms=barge_in_ms)
        self._agent.interrupted(heard)
    if not cut and reply is not None:
        self._agent.interrupted("")  # cut off while still thinking: nothing was heard
    self._notify()
