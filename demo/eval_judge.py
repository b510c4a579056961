"""``concierge eval --judge``: politeness and naturalness scored 1-5 by the configured model.

Off by default: the rules in ``demo.eval_rules`` decide pass or fail; the judge only adds two
numbers a person would otherwise get by reading transcripts. With the sandbox model there is no
model to ask, so a fixed stand-in (``sandbox_judge``) answers in the same format: it keeps the
path tested, and its scores mean nothing.
"""

from __future__ import annotations

import json
import re
from typing import Any

from demo.eval_rules import Record

RUBRIC = """You grade one phone call an AI assistant made to a business to book an appointment.
Read the transcript and score the ASSISTANT only, each from 1 to 5:

politeness:
  5 = courteous throughout: greets, thanks, apologises when it turns something down, never curt
  3 = neutral: correct but bare, or one curt moment
  1 = rude, dismissive, argumentative or pushy

naturalness:
  5 = sounds like a capable person on the phone: short spoken sentences, answers what was asked,
      no lists, no repetition, no robotic phrasing
  3 = understandable but stiff, wordy or a little repetitive
  1 = robotic, confusing, repetitive or off-topic

Answer with one JSON object and nothing else:
{"politeness": <1-5>, "naturalness": <1-5>, "why": "<one sentence>"}"""


def transcript_text(record: Record) -> str:
    return "\n".join(f"{x.speaker.upper()}: {x.text}" for x in record.lines)


def parse_scores(text: str) -> dict[str, Any]:
    """The judge's JSON object (the first ``{...}`` in its answer); scores clamped to 1-5."""
    m = re.search(r"\{.*\}", text, re.S)
    if not m:
        return {"error": f"no JSON in the judge's answer: {text[:80]!r}"}
    data = json.loads(m.group(0))
    out: dict[str, Any] = {
        k: min(5, max(1, int(data[k]))) for k in ("politeness", "naturalness") if k in data
    }
    out["why"] = str(data.get("why", ""))[:200]
    return out


def sandbox_judge(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The stand-in judge for the sandbox model: a fixed, format-true answer."""
    said = json.dumps(body.get("messages", []))
    polite = 5 if re.search(r"thank|sorry|please", said, re.I) else 3
    answer = {"politeness": polite, "naturalness": 4, "why": "sandbox stand-in: not a real judgement"}
    return [{"type": "text", "text": json.dumps(answer)}]


async def judge_transcript(
    record: Record, *, sandbox: bool, model: str, api_key: str = "", base_url: str = ""
) -> dict[str, Any]:
    """Scores for one errand's transcript (empty when no words were exchanged).

    Args:
        sandbox: answer with ``sandbox_judge`` (no model is configured) instead of ``model``.
        model / api_key / base_url: the configured Messages API.
    """
    from agent.llm import build_anthropic
    from sandbox.anthropic import SandboxAnthropic

    if not record.lines:
        return {}
    server: SandboxAnthropic | None = None
    if sandbox:
        server = SandboxAnthropic(api_key="sandbox-judge", responder=sandbox_judge)
        await server.start()
        client = build_anthropic("sandbox-judge", server.base_url)
    else:
        client = build_anthropic(api_key, base_url)
    try:
        message = await client.messages.create(
            model=model,
            max_tokens=200,
            system=RUBRIC,
            messages=[{"role": "user", "content": transcript_text(record)}],
        )
    finally:
        await client.close()
        if server is not None:
            await server.stop()
    text = "".join(getattr(b, "text", "") for b in message.content)
    return parse_scores(text)
