"""Benchmark: time from the model's first text delta to the first clause handed to TTS.

Two views: the splitter alone (pure CPU, per delta), and end to end through the
real anthropic SDK streaming from ``sandbox.anthropic`` at a published-ish token
rate, so the number includes waiting for the first clause boundary. Prints
figures; asserts nothing.

    python -m bench.chunking
"""

from __future__ import annotations

import asyncio
import statistics
import time

from agent.chunking import ClauseChunker
from agent.llm import build_anthropic
from sandbox.anthropic import SandboxAnthropic

REPLIES = [
    "Hi, this is Robin, an AI assistant calling on behalf of Alex Doe. I'd like to book a haircut next week.",
    "Perfect, so that's Tuesday, December 1 at 2:30 p.m. for Alex Doe. Thank you so much, goodbye!",
    "Sure, I'll hold.",
    "That would be 1,500 dollars, or about 3.5 hours of work with Dr. Lee on Main St. next to the park.",
]


def pure_splitter(rounds: int = 2000) -> list[float]:
    """Microseconds from the first delta to the first clause, splitter only (word-sized deltas)."""
    out: list[float] = []
    for i in range(rounds):
        words = [w + " " for w in REPLIES[i % len(REPLIES)].split()]
        c = ClauseChunker()
        t0 = time.perf_counter()
        for w in words:
            if c.feed(w):
                break
        else:
            c.flush()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


async def through_sdk(tokens_per_second: float, rounds: int = 8) -> list[float]:
    """Milliseconds from the first text delta (SDK event) to the first clause, end to end."""
    replies = iter(REPLIES * rounds)
    sandbox = SandboxAnthropic(
        api_key="bench",
        responder=lambda body: [{"type": "text", "text": next(replies)}],
        tokens_per_second=tokens_per_second,
    )
    await sandbox.start()
    client = build_anthropic("bench", sandbox.base_url)
    out: list[float] = []
    try:
        for _ in range(rounds * len(REPLIES)):
            chunker = ClauseChunker()
            first_delta: float | None = None
            first_clause: float | None = None
            async with client.messages.stream(
                model="claude-haiku-5-5", max_tokens=200, messages=[{"role": "user", "content": "hi"}]
            ) as stream:
                async for ev in stream:
                    if ev.type == "content_block_delta" and ev.delta.type == "text_delta":
                        first_delta = first_delta or time.perf_counter()
                        if chunker.feed(ev.delta.text) and first_clause is None:
                            first_clause = time.perf_counter()
            if first_clause is None and chunker.flush():
                first_clause = time.perf_counter()
            if first_delta is not None and first_clause is not None:
                out.append((first_clause - first_delta) * 1000)
    finally:
        await client.close()
        await sandbox.stop()
    return out


def _summary(xs: list[float], unit: str) -> str:
    xs = sorted(xs)
    p95 = xs[min(len(xs) - 1, int(len(xs) * 0.95))]
    return f"n={len(xs)} median={statistics.median(xs):.1f}{unit} p95={p95:.1f}{unit} max={xs[-1]:.1f}{unit}"


def main() -> None:
    print("first text delta -> first clause handed on")
    print("  splitter only (CPU):         ", _summary(pure_splitter(), "µs"))
    for tps in (0, 80):
        label = "as fast as possible" if tps == 0 else f"{tps} tokens/s"
        print(f"  SDK + sandbox, {label:<15}", _summary(asyncio.run(through_sdk(tps)), "ms"))


if __name__ == "__main__":
    main()
