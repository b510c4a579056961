"""A local stand-in for the Anthropic Messages API (``POST /v1/messages``).

Speaks the documented wire protocol — SSE events ``message_start`` →
``content_block_start/delta/stop`` → ``message_delta`` → ``message_stop`` with
``ping``s, or one JSON message when ``stream`` is false — so the real
``anthropic`` SDK runs against it unchanged. What the "model" says comes from a
responder: a function from the request body to content blocks. By default the
request is routed by its tools: the intake model when ``record_errand`` is
offered, else the phone model. Faults (429/529/500 answers, an ``error``
event mid-stream) can be injected for the next requests.

Prompt caching is accounted as Anthropic documents it (``PromptCache``): ``usage`` carries
``cache_creation_input_tokens`` / ``cache_read_input_tokens`` next to ``input_tokens``. Tokens are
estimated as 4 characters of the request's JSON each.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import itertools
import json
import re
import time
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


#: Minimum cacheable prompt length in tokens (Anthropic, "Prompt caching", platform.claude.com/docs/
#: en/docs/build-with-claude/prompt-caching; see bench/README.md): the first matching family wins.
#: A shorter prefix is processed normally and nothing is written, even when marked.
CACHE_MINIMUM_TOKENS: tuple[tuple[str, int], ...] = (
    ("haiku-3", 2048),
    ("3-5-haiku", 2048),
    ("3-haiku", 2048),
    ("haiku", 4096),  # Haiku 4.5 (and, as a guess, the later Haikus)
    ("opus-4-5", 4096),
    ("opus-4-6", 4096),
    ("sonnet-4-6", 2048),
)
DEFAULT_CACHE_MINIMUM = 1024  # Sonnet 4/4.5, Opus 4/4.1, Sonnet 3.7
CACHE_TTL_SECONDS = 300.0  # "ephemeral": 5 minutes, refreshed by every hit
#: How far back from a breakpoint the API looks for an earlier cached prefix (blocks).
LOOKBACK_BLOCKS = 20


def cache_minimum(model: str) -> int:
    """The minimum cacheable prompt length for ``model`` (tokens)."""
    return next((n for family, n in CACHE_MINIMUM_TOKENS if family in model), DEFAULT_CACHE_MINIMUM)


def _tokens(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"))) // 4


class PromptCache:
    """Anthropic's prompt cache, as documented, for one sandbox server.

    The prompt is the sequence of blocks ``tools`` → ``system`` → ``messages`` (each message's content
    blocks in order). A block with ``cache_control`` is a breakpoint: the prefix ending there is
    written to the cache if it is at least ``cache_minimum(model)`` tokens long, and a later request
    whose prefix up to one of its breakpoints (or up to 20 blocks before one) is identical reads it.
    ``usage`` then splits the prompt into tokens read, tokens written (the rest up to the last
    breakpoint) and ``input_tokens`` (after the last breakpoint). Entries live 5 minutes from their
    last use. Keys are the model and the exact JSON of the prefix (``cache_control`` itself
    excluded, as it does not change the prompt).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._entries: dict[str, float] = {}  # prefix key -> expiry

    def usage(self, body: dict[str, Any]) -> dict[str, int]:
        blocks = _prompt_blocks(body)
        total = sum(t for _, t in blocks) + 4  # a few tokens of framing, as in the real count
        model = str(body.get("model", ""))
        now = self.clock()
        self._entries = {k: e for k, e in self._entries.items() if e > now}
        keys: list[str] = []
        sizes: list[int] = []
        running, parts = 0, []
        for block, tokens in blocks:
            parts.append(json.dumps({k: v for k, v in block.items() if k != "cache_control"}, sort_keys=True))
            running += tokens
            keys.append(model + "\n" + "\n".join(parts))
            sizes.append(running)
        breakpoints = [i for i, (b, _) in enumerate(blocks) if b.get("cache_control")]
        if not breakpoints:
            return {"input_tokens": total, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        read = 0
        for bp in breakpoints:
            for i in range(bp, max(-1, bp - LOOKBACK_BLOCKS), -1):
                if keys[i] in self._entries:
                    read = max(read, sizes[i])
                    self._entries[keys[i]] = now + CACHE_TTL_SECONDS
                    break
        written = 0
        minimum = cache_minimum(model)
        for bp in breakpoints:
            if sizes[bp] >= minimum and sizes[bp] > read:
                self._entries[keys[bp]] = now + CACHE_TTL_SECONDS
                written = sizes[bp] - read
        if read == 0 and written == 0:
            return {"input_tokens": total, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        return {
            "input_tokens": total - read - written,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
        }


def _prompt_blocks(body: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
    """The request's blocks in cache order, each with its estimated tokens."""
    blocks: list[dict[str, Any]] = list(body.get("tools") or [])
    system = body.get("system")
    if isinstance(system, str) and system:
        blocks.append({"type": "text", "text": system})
    elif isinstance(system, list):
        blocks += system
    for m in body.get("messages") or []:
        content = m.get("content")
        if isinstance(content, str):
            blocks.append({"role": m.get("role"), "type": "text", "text": content})
        else:
            blocks += [{"role": m.get("role"), **b} for b in content or []]
    return [(b, _tokens({k: v for k, v in b.items() if k != "cache_control"})) for b in blocks]


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
        self.cache = PromptCache()
        #: ``usage`` of every answered request, in order (cache reads and writes included).
        self.usages: list[dict[str, int]] = []
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
        usage = self.cache.usage(body) | {"output_tokens": max(1, len(text) // 4)}
        self.usages.append(usage)
        return {
            "id": f"msg_sbx_{next(self._ids):04d}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": blocks,
            "stop_reason": "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn",
            "stop_sequence": None,
            "usage": usage,
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
