"""One live call: Twilio audio in → Deepgram STT → agent → Deepgram TTS → Twilio audio out.

A session is created as soon as the call exists (the first status callback,
i.e. while the phone rings) so its Deepgram sockets are open before anyone
answers; the media-stream websocket is attached when Twilio connects it.
Everything is a handful of owned tasks in one ``TaskGroup`` joined by queues of
small frozen events; ending the call cancels and awaits all of them. The session owns those
tasks, the media websocket and the inbound side (audio to STT, the callee's turns, the timers);
everything the assistant says (replies, playback, DTMF, barge-in) is ``telephony.replies.ReplyRunner``'s.

Timers (greeting, silence, hold) count *audio* time — bytes received from Twilio,
which arrive in real time on a real call — so behaviour does not depend on how
fast a sandbox replays a conversation; the hard cap also has a wall-clock guard. When the agent
agrees to hold (``Agent.holds``), the session waits silently — no prompt, no give-up on silence —
for up to ``SessionConfig.hold_max``, until the callee's next words. Entering and leaving that
wait is reported to an injected ``on_hold`` callback (the chat shows "On hold since 14:02").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web

from agent.base import (
    Agent,
    CallConnected,
    CalleeSaid,
    CalleeSilent,
    CallerInput,
    DigitsHeard,
    MachineBeep,
)
from storage.errors import ProviderError
from storage.models import CallOutcome, Job, OutcomeKind, Speaker, Turn
from telephony import audio, media_stream
from telephony.frame_stats import CallMetrics, FrameStats, MetricsSink
from telephony.playback import AssistantTurn
from telephony.replies import ReplyRunner
from telephony.speech import (
    EagerEndOfTurn,
    ListenEvent,
    SpeechStarted,
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
        metrics: receives the call's ``CallMetrics`` once it has ended (the benchmark's figures).
        on_hold: told ``True`` when the call goes on hold and ``False`` when the callee is back
            (the dispatcher's ``call_on_hold``, bound to the errand). Called only on a change,
            one call at a time and in order; a call that ends on hold is not told ``False``.
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
        metrics: MetricsSink | None = None,
        on_hold: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self.job = job
        self.call_sid = call_sid
        self._agent = agent
        self._placer = placer
        self._cfg = config or SessionConfig()
        self._clock = clock
        self._metrics = metrics
        self.listener = speech.listener()
        self.speaker = speech.speaker()
        self._phrases = speech.phrases
        self._attached = asyncio.Event()
        self._ended = asyncio.Event()
        self._finished = asyncio.Event()
        self._ws: web.WebSocketResponse | None = None
        self._tx_lock = asyncio.Lock()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._log = TurnLog()
        self._audio_bytes = 0
        self._end_reason = ""
        self._end_outcome: CallOutcome | None = None
        self._hang_up_at_end = False
        self._error: BaseException | None = None
        self._timers = Timers(
            greet_after=self._cfg.greet_after,
            silence_timeout=self._cfg.silence_timeout,
            hold_max=self._cfg.hold_max,
        )
        self._holds_seen = 0  # the agent's hold count already turned into hold mode
        self._on_hold = on_hold
        self._hold_changed = asyncio.Event()  # wakes _report_holds
        self._utterance: list[str] = []
        self._utterance_at: float | None = None
        self._speech_started_at: float | None = None
        #: A reply started on ``EagerEndOfTurn`` (the fixed opening) and the words it answers: the
        #: ``EndOfTurn`` with the same words starts no second reply; ``TurnResumed`` cuts it off.
        self._eager_reply: str | None = None
        self._machine = False  # an answering machine has beeped: its audio is not a callee talking
        self.frame_stats = FrameStats()
        self._replies = ReplyRunner(
            agent=agent,
            speaker=self.speaker,
            log=self._log,
            config=self._cfg,
            clock=clock,
            send=self._send,
            spawn=self._spawn,
            on_idle=self._assistant_idle,
            on_hangup=lambda outcome: self.end("assistant hung up", outcome, hang_up=True),
            phrases=self._phrases.ready,
        )

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
        self._replies.attach(start.stream_sid)
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

    def machine_beeped(self, fallback: CallOutcome) -> None:
        """An answering machine has beeped: the agent leaves its message and hangs up.

        Whatever the assistant was saying over the greeting is cut off (it is not on the recording).
        Before the media stream is up, or once the agent has already hung up, there is no message to
        leave: the call ends at once with ``fallback``.
        """
        if self._ended.is_set():
            return
        if self._tg is None or not self._attached.is_set() or self._replies.hangup_pending:
            self.end("voicemail", fallback, hang_up=True)
            return
        self._machine = True
        self._spawn(self._leave_voicemail())

    async def _leave_voicemail(self) -> None:
        self._eager_reply = None
        await self._replies.barge_in(self._clock())
        self._utterance, self._utterance_at, self._speech_started_at = [], None, None
        self._replies.start(MachineBeep())

    async def run(self) -> tuple[CallOutcome, list[Turn]]:
        """Live the whole call; returns its outcome and transcript."""
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._spawn(self.listener.run())
                self._spawn(self.speaker.run())
                self._spawn(self._prerender())
                self._spawn(self._call())
                self._spawn(self._wall_clock_cap())
                if self._on_hold is not None:
                    self._spawn(self._report_holds())
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
            self._report_metrics()
        return self._result()

    # --- plumbing -----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        assert self._tg is not None
        task = self._tg.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

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
        await self._agent.aclose()
        if self._hang_up_at_end:
            try:
                await self._placer.hang_up(self.call_sid)
            except ProviderError as e:
                log.warning("call %s: hang-up failed: %s", self.call_sid, e)
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
                await self._ws.close()
        self._finished.set()

    def _report_metrics(self) -> None:
        if self._metrics is None:
            return
        try:
            prepared = self._agent.prepared_counts()
            self._metrics(
                CallMetrics(
                    self.call_sid,
                    self.job.id,
                    self.frame_stats,
                    prepared_started=prepared.started,
                    prepared_discarded=prepared.discarded,
                )
            )
        except Exception:  # a subscriber's bug must not cost the call its outcome
            log.exception("call %s: the metrics sink failed", self.call_sid)

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

    async def _prerender(self) -> None:
        """Render the agent's fixed phrases (its opening) now, while the phone rings.

        The opening is then played the moment the callee's greeting ends, with no TTS wait; one
        not rendered in time is simply spoken through the call's TTS socket.
        """
        await asyncio.gather(*(self._phrases.audio(text) for text in self._agent.fixed_phrases()))

    async def _report_holds(self) -> None:
        """Tell ``on_hold`` each change of the hold state, one at a time, from one owned task.

        Entering and leaving hold happen on the audio path, which must not wait for the chat;
        here a slow report is simply followed by the latest state (a hold that began and ended
        meanwhile costs no edits at all).
        """
        assert self._on_hold is not None
        told = False
        while True:
            await self._hold_changed.wait()
            self._hold_changed.clear()
            while (on_hold := self._timers.on_hold_since is not None) != told:
                told = on_hold
                try:
                    await self._on_hold(on_hold)
                except Exception:  # the chat (or its database) failing must not cost the call
                    log.exception("call %s: reporting the hold failed", self.call_sid)

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
        await self.speaker.deliver_to(self._replies.on_speak)
        await self.listener.deliver_to(self._on_listen)
        await self._twilio_rx()

    async def _twilio_rx(self) -> None:
        ws = self._ws
        assert ws is not None
        replies = self._replies
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
                replies.on_mark(ev.name)
            elif isinstance(ev, media_stream.Dtmf):
                self._start_reply(DigitsHeard(ev.digit))
            elif isinstance(ev, media_stream.Stop):
                self.end("callee hung up")
                return
        # closed without a stop: we can no longer talk, so end the call at Twilio too
        self.end("media stream dropped", hang_up=True)

    def _assistant_idle(self) -> None:
        self._timers.idle_since = self._audio_s

    def _start_reply(self, event: CallerInput) -> AssistantTurn | None:
        if self._ended.is_set() or self._tg is None or self._machine:
            return None
        return self._replies.start(event)

    def _tick(self) -> None:
        now = self._audio_s
        if now >= self._cfg.max_call_seconds:
            self.end("call time limit", hang_up=True)
            return
        if self._replies.busy or self._replies.hangup_pending or self._utterance:
            return
        holds = self._agent.holds
        if holds != self._holds_seen:  # the agent agreed to hold and its words have played
            self._holds_seen = holds
            self._timers.hold(now)
            self._hold_changed.set()
            log.info("call %s on hold", self.call_sid)
        due = self._timers.due(now)
        if due == "greet":
            self._start_reply(CallConnected())
        elif due == "prompt":
            self._start_reply(CalleeSilent(round(self._timers.quiet(now), 1)))
        elif due == "give_up":
            self.end("callee silent", hang_up=True)
        elif due == "hold_over":
            self.end("on hold too long", hang_up=True)

    async def _on_listen(self, ev: ListenEvent) -> None:
        if self._machine:
            return  # the greeting's late words (or the beep) must not cut the message short
        if isinstance(ev, SpeechStarted):
            self._timers.callee_active(self._audio_s)
            self._speech_started_at = ev.onset or ev.t
            if self._utterance_at is None:
                self._utterance_at = self._log.since_start(self._speech_started_at)
            if self._replies.busy:
                await self._replies.barge_in(ev.t)  # reaction is measured from the event's receipt
        elif isinstance(ev, SttTranscript):
            if ev.text.strip():
                # Words, not just sound: a hold ends at the callee's voice (music carries none).
                if self._timers.on_hold_since is not None:
                    self._hold_changed.set()
                    log.info("call %s back from hold", self.call_sid)
                self._timers.resume(self._audio_s)
                self._holds_seen = self._agent.holds
                if self._utterance_at is None:
                    self._utterance_at = self._log.since_start(ev.t)
                if not ev.is_final and self._replies.busy and self._eager_reply is None:
                    # (after an eager reply, Flux's TurnResumed says whether the callee went on)
                    await self._replies.barge_in(ev.t)
                if ev.is_final:
                    self._utterance.append(ev.text.strip())
            if ev.speech_final and self._utterance:
                self._utterance_done(ev)
        elif isinstance(ev, UtteranceEnd) and self._utterance:
            self._utterance_done(None)
        elif isinstance(ev, EagerEndOfTurn):
            self._prepare(ev)
        elif isinstance(ev, TurnResumed):
            self._agent.discard_prepared()
            if self._eager_reply is not None:
                # The callee was not done: stop at once and listen. A disclosure cut short is said
                # again whole before anything else (``Agent.interrupted``).
                self._eager_reply = None
                await self._replies.barge_in(ev.t)

    def _prepare(self, ev: EagerEndOfTurn) -> None:
        """A turn has probably ended (Flux eager mode): answer now if no model is needed (the fixed
        opening), else start the model (``agent.early``).

        Only between replies: while the assistant is talking, the turn's end cuts a reply short
        and the history that request was made with would no longer hold.
        """
        replies = self._replies
        if replies.busy or replies.hangup_pending or self._ended.is_set():
            return
        words = " ".join([*self._utterance, ev.text.strip()])
        if not words:
            return
        if self._agent.answers_at_once(CalleeSaid(words)):
            turn = self._start_reply(CalleeSaid(words))
            if turn is not None:
                self._eager_reply = words
                turn.stt_final, turn.speech_end = ev.t, ev.speech_end
            return
        self._agent.prepare(CalleeSaid(words))

    def _utterance_done(self, final: SttTranscript | None) -> None:
        text = " ".join(self._utterance)
        at = self._utterance_at or 0.0
        self._utterance, self._utterance_at, self._speech_started_at = [], None, None
        self._timers.last_callee_activity = self._audio_s
        self._log.add(Turn(Speaker.CALLEE, text, at=at))
        eager, self._eager_reply = self._eager_reply, None
        if eager is not None and eager == text:
            return  # already being answered since the eager end of turn
        turn = self._start_reply(CalleeSaid(text))
        if turn is not None:
            turn.stt_final = final.t if final else self._clock()
            turn.speech_end = final.speech_end if final else None
