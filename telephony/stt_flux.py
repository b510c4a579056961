"""Deepgram Flux (``/v2/listen``) for one call: the turn-taking model that says when to answer.

Why Flux: Nova (``/v1/listen``) ends an utterance after a fixed silence (``endpointing``); Flux's
model decides from the words and the audio together, and in eager mode also says "probably done"
(``EagerEndOfTurn``) a little earlier, with the guarantee that the final transcript will be the
same unless a ``TurnResumed`` comes first. The session starts the model on the eager event, so the
model's time to first token is spent while Flux makes sure (``agent.early``).

Everything else is ``Listener``'s: chunked audio, the replay of unfinalized audio after a drop, the
arrival-time map. Flux events are mapped to the same small events the session already handles:

==================  ============================================================
``StartOfTurn``     ``SpeechStarted`` (barge-in while the assistant talks)
``Update``          interim ``Transcript``
``EagerEndOfTurn``  ``EagerEndOfTurn``
``TurnResumed``     ``TurnResumed``
``EndOfTurn``       final ``Transcript`` with ``speech_final`` (answer now)
==================  ============================================================

Flux has no ``KeepAlive`` message. While the phone rings no audio flows, so the socket is sent
µ-law silence instead (``_keepalive``) until the first audio of the call; those lead-in bytes are
subtracted from Flux's audio times (``Listener._lead_in``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from telephony.speech_common import (
    _CONNECTION_ERRORS,
    BYTES_PER_SECOND,
    KEEPALIVE_SECONDS,
    AsyncDeepgramClient,
    Clock,
    EagerEndOfTurn,
    SpeechStarted,
    Transcript,
    TurnResumed,
)
from telephony.stt import Listener

#: 40 ms of µ-law silence (0xFF is zero amplitude).
_SILENCE = b"\xff" * (BYTES_PER_SECOND // 25)


def is_flux(model: str) -> bool:
    """Flux models are served on ``/v2/listen`` (``flux-general-en``, ``flux-general-multi``)."""
    return model.startswith("flux")


class FluxListener(Listener):
    """``Listener`` over Flux; see the module docstring.

    Args:
        sdk, model, clock, chunk_bytes: as for ``Listener``.
        eot_threshold: confidence at which a turn ends (0.5–0.9).
        eager_eot_threshold: confidence at which Flux says the turn has probably ended
            (``EagerEndOfTurn``); None: not eager.
    """

    what = "listen (flux)"

    def __init__(
        self,
        sdk: AsyncDeepgramClient,
        *,
        model: str,
        clock: Clock,
        chunk_bytes: int,
        eot_threshold: float,
        eager_eot_threshold: float | None,
    ) -> None:
        super().__init__(sdk, model=model, clock=clock, chunk_bytes=chunk_bytes)
        self._eot_threshold = eot_threshold
        self._eager_eot_threshold = eager_eot_threshold

    def _connect(self) -> Any:
        options: dict[str, Any] = {"eot_threshold": str(self._eot_threshold)}
        if self._eager_eot_threshold is not None:
            options["eager_eot_threshold"] = str(self._eager_eot_threshold)
        return self._sdk.listen.v2.connect(
            model=self._model, encoding="mulaw", sample_rate="8000", eot_timeout_ms="5000", **options
        )

    async def _keepalive(self, conn: Any) -> None:
        # Until the call's first audio reaches this socket, keep it open with silence; afterwards a
        # stall long enough to close it is a drop like any other (reconnect and replay).
        while self._sent == self._conn_base and not self._closing:
            wait = self._last_send + KEEPALIVE_SECONDS - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            self._lead_in += len(_SILENCE)  # before the await: results may be handled meanwhile
            with contextlib.suppress(*_CONNECTION_ERRORS):
                await conn.send_media(_SILENCE)
            self._last_send = self._clock()

    async def _handle(self, msg: Any) -> None:
        if getattr(msg, "type", None) != "TurnInfo":
            return  # Connected; errors arrive as a close, which run() handles
        now = self._clock()
        base = self._stream_base()
        event, text, words = msg.event, msg.transcript or "", msg.words or []
        if event == "StartOfTurn":
            start = words[0].start if words and words[0].start is not None else msg.audio_window_end
            await self._emit(SpeechStarted(now, self.arrival_time(base + float(start))))
        elif event == "Update":
            if text:
                await self._emit(Transcript(text, False, False, now))
        elif event == "EagerEndOfTurn":
            end = words[-1].end if words else None
            speech_end = self.arrival_time(base + float(end)) if end is not None else None
            await self._emit(EagerEndOfTurn(text, now, speech_end))
        elif event == "TurnResumed":
            await self._emit(TurnResumed(now))
        elif event == "EndOfTurn":
            self._finalized(base + float(msg.audio_window_end))
            end = words[-1].end if words else None
            speech_end = self.arrival_time(base + float(end)) if end is not None else None
            await self._emit(Transcript(text, True, True, now, speech_end))
