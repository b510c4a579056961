"""The assistant message of one model round, assembled from the raw Messages API stream.

Why not ``client.messages.stream()``: its ``MessageStream`` rebuilds a full pydantic snapshot of
the message and a second, derived event for every SSE event. On a phone call every model round
is on the path between the callee's last word and our first audio, and that bookkeeping was a
large share of our CPU per round (the figures are in ``bench/README.md``).
``client.messages.create(stream=True)`` yields the wire events themselves; this builder keeps
only what the conversation needs — the text of each block and each tool call with its input.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anthropic

log = logging.getLogger(__name__)


class AnswerBuilder:
    """Collects content blocks by index from ``content_block_*`` events.

    ``content()`` returns them as request params (what the next request's history holds), with
    empty text blocks dropped (the API rejects them).
    """

    def __init__(self) -> None:
        self._blocks: dict[int, dict[str, Any]] = {}
        self._json: dict[int, list[str]] = {}
        self.stopped = False  # ``message_stop`` arrived: the answer is complete
        self.stop_reason: str | None = None

    def start(self, index: int, block: Any) -> None:
        if block.type == "text":
            self._blocks[index] = {"type": "text", "text": block.text or ""}
        elif block.type == "tool_use":
            self._blocks[index] = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
            self._json[index] = []
        # other block kinds (thinking, server tools) are not part of a phone reply: ignored

    def text(self, index: int, piece: str) -> None:
        block = self._blocks.get(index)
        if block is not None and block["type"] == "text":
            block["text"] += piece

    def partial_json(self, index: int, piece: str) -> None:
        parts = self._json.get(index)
        if parts is not None:
            parts.append(piece)

    def stop(self, index: int) -> None:
        parts = self._json.pop(index, None)
        if parts is None:
            return
        raw = "".join(parts)
        try:
            value = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            log.warning("model sent tool input that is not JSON: %.200r", raw)
            value = {}
        self._blocks[index]["input"] = value if isinstance(value, dict) else {}

    def on_event(self, ev: Any) -> None:
        """Record one non-delta event (deltas go through ``text`` / ``partial_json``)."""
        kind = ev.type
        if kind == "content_block_start":
            self.start(ev.index, ev.content_block)
        elif kind == "content_block_stop":
            self.stop(ev.index)
        elif kind == "message_delta":
            self.stop_reason = ev.delta.stop_reason
        elif kind == "message_stop":
            self.stopped = True

    def content(self, request: Any = None) -> list[dict[str, Any]]:
        """The answer's blocks in order; raises if the stream ended before ``message_stop``.

        A stream cut off cleanly (no transport error, no ``error`` event) would otherwise pass
        for a complete answer with its tool calls missing; it is a dropped connection.
        """
        if not self.stopped:
            raise anthropic.APIConnectionError(
                message="The model's answer ended before message_stop", request=request
            )
        out = []
        for _, block in sorted(self._blocks.items()):
            if block["type"] == "text" and not block["text"].strip():
                continue
            out.append(block)
        return out
