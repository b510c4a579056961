"""The sandbox Twilio's shared audio clock: every stream stepped once a frame, slots kept even."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import looptime
import pytest

from sandbox.frame_clock import FRAME_SLOTS, FrameClock

PACE = 10.0  # 2 ms frames


class Counting:
    """A stream that ends after ``frames`` steps, recording the loop time (and clock pass) of each."""

    def __init__(
        self,
        frames: int,
        *,
        result: bool = False,
        fail_at: int | None = None,
        clock: FrameClock | None = None,
    ) -> None:
        self.clock = clock
        self.passes: list[int] = []
        self.frames = frames
        self.result = result
        self.fail_at = fail_at
        self.times: list[float] = []

    async def step(self) -> bool | None:
        self.times.append(asyncio.get_running_loop().time())
        if self.clock is not None:
            self.passes.append(self.clock.passes)
        if self.fail_at is not None and len(self.times) == self.fail_at:
            raise RuntimeError("broken stream")
        return self.result if len(self.times) >= self.frames else None


async def stops_ticking(clock: FrameClock) -> None:
    """Wait for the clock's ticking task to end by itself (it does once no stream is attached)."""
    task = clock._task
    assert task is not None
    async with asyncio.timeout(5):
        await task


async def on_loop_time(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``body`` on an event loop whose clock only moves when every task waits (looptime).

    The frame clock's promises are about the loop's clock (a frame every 20 ms, a phase kept);
    on real time a loaded machine delays wake-ups by tens of milliseconds and the test would
    measure the machine instead of the clock. The loop runs in a thread of its own, so the
    test's own (pytest-asyncio) loop is left alone.
    """

    def run() -> None:
        with asyncio.Runner(loop_factory=lambda: looptime.new_event_loop(start=0.0)) as runner:
            runner.run(body())

    await asyncio.to_thread(run)


async def test_each_stream_once_a_frame_and_the_result_comes_back() -> None:
    await on_loop_time(_once_a_frame)


async def _once_a_frame() -> None:
    clock = FrameClock(PACE)
    streams = [Counting(20, result=i % 2 == 0) for i in range(2 * FRAME_SLOTS)]
    results = await asyncio.gather(*(clock.play(s) for s in streams))
    assert results == [i % 2 == 0 for i in range(2 * FRAME_SLOTS)]
    frame = 0.02 / PACE
    for s in streams:
        assert len(s.times) == 20
        # the first frame at once, the next a frame later (less half a slot), never sooner
        assert s.times[1] - s.times[0] >= frame * (1 - 0.5 / FRAME_SLOTS) - 1e-6
        gaps = [b - a for a, b in zip(s.times[1:], s.times[2:], strict=False)]  # after the first step
        assert sum(gaps) / len(gaps) == pytest.approx(frame, rel=0.01)
    assert clock.streams == 0
    await stops_ticking(clock)


async def test_a_stream_keeps_its_phase_and_streams_of_a_phase_share_a_pass() -> None:
    await on_loop_time(_keeps_its_phase)


async def _keeps_its_phase() -> None:
    clock = FrameClock(1.0)  # 5 ms slots
    frame = clock.slot_seconds * FRAME_SLOTS
    together = [Counting(5, clock=clock) for _ in range(3)]  # same start: same phase
    alone = Counting(5, clock=clock)
    tasks = [asyncio.create_task(clock.play(s)) for s in together]
    await asyncio.sleep(frame / 2)  # the stimulus, not a wait: half a frame later is another phase
    tasks.append(asyncio.create_task(clock.play(alone)))
    await asyncio.gather(*tasks)
    for s in [*together, alone]:
        # on the clock a frame after the first frame, then every frame: no jump in the stream
        intervals = [b - a for a, b in zip(s.times, s.times[1:], strict=False)]
        assert all(abs(i - frame) <= clock.slot_seconds / 2 for i in intervals), intervals
    passes = {tuple(s.passes[1:]) for s in together}
    assert len(passes) == 1  # the three are stepped in the same passes
    assert not set(alone.passes[1:]) & set(next(iter(passes)))  # the other phase in other passes
    await stops_ticking(clock)


async def test_a_broken_stream_fails_alone_and_a_cancelled_one_leaves() -> None:
    clock = FrameClock(PACE)
    broken, healthy, left = Counting(50, fail_at=3), Counting(8), Counting(10_000)
    leaving = asyncio.create_task(clock.play(left))
    with pytest.raises(RuntimeError, match="broken stream"):
        await clock.play(broken)
    assert await clock.play(healthy) is False and len(healthy.times) == 8
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert clock.streams == 0
    steps = len(left.times)
    await stops_ticking(clock)
    assert len(left.times) == steps  # no longer stepped
    await clock.stop()
