"""One audio clock for every media stream of a sandbox Twilio: a single task ticks all the calls.

Why: with a task and a timer per call, N calls cost N timer wake-ups, N task switches and (on a
2-core VM, where waking an idle process costs ~0.1 ms) many more cross-process wake-ups every 20 ms.
Here one task wakes ``FRAME_SLOTS`` times a frame and steps the calls of that slot one after the
other, so their frames also reach the app together. A call's slot is its phase (when its first frame
went out): calls start at unrelated times, so the slots fill evenly, as a real Twilio's do.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import dataclass
from typing import Protocol

from sandbox.callee import FRAME_SECONDS

FRAME_SLOTS = 4  # phases a call's frames can take within one frame time


class Stream(Protocol):
    async def step(self) -> bool | None:
        """Play one frame; None to go on, else the stream is over (True: it was dropped)."""


@dataclass(frozen=True, slots=True)
class _Entry:
    done: asyncio.Future[bool]  # the stream's result (True: dropped)
    first_tick: int  # the clock tick of its first step on the clock


class FrameClock:
    """Steps every attached stream once per frame time (20 ms / ``pace``)."""

    def __init__(self, pace: float = 1.0) -> None:
        self.slot_seconds = FRAME_SECONDS / pace / FRAME_SLOTS
        self._slots: list[dict[Stream, _Entry]] = [{} for _ in range(FRAME_SLOTS)]
        self._task: asyncio.Task[None] | None = None
        self.passes = 0  # slot passes so far (each steps the streams of one slot)

    @property
    def streams(self) -> int:
        return sum(len(s) for s in self._slots)

    async def play(self, stream: Stream) -> bool:
        """Step ``stream`` every frame until it is over; True if it was dropped.

        The first frame goes out at once (the stream starts with audio, not with a wait for the
        next tick); the following ones on the clock every frame time from then, give or take half a
        slot, as a stream of its own would (streams start at unrelated times, so the slots fill
        evenly).
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        first = await stream.step()
        if first is not None:
            return first
        # Its phase decides its slot: the tick nearest to one frame after its first frame.
        tick = round((started + self.slot_seconds * FRAME_SLOTS) / self.slot_seconds)
        slot = self._slots[tick % FRAME_SLOTS]
        done: asyncio.Future[bool] = loop.create_future()
        slot[stream] = _Entry(done, tick)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run())
        try:
            return await done
        finally:
            slot.pop(stream, None)  # also when the call is cancelled

    async def stop(self) -> None:
        """Stop ticking (the server is shutting down; its calls were ended first)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        tick = math.ceil(loop.time() / self.slot_seconds)
        while self.streams:
            await asyncio.sleep(max(0.0, tick * self.slot_seconds - loop.time()))
            slot, now = self._slots[tick % FRAME_SLOTS], tick
            tick += 1
            self.passes += 1
            for stream, entry in list(slot.items()):
                done = entry.done
                if done.done() or entry.first_tick > now:
                    continue
                try:
                    result = await stream.step()
                except Exception as e:  # noqa: BLE001  (a broken stream ends its call, not the others)
                    done.set_exception(e)
                    continue
                if result is not None:
                    with contextlib.suppress(asyncio.InvalidStateError):
                        done.set_result(result)
