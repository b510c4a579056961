"""What the Deepgram listen and speak sockets share: the SDK imports, events, limits, error mapping."""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

with warnings.catch_warnings():
    # deepgram-sdk 7.x imports websockets' legacy client, which warns on import
    # with websockets >= 14; the legacy client is what the SDK uses, so there is
    # nothing for us to change.
    warnings.simplefilter("ignore", DeprecationWarning)
    import deepgram.listen.v1.client  # noqa: F401  (the SDK imports these lazily, at first connect)
    import deepgram.listen.v2.client  # noqa: F401
    import deepgram.speak.v1.client  # noqa: F401
    from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
    from deepgram.core.api_error import ApiError
    from deepgram.speak.v1.types.speak_v1text import SpeakV1Text
    from websockets.exceptions import ConnectionClosed, WebSocketException

from storage.errors import ProviderConnectionError, ProviderError, ProviderStatusError
from storage.retry import Attempts, Backoff, retry_after_header

__all__ = [  # the SDK names are imported here, once, under the warning filter above
    "ApiError", "AsyncDeepgramClient", "ConnectionClosed", "DeepgramClientEnvironment", "SpeakV1Text",
]  # fmt: skip

log = logging.getLogger(__name__)

Clock = Callable[[], float]

BYTES_PER_SECOND = 8000
KEEPALIVE_SECONDS = 4.0
#: Audio kept while the listen socket is reconnecting (30 s of µ-law).
MAX_BUFFER_BYTES = 30 * BYTES_PER_SECOND
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (ConnectionClosed, WebSocketException, OSError)


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Voice onset detected by Deepgram VAD.

    Attributes:
        t: when it was received (clock seconds).
        onset: when the onset audio byte arrived from Twilio (clock seconds), if known.
    """

    t: float
    onset: float | None = None


@dataclass(frozen=True, slots=True)
class Transcript:
    """An interim or final transcript.

    Attributes:
        speech_end: clock time at which the audio of the last word's end arrived
            from Twilio, if it could be mapped (finals only).
    """

    text: str
    is_final: bool
    speech_final: bool
    t: float
    speech_end: float | None = None


@dataclass(frozen=True, slots=True)
class UtteranceEnd:
    """Deepgram saw a gap after the last word (fallback when ``speech_final`` is missed)."""

    t: float


@dataclass(frozen=True, slots=True)
class EagerEndOfTurn:
    """Flux thinks the callee has probably finished: ``text`` is the turn so far (never empty).

    If the turn does end, its final transcript is exactly ``text``; otherwise ``TurnResumed``
    comes first. The session starts the model on it (``ClaudeAgent.prepare``), or plays the fixed
    opening at once (``Agent.answers_at_once``).
    """

    text: str
    t: float
    #: arrival time of the turn's last word (as ``Transcript.speech_end``), if known
    speech_end: float | None = None


@dataclass(frozen=True, slots=True)
class TurnResumed:
    """Flux's last ``EagerEndOfTurn`` was wrong: the callee is still talking."""

    t: float


ListenEvent = SpeechStarted | Transcript | UtteranceEnd | EagerEndOfTurn | TurnResumed


@dataclass(frozen=True, slots=True)
class TtsAudio:
    """A chunk of synthesised µ-law audio."""

    data: bytes


@dataclass(frozen=True, slots=True)
class TtsFlushed:
    """All audio for the text sent before the matching flush has been delivered."""


@dataclass(frozen=True, slots=True)
class TtsCleared:
    """The speak socket dropped pending audio after a clear."""


SpeakEvent = TtsAudio | TtsFlushed | TtsCleared


# --- client -----------------------------------------------------------------------------------


#: Socket reconnects: 0.1 s doubling to at most 2 s (a Retry-After too is cut to 2 s: the call is
#: live), six in a row before the call gives up (``Reconnecting.max_reconnects``).
RECONNECT = Backoff(max_attempts=7, base_delay=0.1, max_delay=2.0, max_retry_after=2.0)


def map_error(e: BaseException, what: str) -> ProviderError:
    """The one Deepgram mapper: a refused handshake by its status (401/4xx permanent), anything
    else (a dropped or unreachable socket) a retryable connection error."""
    if isinstance(e, ApiError) and isinstance(e.status_code, int):
        return ProviderStatusError(
            f"deepgram {what}: HTTP {e.status_code}",
            provider="deepgram",
            status=e.status_code,
            retry_after=retry_after_header(e.headers),
        )
    return ProviderConnectionError(f"deepgram {what}: {e!r}", provider="deepgram")


class Reconnecting:
    """Keeps one Deepgram socket open until ``close()``, reconnecting with back-off on drops.

    Subclasses (listen, speak) set ``what``, implement ``_session()`` — one socket's
    life — and keep ``connections`` (sockets opened so far), ``max_reconnects``,
    ``_closing``, ``_conn`` and ``connected``.
    """

    what = "socket"
    connections: int
    max_reconnects: int
    _closing: bool
    _conn: Any
    connected: asyncio.Event
    events: asyncio.Queue[Any]
    _handler: Callable[[Any], Awaitable[None]] | None = None

    async def deliver_to(self, handler: Callable[[Any], Awaitable[None]]) -> None:
        """From now on, hand each event to ``handler`` in this socket's receive task, not to ``events``.

        Why: a queue costs every event one more pass through the event loop, behind whatever else
        is ready; on the path of a reply's first audio that was ~0.1 ms at the median and up to
        ~0.8 ms at p95 with 20 calls (bench). The handler runs where the message was parsed, so
        events keep their order, and the socket reads its next message once the handler is done
        (its awaits are sends). Events queued before the call keep their place: they go first.
        """
        while not self.events.empty():
            await handler(self.events.get_nowait())
        self._handler = handler  # no await since the queue was seen empty: nothing can slip in

    async def _emit(self, event: Any) -> None:
        handler = self._handler
        if handler is None:
            self.events.put_nowait(event)
        else:
            await handler(event)

    async def _session(self) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        """Run sockets one after another until ``close()``.

        Raises:
            ProviderError: the socket could not be (re)opened after several tries in a row
                (or the handshake was refused for good: a 4xx other than 408/429, e.g. a wrong key).
        """
        tries = Attempts(replace(RECONNECT, max_attempts=self.max_reconnects + 1))
        while not self._closing:
            opened = self.connections
            try:
                await self._session()
                tries.reset()
            except (ApiError, *_CONNECTION_ERRORS) as e:
                if self._closing:
                    return
                # count failures in a row: a socket that was up before it dropped starts afresh
                if self.connections > opened:
                    tries.reset()
                error = map_error(e, self.what)
                wait = tries.failed(error)
                log.warning("deepgram %s socket lost (%r); reconnect #%d", self.what, e, tries.attempt)
                if wait is None:
                    raise error from e
                await asyncio.sleep(wait)
            finally:
                self._conn = None
                self.connected.clear()
