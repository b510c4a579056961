"""The assistant's side of a call: replies streamed to TTS and played to Twilio, DTMF, barge-in.

``ReplyRunner`` owns everything the assistant says: the running reply (one agent reply stream at a
time), the call's ``Playback`` bookkeeping, the TTS socket's use, the marks Twilio echoes back, and
cutting all of that short on barge-in. The session (``telephony.session``) owns the call's tasks,
the media websocket and the inbound audio; it hands the runner explicit collaborators (a send
function, the turn log, the clock, a task spawner, an idle hook, a hang-up hook) and calls its
public methods, so the runner never sees the session itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

from agent.base import Agent, CallerInput, Hangup, Say, SendDigits
from storage.models import CallOutcome, Speaker, Turn
from telephony import audio, media_stream
from telephony.playback import AssistantTurn, Playback
from telephony.speech import Speaker as TtsSpeaker
from telephony.speech import SpeakEvent, TtsAudio, TtsCleared, TtsFlushed
from telephony.turns import SessionConfig, TurnLog

__all__ = ["ReplyRunner"]


class ReplyRunner:
    """Runs the assistant's replies of one call and plays them.

    Args:
        agent: the conversation; its replies are run here, and it is told what a barge-in cut off.
        speaker: the call's TTS socket (the session runs and closes it; only the runner speaks on it).
        log: the call's transcript; assistant turns are opened and settled here.
        config: timing (``first_audio_priority``, ``drain_timeout``).
        clock: monotonic clock for the latency marks.
        send: sends one text message to Twilio's media websocket; False once it can no longer.
        spawn: starts a task the session owns (cancelled and awaited when the call ends).
        phrases: pre-rendered audio of a clause's exact text if there is any (``PhraseCache.ready``):
            such a clause is played from it instead of going through the TTS socket.
        on_idle: the assistant just stopped talking (played out or cut off): silence counts from now.
        on_hangup: the agent hung up and its goodbye has played (or the drain timed out): end the
            call with this outcome.
    """

    def __init__(
        self,
        *,
        agent: Agent,
        speaker: TtsSpeaker,
        log: TurnLog,
        config: SessionConfig,
        clock: Callable[[], float],
        send: Callable[[str], Awaitable[bool]],
        spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
        on_idle: Callable[[], None],
        on_hangup: Callable[[CallOutcome], None],
        phrases: Callable[[str], bytes | None] = lambda _text: None,
    ) -> None:
        self._agent = agent
        self._speaker = speaker
        self._log = log
        self._cfg = config
        self._clock = clock
        self._send = send
        self._spawn = spawn
        self._on_idle = on_idle
        self._on_hangup = on_hangup
        self._phrases = phrases
        self._ready_lock = asyncio.Lock()  # pre-rendered audio goes out whole, never interleaved
        self._playback: Playback | None = None
        self._task: asyncio.Task[None] | None = None
        self._hangup_pending = False
        self._changed = asyncio.Event()

    # --- state the session reads --------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A reply is being produced, or its audio is not fully played yet."""
        reply = self._task is not None and not self._task.done()
        return reply or (self._playback is not None and not self._playback.idle)

    @property
    def hangup_pending(self) -> bool:
        """The agent has said goodbye: no new reply starts, and the goodbye cannot be cut off."""
        return self._hangup_pending

    # --- inputs from the session --------------------------------------------------------------

    def attach(self, stream_sid: str) -> None:
        """The media stream is connected: audio can be played on ``stream_sid`` from now on."""
        self._playback = Playback(stream_sid)

    def start(self, event: CallerInput) -> AssistantTurn | None:
        """Answer ``event`` (replacing a reply still running); None once the agent has hung up.

        Returns the new turn at once, so the caller can record its latency marks.
        """
        if self._hangup_pending:
            return None
        previous = self._task
        turn = self._log.open(self._log.since_start(self._clock()))
        self._task = self._spawn(self._reply(event, turn, previous))
        return turn

    def on_mark(self, name: str) -> None:
        """Twilio echoed a mark: the audio before it has played."""
        assert self._playback is not None
        clause = self._playback.on_mark(name)
        if clause is not None:
            self._settled(clause.turn)

    async def on_speak(self, ev: SpeakEvent) -> None:
        """An event from the TTS socket: audio to forward, or a clause finished / cleared."""
        playback = self._playback
        assert playback is not None
        if isinstance(ev, TtsAudio):
            clause = playback.tts_clause
            if clause is None:
                return  # stale audio of a cleared reply
            turn = clause.turn
            if turn.tts_first_byte is None:
                turn.tts_first_byte = self._clock()
            await self._play(turn, playback.take(clause, ev.data))
        elif isinstance(ev, TtsFlushed):
            head = playback.tts_clause
            if head is not None and head.held:
                await self._play(head.turn, playback.take(head, b"", final=True))
            clause = playback.on_flushed()
            if clause is not None:
                self._settled(clause.turn)
            await self._play_ready()  # a pre-rendered clause waiting behind the one just flushed
            self._changed.set()
        elif isinstance(ev, TtsCleared):
            playback.on_cleared()

    async def barge_in(self, heard_at: float) -> None:
        """Cut the assistant off; ``heard_at``: when the speech event reached us (reaction figure)."""
        if self._hangup_pending or self._playback is None:
            return
        reply = self._task
        if reply is not None and not reply.done():
            reply.cancel()
        cut = self._playback.clear()
        await self._send(media_stream.clear_msg(self._playback.stream_sid))
        barge_in_ms = (self._clock() - heard_at) * 1000.0
        await self._speaker.clear()
        if reply is not None:
            await asyncio.wait([reply])
        self._on_idle()
        for turn in cut:
            heard = turn.heard_text()
            self._log.close(turn, interrupted=True, barge_in_ms=barge_in_ms)
            self._agent.interrupted(heard)
        if not cut and reply is not None:
            self._agent.interrupted("")  # cut off while still thinking: nothing was heard
        self._changed.set()

    # --- the reply ----------------------------------------------------------------------------

    async def _reply(
        self, event: CallerInput, turn: AssistantTurn, previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None and not previous.done():
            previous.cancel()
            await asyncio.wait([previous])
        assert self._playback is not None
        playback = self._playback
        hangup: Hangup | None = None
        actions = self._agent.reply(event)
        try:
            async for action in actions:
                if isinstance(action, Say):
                    if turn.llm_first_token is None:
                        turn.llm_first_token = action.first_token_at or self._clock()
                    text = action.text.strip()
                    if text:
                        ready = self._phrases(text)
                        playback.add_clause(text, turn, ready)
                        if ready is None:
                            await self._speaker.speak(action.text)
                            await self._speaker.flush()
                        else:
                            await self._play_ready()
                        await self._first_audio_first(turn)
                elif isinstance(action, SendDigits):
                    await self._press(action.digits, turn)
                elif isinstance(action, Hangup):
                    hangup = action
                    self._hangup_pending = True  # committed: the goodbye is not barge-in-able
                    break
        finally:
            await actions.aclose()
            turn.reply_done = True
            if not turn.clauses:
                turn.closed = True  # said nothing: no transcript line
            self._settled(turn)
        if hangup is not None:
            await self._wait_until(lambda: playback.idle, self._cfg.drain_timeout)
            self._on_hangup(hangup.outcome)

    async def _first_audio_first(self, turn: AssistantTurn) -> None:
        """Let the turn's first audio through before the reply does more work.

        The rest of the model's answer is often buffered already (always, when it was started
        early), and a tool round costs a few milliseconds of this loop. Done first, either would sit
        between the first clause's audio arriving from TTS and its forwarding to Twilio: the audio
        takes several hops through the loop (SDK socket task, listener, runner) and each waits
        behind it. The wait is bounded (``SessionConfig.first_audio_priority``): with a real TTS
        (~100-200 ms to the first byte) later clauses are only sent a little later, long before
        they are needed, and a tool round starts at most that much later while the acknowledgement
        plays.
        """
        if turn.first_audio_out is None:
            await self._wait_until(lambda: turn.first_audio_out is not None, self._cfg.first_audio_priority)
        else:
            await asyncio.sleep(0)  # a clause's audio goes out before the next clause is parsed

    async def _play_ready(self) -> None:
        """Send the pre-rendered clauses now at the head of the queue (``Playback.take_ready``).

        Called by the reply (a clause just added) and by the TTS receive task (the clause before
        them has all its audio); the lock keeps one's messages from interleaving with the other's.
        """
        assert self._playback is not None
        async with self._ready_lock:
            for clause, messages in self._playback.take_ready():
                turn = clause.turn
                if turn.tts_first_byte is None:
                    turn.tts_first_byte = self._clock()  # its audio was here before it was due
                for media, mark in messages:
                    # Stamped as the frame is handed over, not after the send returns: a busy
                    # loop can finish the await after the far end has already heard it.
                    handed_at = self._clock()
                    if clause.cancelled or not await self._send(media):
                        break
                    if turn.first_audio_out is None:
                        turn.first_audio_out = handed_at
                        self._changed.set()
                    await self._send(mark)

    async def _press(self, digits: str, turn: AssistantTurn) -> None:
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

    async def _play(self, turn: AssistantTurn, pieces: Iterator[tuple[str, str]]) -> None:
        for media, mark in pieces:
            handed_at = self._clock()  # as the frame is handed over (see _play_ready)
            if not await self._send(media):
                return
            if turn.first_audio_out is None:
                turn.first_audio_out = handed_at
                self._changed.set()  # the reply holds back until now (_first_audio_first)
            await self._send(mark)

    def _settled(self, turn: AssistantTurn) -> None:
        if not turn.closed and turn.played_out:
            self._log.close(turn, interrupted=False)
            self._on_idle()
        self._changed.set()

    async def _wait_until(self, predicate: Callable[[], bool], limit: float) -> bool:
        try:
            async with asyncio.timeout(limit):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True
