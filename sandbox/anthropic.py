"""A local stand-in for the Anthropic Messages API (``POST /v1/messages``).

Speaks the documented wire protocol — SSE events ``message_start`` →
``content_block_start/delta/stop`` → ``message_delta`` → ``message_stop`` with
``ping``s, or one JSON message when ``stream`` is false — so the real
``anthropic`` SDK runs against it unchanged. What the "model" says comes from a
responder: a function from the request body to content blocks. By default the
request is routed by its tools: the intake model when ``record_errand`` is
offered, else the phone model. Faults (429/529/500 answers, an ``error``
event mid-stream) can be injected for the next requests.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import itertools
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Block = dict[str, Any]
Responder = Callable[[dict[str, Any]], "list[Block] | Awaitable[list[Block]]"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def default_responder(body: dict[str, Any]) -> list[Block]:
    """Route to the intake model (chat → errand) or the phone model (the call itself)."""
    if any(t.get("name") == "record_errand" for t in body.get("tools") or []):
        # Imported lazily: the intake model belongs to the bot's sandbox and is only needed there.
        module = importlib.import_module("sandbox.intake_model")
    else:
        module = importlib.import_module("sandbox.phone_model")
    blocks: list[Block] = module.respond(body)
    return blocks


class SandboxAnthropic:
    """The sandbox Messages API server.

    Args:
        api_key: the only key accepted (``Authorization: Bearer`` or ``x-api-key``).
        responder: request body → content blocks (``text`` / ``tool_use``); sync or async.
        ttft_ms: delay before the first content event (time to first token).
        tokens_per_second: pacing of deltas; 0 sends them as fast as possible.
        host: interface to bind (loopback only in tests).
    """

    def __init__(
        self,
        *,
        api_key: str,
        responder: Responder | None = None,
        ttft_ms: float = 0,
        tokens_per_second: float = 0,
        host: str = "127.0.0.1",
    ) -> None:
        self.api_key = api_key
        self.responder: Responder = responder or default_responder
        self.ttft_ms = ttft_ms
        self.tokens_per_second = tokens_per_second
        self.host = host
        self.requests: list[dict[str, Any]] = []
        self._faults: list[tuple[int, str]] = []
        self._mid_stream_errors = 0
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._port = 0

    # -- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self._port}"

    # -- fault injection and inspection -------------------------------------------------------------

    def fail_next(self, status: int, error_type: str | None = None, count: int = 1) -> None:
        """Answer the next ``count`` requests with an HTTP error (429, 500, 529, ...)."""
        self._faults.extend([(status, error_type or _ERROR_TYPES.get(status, "api_error"))] * count)

    def error_mid_stream_next(self) -> None:
        """The next streamed answer breaks off with an ``event: error`` after its first delta."""
        self._mid_stream_errors += 1

    # -- handler ------------------------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> bool:
        bearer = request.headers.get("Authorization", "")
        return bearer == f"Bearer {self.api_key}" or request.headers.get("x-api-key") == self.api_key

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return _error(401, "authentication_error", "invalid x-api-key")
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "invalid_request_error", "body is not JSON")
        self.requests.append(body)
        if not isinstance(body.get("messages"), list) or not body.get("model"):
            return _error(400, "invalid_request_error", "model and messages are required")
        if self._faults:
            status, kind = self._faults.pop(0)
            return _error(status, kind, f"sandbox injected {kind}")
        blocks = self.responder(body)
        if inspect.isawaitable(blocks):
            blocks = await blocks
        blocks = [self._with_id(b) for b in blocks]
        message = self._message(body, blocks)
        if not body.get("stream"):
            return web.json_response(message)
        return await self._stream(request, message)

    def _with_id(self, block: Block) -> Block:
        if block.get("type") == "tool_use" and not block.get("id"):
            return {**block, "id": f"toolu_sbx_{next(self._ids):04d}", "input": block.get("input", {})}
        return block

    def _message(self, body: dict[str, Any], blocks: list[Block]) -> dict[str, Any]:
        text = " ".join(b.get("text", "") for b in blocks) + json.dumps([b.get("input") for b in blocks])
        return {
            "id": f"msg_sbx_{next(self._ids):04d}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": blocks,
            "stop_reason": "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": len(json.dumps(body)) // 4, "output_tokens": max(1, len(text) // 4)},
        }

    async def _stream(self, request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        break_off = self._mid_stream_errors > 0
        if break_off:
            self._mid_stream_errors -= 1
        start = {**message, "content": [], "stop_reason": None}
        start["usage"] = {**message["usage"], "output_tokens": 1}
        try:
            await _send(resp, "message_start", {"type": "message_start", "message": start})
            await _send(resp, "ping", {"type": "ping"})
            if self.ttft_ms:
                await asyncio.sleep(self.ttft_ms / 1000)
            for index, block in enumerate(message["content"]):
                for event in _block_events(index, block):
                    await _send(resp, event["type"], event)
                    if event["type"] == "content_block_delta":
                        if break_off:
                            err = {"type": "overloaded_error", "message": "Overloaded"}
                            await _send(resp, "error", {"type": "error", "error": err})
                            return resp
                        if self.tokens_per_second:
                            await asyncio.sleep(1 / self.tokens_per_second)
            delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
            usage = {"output_tokens": message["usage"]["output_tokens"]}
            await _send(resp, "message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
            await _send(resp, "message_stop", {"type": "message_stop"})
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away (a barge-in cancels the stream): nothing left to say
        return resp


def _block_events(index: int, block: Block) -> list[dict[str, Any]]:
    """``content_block_start``, its deltas in pieces (word by word), ``content_block_stop``."""
    events: list[dict[str, Any]] = []
    if block["type"] == "text":
        events.append(
            {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
        )
        for piece in re.findall(r"\s*\S+\s*", block["text"]) or [""]:
            delta = {"type": "text_delta", "text": piece}
            events.append({"type": "content_block_delta", "index": index, "delta": delta})
    elif block["type"] == "tool_use":
        head = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        events.append({"type": "content_block_start", "index": index, "content_block": head})
        raw = json.dumps(block.get("input", {}))
        for i in range(0, len(raw), 12):
            delta = {"type": "input_json_delta", "partial_json": raw[i : i + 12]}
            events.append({"type": "content_block_delta", "index": index, "delta": delta})
    else:
        raise ValueError(f"sandbox responder returned an unsupported block {block!r}")
    events.append({"type": "content_block_stop", "index": index})
    return events


async def _send(resp: web.StreamResponse, event: str, data: dict[str, Any]) -> None:
    await resp.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status)
