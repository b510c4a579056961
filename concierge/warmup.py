"""Pay the SDKs' first-use costs at start-up, not in the first calls' first turns.

Each SDK builds what it needs lazily on first use, on the event loop, in the middle of a call:

* anthropic: the first streamed answer builds pydantic schemas for the stream events and the
  accumulated ``Message`` (~50–100 ms of CPU), once per process;
* deepgram: the first socket message of each kind resolves its model's type hints.

msgraph needs nothing here: its answers are read raw (``agent.calendar``), so the ~1,200 model
modules its first deserialisation would import (~2 s of CPU) are never loaded.

Measured in the benchmark, the first turn of the first calls took 50–75 ms more than the rest.
``warm_up()`` runs each path once offline — no network: the anthropic stream is a canned answer
served by an in-memory ``httpx2.MockTransport`` — so every call pays only its own work.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import logging
import warnings
from typing import Any

import anthropic
import httpx2

log = logging.getLogger(__name__)

_SSE_BLOCKS: list[dict[str, Any]] = [
    {"type": "text", "text": "Hello there, one moment."},
    {"type": "tool_use", "id": "toolu_warm", "name": "warm", "input": {"a": "b"}},
]


def _canned_stream() -> bytes:
    """A complete Messages API answer as SSE: text, a tool call, the end events."""
    message: dict[str, Any] = {
        "id": "msg_warm", "type": "message", "role": "assistant", "model": "warm-up", "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1},
    }  # fmt: skip
    events: list[dict[str, Any]] = [{"type": "message_start", "message": message}, {"type": "ping"}]
    for i, block in enumerate(_SSE_BLOCKS):
        if block["type"] == "text":
            start: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": w + " "} for w in block["text"].split()]
        else:
            start = {**block, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": json.dumps(block["input"])}]
        events.append({"type": "content_block_start", "index": i, "content_block": start})
        events += [{"type": "content_block_delta", "index": i, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": i})
    events.append({
        "type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 5},
    })  # fmt: skip
    events.append({"type": "message_stop"})
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


async def warm_up_anthropic() -> None:
    """Stream one canned answer through the SDK (in memory) so its schemas are built now."""
    body = _canned_stream()
    # The real transport's connection pool loads anyio's asyncio backend on its first request.
    importlib.import_module("anyio._backends._asyncio")

    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer)) as http:
        client = anthropic.AsyncAnthropic(
            api_key="warm-up", base_url="http://warm-up.invalid", http_client=http, max_retries=0
        )
        tool: Any = {"name": "warm", "description": "d", "input_schema": {"type": "object", "properties": {}}}
        stream = await client.messages.create(  # the call path of agent.conversation
            model="warm-up", max_tokens=16, messages=[{"role": "user", "content": "hi"}], tools=[tool],
            stream=True,
        )
        async with stream:
            async for _ in stream:
                pass


def warm_up_deepgram() -> None:
    """Parse one message of each socket kind the call session receives."""
    with warnings.catch_warnings():  # the SDK imports websockets.legacy (deprecated), as speech.py does
        warnings.simplefilter("ignore", DeprecationWarning)
        from deepgram.core.unchecked_base_model import construct_type
        from deepgram.listen.v1.socket_client import V1SocketClientResponse as ListenResponse
        from deepgram.speak.v1.socket_client import V1SocketClientResponse as SpeakResponse

    word = {"word": "hi", "start": 0.0, "end": 0.1, "confidence": 1.0, "punctuated_word": "Hi"}
    results = {
        "type": "Results", "channel_index": [0, 1], "duration": 0.1, "start": 0.0, "is_final": True,
        "speech_final": True, "from_finalize": False,
        "channel": {"alternatives": [{"transcript": "Hi", "confidence": 1.0, "words": [word]}]},
        "metadata": {"request_id": "r", "model_info": {"name": "n", "version": "v", "arch": "a"},
                     "model_uuid": "u"},
    }  # fmt: skip
    listen: list[dict[str, Any]] = [
        results,
        {"type": "SpeechStarted", "channel": [0], "timestamp": 0.0},
        {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 0.1},
    ]
    for obj in listen:
        construct_type(type_=ListenResponse, object_=obj)
    speak: list[dict[str, Any]] = [
        {"type": "Flushed", "sequence_id": 0},
        {"type": "Cleared", "sequence_id": 0},
        {"type": "Metadata", "request_id": "r", "model_name": "m", "model_version": "v", "model_uuid": "u"},
        {"type": "Warning", "description": "d", "code": "c"},
    ]
    for obj in speak:
        construct_type(type_=SpeakResponse, object_=obj)


async def warm_up() -> None:
    """All of the above; the blocking parts run in a thread so a shared loop keeps turning."""
    await asyncio.to_thread(warm_up_deepgram)
    await warm_up_anthropic()


#: Young collections a little rarer (2,000 allocations, not 700) and full ones far rarer (every
#: 1,000th middle collection, not every 10th). With 100 live calls a full collection walks the
#: calls' whole heap — 45-70 ms with the defaults, several times a minute — while a middle one
#: stays well under a frame (the bench figures are in ``bench/README.md``).
#: Cyclic garbage lives a little longer; the call objects are freed by reference counting.
GC_THRESHOLDS = (2000, 10, 1000)


def freeze_heap() -> None:
    """Move everything alive after start-up out of the garbage collector's sight (``gc.freeze``).

    The SDK imports leave ~300,000 long-lived objects (measured with msgraph's models loaded), and
    every full collection walked all of them: at 40 concurrent calls the bench saw gen-2 pauses of
    45-180 ms, each one a frame falling that far behind and a turn that much slower. Frozen, a
    full collection only walks what calls allocated since. For the process's one app, after
    ``Concierge.start`` (``serve``, the bench); not for test suites that start many apps, where
    freezing would keep each finished app's cyclic garbage for good. Also sets ``GC_THRESHOLDS``.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
