"""A recording pass-through in front of whatever Messages API the product talks to.

The evals need the model's side of every call (which tools it used, what it said before them,
what the usage was) whether the model is the sandbox's or real Claude. The sandbox server keeps
its own records, the real API keeps none we can read, so the product is pointed at this tap
instead: it forwards each ``POST /v1/messages`` unchanged to the upstream, streams the answer
back as it arrives, and parses the same bytes (SSE or JSON) into an ``Exchange``. One record,
one code path, for both models.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

Block = dict[str, Any]

#: Hop-by-hop and body-framing headers the tap sets itself (and no compression: it reads the bytes).
_DROPPED = frozenset({"host", "content-length", "transfer-encoding", "connection", "accept-encoding"})


@dataclass
class Exchange:
    """One Messages API request and what came back.

    Attributes:
        request: the request body as the product sent it.
        blocks: the answer's content blocks (``text`` / ``tool_use`` with its parsed ``input``).
        usage: the answer's ``usage`` (``message_start`` merged with ``message_delta``).
        status: the upstream's HTTP status.
        complete: the answer reached ``message_stop`` (a round the product cancelled, e.g. an
            early start thrown away or a barge-in, is incomplete).
    """

    request: dict[str, Any]
    blocks: list[Block] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    status: int = 0
    complete: bool = False


class SseReader:
    """Rebuilds a streamed message from the Messages API's SSE bytes, fed in any pieces."""

    def __init__(self, exchange: Exchange) -> None:
        self.x = exchange
        self._buffer = ""
        self._json: dict[int, str] = {}
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: bytes) -> None:
        # Pieces may split a UTF-8 character or a CRLF: decode incrementally, normalise the buffer.
        self._buffer = (self._buffer + self._utf8.decode(chunk)).replace("\r\n", "\n")
        while "\n\n" in self._buffer:
            raw, self._buffer = self._buffer.split("\n\n", 1)
            data = "\n".join(line[5:].lstrip() for line in raw.split("\n") if line.startswith("data:"))
            if data:
                self._event(json.loads(data))

    def _event(self, ev: dict[str, Any]) -> None:
        kind = ev.get("type")
        if kind == "message_start":
            self.x.usage.update(ev["message"].get("usage") or {})
        elif kind == "content_block_start":
            block = dict(ev["content_block"])
            self.x.blocks.append(block)
            if block.get("type") == "tool_use":
                self._json[len(self.x.blocks) - 1] = ""
        elif kind == "content_block_delta":
            i, delta = ev["index"], ev["delta"]
            if delta.get("type") == "text_delta":
                self.x.blocks[i]["text"] = self.x.blocks[i].get("text", "") + delta["text"]
            elif delta.get("type") == "input_json_delta":
                self._json[i] = self._json.get(i, "") + delta["partial_json"]
        elif kind == "content_block_stop":
            i = ev["index"]
            if i in self._json:
                self.x.blocks[i]["input"] = json.loads(self._json.pop(i) or "{}")
        elif kind == "message_delta":
            self.x.usage.update(ev.get("usage") or {})
        elif kind == "message_stop":
            self.x.complete = True


class ModelTap:
    """The recording proxy (loopback, a free port).

    Args:
        upstream: base URL requests are forwarded to (the sandbox Messages API, or Anthropic's).
    """

    def __init__(self, upstream: str, host: str = "127.0.0.1") -> None:
        self.upstream = upstream.rstrip("/")
        self.host = host
        self.exchanges: list[Exchange] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._port = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self._port}"

    async def start(self) -> ModelTap:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._messages)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        raw = await request.read()
        exchange = Exchange(request=json.loads(raw))
        self.exchanges.append(exchange)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROPPED}
        async with self._session.post(self.upstream + request.path_qs, data=raw, headers=headers) as up:
            exchange.status = up.status
            out = web.StreamResponse(status=up.status)
            out.content_type = up.content_type
            await out.prepare(request)
            streamed = up.content_type == "text/event-stream"
            reader = SseReader(exchange)
            whole = b""
            try:
                async for chunk in up.content.iter_any():
                    await out.write(chunk)
                    if streamed:
                        reader.feed(chunk)
                    else:
                        whole += chunk
            except (ConnectionResetError, ConnectionError):
                return out  # the product went away mid-answer (a cancelled round): incomplete
            if not streamed and up.status == 200:
                message = json.loads(whole)
                exchange.blocks = list(message.get("content") or [])
                exchange.usage = dict(message.get("usage") or {})
                exchange.complete = True
            await out.write_eof()
            return out
