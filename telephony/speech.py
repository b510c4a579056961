"""Deepgram streaming speech-to-text (``Listener``) and text-to-speech (``Speaker``).

Both use the real ``deepgram-sdk`` websocket clients, pointed at any base URL
(the sandbox in tests). Each call opens one listen socket and one speak socket
as early as possible (while the phone rings) so that answering costs no
handshake, and keeps them for the whole call. A dropped socket (Deepgram
closes with 1011 on errors) is reopened with back-off and the call goes on:

* listen: inbound audio is kept from the end of the last *final* transcript
  on, so after a drop the new socket is sent everything the old one had not
  finalized (words cut by the drop included) plus what arrived meanwhile;
* speak: text not yet acknowledged by ``Flushed`` is sent again on the new
  socket, so a clause cut by the drop is spoken again instead of lost (the
  callee may hear its first words twice — better than a silent gap that the
  transcript would claim was said).

Audio passes through untouched: Twilio's 8 kHz µ-law bytes go straight to the
listen socket and the speak socket is asked for the same format, so nothing is
transcoded on the hot path.
"""

from __future__ import annotations

import time

import httpx

from telephony.speech_common import (
    BYTES_PER_SECOND,
    KEEPALIVE_SECONDS,
    MAX_BUFFER_BYTES,
    AsyncDeepgramClient,
    Clock,
    DeepgramClientEnvironment,
    EagerEndOfTurn,
    ListenEvent,
    SpeakEvent,
    SpeechStarted,
    Transcript,
    TtsAudio,
    TtsCleared,
    TtsFlushed,
    TurnResumed,
    UtteranceEnd,
)
from telephony.stt import Listener
from telephony.stt_flux import FluxListener, is_flux
from telephony.tts import PhraseCache, Speaker

__all__ = [
    "BYTES_PER_SECOND", "EagerEndOfTurn", "FluxListener", "KEEPALIVE_SECONDS", "ListenEvent",
    "MAX_BUFFER_BYTES", "Listener", "PhraseCache", "SpeakEvent", "Speaker", "SpeechClient", "SpeechStarted",
    "Transcript", "TtsAudio", "TtsCleared", "TtsFlushed", "TurnResumed", "UtteranceEnd",
    "default_chunk_ms",
]  # fmt: skip


def default_chunk_ms(stt_model: str) -> int:
    """Audio per listen-socket message when the settings leave it open.

    Flux: 80 ms, which Deepgram "strongly recommends" for Flux (its model steps in 80 ms; smaller
    messages only cost sends). Nova: 40 ms, half the sends of frame-by-frame forwarding for at
    most 20 ms more before a transcript.
    """
    return 80 if is_flux(stt_model) else 40


class SpeechClient:
    """Builds the Deepgram SDK client and the per-call listen/speak sockets.

    Args:
        api_key: Deepgram key.
        http_url: REST base, e.g. ``https://api.deepgram.com``.
        ws_url: websocket base, e.g. ``wss://api.deepgram.com``.
        stt_model: listen model: ``nova-3`` (``/v1/listen``, fixed-silence endpointing) or a Flux
            model, ``flux-general-en`` (``/v2/listen``, model-decided end of turn; ``FluxListener``).
        tts_model: speak voice, e.g. ``aura-2-thalia-en``.
        clock: monotonic clock for event timestamps.
        stt_chunk_ms: inbound audio is sent to the listen socket in chunks of this many ms
            (``Listener.send``); 20 forwards every Twilio frame as it comes. None: the model's
            recommended size (``default_chunk_ms``).
        eot_threshold: Flux only: confidence at which a turn ends (0.5–0.9).
        eager_eot_threshold: Flux only: confidence at which Flux says the turn has probably ended
            and the model is started early (0.3–0.9, at most ``eot_threshold``); None: not eager.
    """

    def __init__(
        self,
        *,
        api_key: str,
        http_url: str,
        ws_url: str,
        stt_model: str = "nova-3",
        tts_model: str = "aura-2-thalia-en",
        clock: Clock = time.monotonic,
        stt_chunk_ms: int | None = None,
        eot_threshold: float = 0.7,
        eager_eot_threshold: float | None = None,
    ) -> None:
        self.stt_model = stt_model
        self.eot_threshold = eot_threshold
        self.eager_eot_threshold = eager_eot_threshold
        chunk_ms = default_chunk_ms(stt_model) if stt_chunk_ms is None else stt_chunk_ms
        self.stt_chunk_bytes = max(1, BYTES_PER_SECOND * chunk_ms // 1000)
        self.tts_model = tts_model
        self.clock = clock
        env = DeepgramClientEnvironment(base=http_url, production=ws_url, agent=ws_url, agent_rest=http_url)
        # our own HTTP client (the REST phrase renders use it), so that ``aclose`` can close it
        self._http = httpx.AsyncClient(timeout=30.0)
        self.sdk = AsyncDeepgramClient(api_key=api_key, environment=env, httpx_client=self._http)
        #: Fixed phrases (openings, acknowledgements) rendered ahead of time in this voice.
        self.phrases = PhraseCache(self.sdk, model=tts_model)

    async def aclose(self) -> None:
        """Stop phrase renders still running and close the REST connections (server shutdown)."""
        await self.phrases.aclose()
        await self._http.aclose()

    def listener(self) -> Listener:
        """A new listen socket for one call (``FluxListener`` for a Flux model)."""
        if is_flux(self.stt_model):
            return FluxListener(
                self.sdk,
                model=self.stt_model,
                clock=self.clock,
                chunk_bytes=self.stt_chunk_bytes,
                eot_threshold=self.eot_threshold,
                eager_eot_threshold=self.eager_eot_threshold,
            )
        return Listener(self.sdk, model=self.stt_model, clock=self.clock, chunk_bytes=self.stt_chunk_bytes)

    def speaker(self) -> Speaker:
        """A new speak socket for one call."""
        return Speaker(self.sdk, model=self.tts_model)
