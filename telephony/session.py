"""One live call: Twilio audio in → Deepgram STT → agent → Deepgram TTS → Twilio audio out.

A session is created as soon as the call exists (the first status callback,
i.e. while the phone rings) so its Deepgram sockets are open before anyone
answers; the media-stream websocket is attached when Twilio connects it.
Everything is a handful of owned tasks in one ``TaskGroup`` joined by queues of
small frozen events; ending the call cancels and awaits all of them.

Timers (greeting, silence) count *audio* time — bytes received from Twilio,
which arrive in real time on a real call — so behaviour does not depend on how
fast a sandbox replays a conversation; the hard cap also has a wall-clock guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web

from agent.base import (
    Agent,
    CallConnected,
    CalleeSaid,
    CalleeSilent,
    DigitsHeard,
)
from storage.errors import ProviderError
from storage.models import CallOutcome, Job, OutcomeKind, Speaker, Turn
from telephony import audio, frame_stats, media_stream, replies
from telephony.frame_stats import FrameStats
from telephony.playback import AssistantTurn, Playback
from telephony.speech import (
    EagerEndOfTurn,
    ListenEvent,
    SpeakEvent,
    SpeechStarted,
    TtsAudio,
    TtsCleared,
    TtsFlushed,
    TurnResumed,
    UtteranceEnd,
)
from telephony.speech import Transcript as SttTranscript
from telephony.turns import HangUpper, SessionConfig, SpeechFactory, Timers, TurnLog

__all__ = ["CallSession", "SessionConfig"]

log = logging.getLogger(__name__)


class CallSession:
    """A live call. ``run()`` owns everything; ``attach()`` hands over the media websocket.

    Args:
        job: the errand being called about.
        call_sid: Twilio's id of this call.
        agent: the conversation (one per call).
        speech: builds the Deepgram listener and speaker.
        placer: hangs the call up through the REST API.
        config: timing.
        clock: monotonic clock for latency figures.
    """

    def __init__(
        self,
        job: Job,
        call_sid: str,
        *,
        agent: Agent,
        speech: SpeechFactory,
        placer: HangUpper,
        config: SessionConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job = job
        self.call_sid = call_sid
        self._agent = agent
        self._placer = placer
        self._cfg = config or SessionConfig()
        self._clock = clock
        self.listener = speech.listener()
        self.speaker = speech.speaker()
        self._attached = asyncio.Event()
        self._ended = asyncio.Event()
        self._finished = asyncio.Event()
        self._changed = asyncio.Event()
        self._ws: web.WebSocketResponse | None = None
        self._playback: Playback | None = None
        self._tx_lock = asyncio.Lock()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reply_task: asyncio.Task[None] | None = None
        self._log = TurnLog()
        self._audio_bytes = 0
        self._end_reason = ""
        self._end_outcome: CallOutcome | None = None
        self._hang_up_at_end = False
        self._hangup_pending = False
        self._error: BaseException | None = None
        self._timers = Timers(greet_after=self._cfg.greet_after, silence_timeout=self._cfg.silence_timeout)
        self._utterance: list[str] = []
        self._utterance_at: float | None = None
        self._speech_started_at: float | None = None
        self.frame_stats = FrameStats()

    # --- public API ---------------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    @property
    def end_reason(self) -> str:
        return self._end_reason

    async def attach(self, ws: web.WebSocketResponse, start: media_stream.Start) -> None:
        """Give the session the Twilio media websocket; returns when the call is over with it."""
        if self._ws is not None or self._finished.is_set():
            return
        self._ws = ws
        self._playback = Playback(start.stream_sid)
        self._attached.set()
        await self._finished.wait()

    def end(self, reason: str, outcome: CallOutcome | None = None, *, hang_up: bool = False) -> None:
        """End the call (idempotent: the first reason wins)."""
        if self._ended.is_set():
            return
        log.info("call %s ending: %s", self.call_sid, reason)
        self._end_reason = reason
        self._end_outcome = outcome
        self._hang_up_at_end = hang_up
        self._ended.set()

    async def run(self) -> tuple[CallOutcome, list[Turn]]:
        """Live the whole call; returns its outcome and transcript."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._spawn(self.listener.run())
                self._spawn(self.speaker.run())
                self._spawn(self._call())
                self._spawn(self._wall_clock_cap())
                await self._ended.wait()
                await self.listener.close()
                await self.speaker.close()
                for task in list(self._tasks):
                    task.cancel()
        except* ProviderError as eg:
            self._error = eg.exceptions[0]
            log.warning("call %s failed: %s", self.call_sid, self._error)
            self.end(f"provider error: {self._error}", hang_up=True)
        except* Exception as eg:  # the call must still end with a result
            self._error = eg.exceptions[0]
            log.error("call %s crashed", self.call_sid, exc_info=self._error)
            self.end("internal error", hang_up=True)
        finally:
            self._tg = None
            await self._finish()
            frame_stats.TOTALS.merge(self.frame_stats)
        return self._result()

    # --- plumbing -----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        assert self._tg is not None
        task = self._tg.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _notify(self) -> None:
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

    @property
    def _audio_s(self) -> float:
        return self._audio_bytes / audio.BYTES_PER_SECOND

    async def _send(self, text: str) -> bool:
        ws = self._ws
        if ws is None or ws.closed:
            return False
        async with self._tx_lock:
            try:
                await ws.send_str(text)
            except (ConnectionError, aiohttp.ClientError, RuntimeError):
                self.end("media stream closed", hang_up=True)
                return False
        return True

    async def _finish(self) -> None:
        close_agent = getattr(self._agent, "aclose", None)  # optional: agents owning background work
        if close_agent is not None:
            await close_agent()
        if self._hang_up_at_end:
            try:
                await self._placer.hang_up(self.call_sid)
            except ProviderError as e:
                log.warning("call %s: hang-up failed: %s", self.call_sid, e)
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
                await self._ws.close()
        self._finished.set()

    def _result(self) -> tuple[CallOutcome, list[Turn]]:
        for turn in self._log.open_turns():
            self._log.close(turn, interrupted=not turn.played_out)
        outcome = self._end_outcome
        if outcome is None and self._error is None:
            outcome = self._agent.outcome()
        if outcome is None:
            summary = f"call failed: {self._error}" if self._error else "call ended before a result"
            outcome = CallOutcome(OutcomeKind.ERROR, summary=summary)
        if outcome.call_sid is None:
            outcome = replace(outcome, call_sid=self.call_sid)
        return outcome, self._log.turns()

    async def _wall_clock_cap(self) -> None:
        await asyncio.sleep(self._cfg.max_call_seconds)
        self.end("call time limit", hang_up=True)

    # --- the call -----------------------------------------------------------------------------

    async def _call(self) -> None:
        try:
            async with asyncio.timeout(self._cfg.attach_timeout):
                await self._attached.wait()
        except TimeoutError:
            self.end("media stream never connected", hang_up=True)
            return
        self._log.started_at = self._clock()
        # Events are handled in the sockets' own receive tasks from here on (deliver_to).
        await self.speaker.deliver_to(self._on_speak)
        await self.listener.deliver_to(self._on_listen)
        await self._twilio_rx()

    async def _twilio_rx(self) -> None:
        ws = self._ws
        assert ws is not None and self._playback is not None
        playback = self._playback
        clock, frames = self._clock, self.frame_stats
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            ev = media_stream.parse(msg.data)
            if isinstance(ev, media_stream.Media):
                received = clock()
                self._audio_bytes += len(ev.payload)
                await self.listener.send(ev.payload)  # hot path: bytes as Twilio sent them
                frames.record(received, clock(), ev.timestamp_ms)
                self._tick()
            elif isinstance(ev, media_stream.Mark):
                clause = playback.on_mark(ev.name)
                if clause is not None:
                    self._settled(clause.turn)
            elif isinstance(ev, media_stream.Dtmf):
                self._start_reply(DigitsHeard(ev.digit))
            elif isinstance(ev, media_stream.Stop):
                self.end("callee hung up")
                return
        # closed without a stop: we can no longer talk, so end the call at Twilio too
        self.end("media stream dropped", hang_up=True)

    def _settled(self, turn: AssistantTurn) -> None:
        if not turn.closed and turn.played_out:
            self._log.close(turn, interrupted=False)
            self._timers.idle_since = self._audio_s
        self._notify()

    def _assistant_busy(self) -> bool:
        reply = self._reply_task is not None and not self._reply_task.done()
        return reply or (self._playback is not None and not self._playback.idle)

    def _tick(self) -> None:
        now = self._audio_s
        if now >= self._cfg.max_call_seconds:
            self.end("call time limit", hang_up=True)
            return
        if self._assistant_busy() or self._hangup_pending or self._utterance:
            return
        due = self._timers.due(now)
        if due == "greet":
            self._start_reply(CallConnected())
        elif due == "prompt":
            self._start_reply(CalleeSilent(round(self._timers.quiet(now), 1)))
        elif due == "give_up":
            self.end("callee silent", hang_up=True)

    async def _on_listen(self, ev: ListenEvent) -> None:
        if isinstance(ev, SpeechStarted):
            self._timers.callee_active(self._audio_s)
            self._speech_started_at = ev.onset or ev.t
            if self._utterance_at is None:
                self._utterance_at = self._log.since_start(self._speech_started_at)
            if self._assistant_busy():
                await self._barge_in(ev.t)  # reaction is measured from the event's receipt
        elif isinstance(ev, SttTranscript):
            if ev.text.strip():
                self._timers.callee_active(self._audio_s)
                if self._utterance_at is None:
                    self._utterance_at = self._log.since_start(ev.t)
                if not ev.is_final and self._assistant_busy():
                    await self._barge_in(ev.t)
                if ev.is_final:
                    self._utterance.append(ev.text.strip())
            if ev.speech_final and self._utterance:
                self._utterance_done(ev)
        elif isinstance(ev, UtteranceEnd) and self._utterance:
            self._utterance_done(None)
        elif isinstance(ev, EagerEndOfTurn):
            self._prepare(ev.text)
        elif isinstance(ev, TurnResumed):
            discard = getattr(self._agent, "discard_prepared", None)
            if discard is not None:
                discard()

    def _prepare(self, text: str) -> None:
        """Start the model on a turn that has probably ended (Flux eager mode; ``agent.early``).

        Only between replies: while the assistant is talking, the turn's end cuts a reply short
        and the history that request was made with would no longer hold.
        """
        prepare = getattr(self._agent, "prepare", None)  # optional, like ``aclose``
        if prepare is None or self._assistant_busy() or self._hangup_pending or self._ended.is_set():
            return
        words = " ".join([*self._utterance, text.strip()])
        if words:
            prepare(CalleeSaid(words))

    def _utterance_done(self, final: SttTranscript | None) -> None:
        text = " ".join(self._utterance)
        at = self._utterance_at or 0.0
        self._utterance, self._utterance_at, self._speech_started_at = [], None, None
        self._timers.last_callee_activity = self._audio_s
        self._log.add(Turn(Speaker.CALLEE, text, at=at))
        turn = self._start_reply(CalleeSaid(text))
        if turn is not None:
            turn.stt_final = final.t if final else self._clock()
            turn.speech_end = final.speech_end if final else None

    async def _on_speak(self, ev: SpeakEvent) -> None:
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
            self._notify()
        elif isinstance(ev, TtsCleared):
            playback.on_cleared()

    async def _play(self, turn: AssistantTurn, pieces: Iterator[tuple[str, str]]) -> None:
        for media, mark in pieces:
            if not await self._send(media):
                return
            if turn.first_audio_out is None:
                turn.first_audio_out = self._clock()
                self._notify()  # the reply holds back until now (replies._first_audio_first)
            await self._send(mark)

    # --- replies and barge-in (telephony.replies) ---------------------------------------------

    _start_reply = replies.start_reply
    _reply = replies.reply
    _press = replies.press
    _barge_in = replies.barge_in
