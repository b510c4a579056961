"""The conversation history as the Messages API takes it, and the edits a live call makes to it.

History must hold only what the callee actually heard: a barge-in trims the last
reply (``set_text``), a disclosure said by the guard is prefixed (``prefix_text``).
"""

from __future__ import annotations

from typing import Any

Message = dict[str, Any]


def prefix_text(content: list[dict[str, Any]], prefix: str) -> None:
    """Put ``prefix`` (spoken before the model's words) at the start of the message's text."""
    for block in content:
        if block["type"] == "text":
            block["text"] = f"{prefix} {block['text']}"
            return
    content.insert(0, {"type": "text", "text": prefix})


def text_of(message: Message) -> str:
    return " ".join(b["text"] for b in message["content"] if b["type"] == "text")


def set_text(message: Message, text: str) -> None:
    """Replace a message's text with ``text`` (dropping text blocks if empty), keeping tool_use."""
    others = [b for b in message["content"] if b["type"] != "text"]
    message["content"][:] = ([{"type": "text", "text": text}] if text else []) + others


def add_user(messages: list[Message], blocks: list[dict[str, Any]]) -> None:
    """Append user content, merging into a trailing user message (roles must alternate)."""
    if messages and messages[-1]["role"] == "user":
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": "user", "content": list(blocks)})


def drop_empty(messages: list[Message]) -> None:
    """Remove messages left empty by a trim and merge the neighbours that now touch."""
    merged: list[Message] = []
    for m in messages:
        if not m["content"]:
            continue
        if merged and merged[-1]["role"] == m["role"]:
            merged[-1]["content"].extend(m["content"])
        else:
            merged.append(m)
    messages[:] = merged
