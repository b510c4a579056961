"""Cheap per-frame timing of the inbound audio path (Twilio → Deepgram), for the benchmark.

Two figures per inbound frame, kept in fixed-bucket histograms (no per-frame allocation):

* forward: websocket message received → ``send_media`` returned (our forwarding cost);
* lag: how far the frame's arrival trails the audio clock (its Twilio ``timestamp``) relative to
  the first frame — it grows when the event loop cannot keep up with real time.

Each session records into its own ``FrameStats`` and, when the call ends, hands it in a
``CallMetrics`` event to the ``MetricsSink`` it was given (if any): whoever wants the figures (the
benchmark) subscribes by passing a sink down from the app wiring, and nothing is kept per process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

BUCKET_MS = 0.05
BUCKETS = 4000  # 0-200 ms in 50 µs steps; the last bucket takes everything above


class Histogram:
    """Millisecond values in fixed buckets (percentiles to within ``BUCKET_MS``) plus the max."""

    __slots__ = ("counts", "n", "max")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.n = 0
        self.max = 0.0

    def add(self, ms: float) -> None:
        i = int(ms / BUCKET_MS)
        self.counts[i if 0 <= i < BUCKETS else (BUCKETS - 1 if i > 0 else 0)] += 1
        self.n += 1
        if ms > self.max:
            self.max = ms

    def merge(self, other: Histogram) -> None:
        counts = self.counts
        for i, c in enumerate(other.counts):
            if c:
                counts[i] += c
        self.n += other.n
        self.max = max(self.max, other.max)

    def percentile(self, p: float) -> float:
        """Upper edge of the bucket holding the ``p``-th percentile (0 when empty)."""
        if not self.n:
            return 0.0
        rank = max(1, round(self.n * p / 100.0))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return min((i + 1) * BUCKET_MS, self.max)
        return self.max


class FrameStats:
    """Inbound frame timing of one call (or, merged, of many)."""

    __slots__ = ("forward", "lag", "_t0", "_ts0")

    def __init__(self) -> None:
        self.forward = Histogram()
        self.lag = Histogram()
        self._t0: float | None = None
        self._ts0 = 0

    def record(self, received: float, forwarded: float, timestamp_ms: int) -> None:
        """One frame: clock times of receipt and of ``send_media`` returning, and its audio timestamp."""
        self.forward.add((forwarded - received) * 1000.0)
        if self._t0 is None:
            self._t0, self._ts0 = received, timestamp_ms
            return
        lag = (received - self._t0) * 1000.0 - (timestamp_ms - self._ts0)
        if lag < 0:  # the first frame itself was late: re-anchor on the earliest one
            self._t0, self._ts0 = received, timestamp_ms
            lag = 0.0
        self.lag.add(lag)

    def merge(self, other: FrameStats) -> None:
        self.forward.merge(other.forward)
        self.lag.merge(other.lag)

    def summary(self) -> dict[str, float]:
        return {
            "frames": self.forward.n,
            "forward_ms_p50": round(self.forward.percentile(50), 3),
            "forward_ms_p99": round(self.forward.percentile(99), 3),
            "forward_ms_max": round(self.forward.max, 3),
            "lag_ms_p99": round(self.lag.percentile(99), 3),
            "lag_ms_max": round(self.lag.max, 3),
        }


@dataclass(frozen=True)
class CallMetrics:
    """What one call measured, emitted once when it has ended.

    Attributes:
        call_sid: Twilio's id of the call.
        job_id: the errand the call was about.
        frames: the call's inbound frame timing; final (the session no longer writes to it), so a
            subscriber may keep it or ``merge`` it into its own totals.
        prepared_started: model requests started early, on an eager end of turn (``Agent.prepare``).
        prepared_discarded: of those, the ones thrown away (the callee went on talking, the
            history changed, or the call ended first): the cost of starting early.
    """

    call_sid: str
    job_id: str
    frames: FrameStats
    prepared_started: int = 0
    prepared_discarded: int = 0


#: Receives each call's ``CallMetrics`` as the call ends (on the event loop: keep it cheap).
MetricsSink = Callable[[CallMetrics], None]
