"""The callee the playground plays live: lines appended to a running call's script, keys, hang-up.

Driven by the real twilio SDK against the sandbox Twilio, with the signed-webhook app of
``test_sandbox_voice_twilio`` standing in for the product's media-stream endpoint.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_sandbox_voice_twilio import OTHER, create
from test_sandbox_voice_twilio import env as env  # the fixture, re-exported for this module

from sandbox.callee import CalleeScript, HangUp, Press, Say
from sandbox.twilio_call import Program

pytestmark = [
    pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'auth' parameter is deprecated:DeprecationWarning"),
]


async def test_lines_and_keys_added_during_the_call_reach_the_stream(env: Any) -> None:
    sandbox, app, client = env
    await create(client, app)  # nobody programmed the number: an empty script, silent on the line
    call = await sandbox.wait_for_call()
    stream = await app.streams.get()
    await stream.until(lambda: len(stream.events("media")) >= 5)
    assert call.said == [] and not stream.events("dtmf")

    call.callee.script.steps += [Say("front desk"), Press("1#"), HangUp()]
    await stream.until(lambda: stream.closed)
    assert stream.callee_words == ["front", "desk"]
    dtmf = stream.events("dtmf")
    assert [d["dtmf"] for d in dtmf] == [
        {"track": "inbound_track", "digit": "1"},
        {"track": "inbound_track", "digit": "#"},
    ]
    assert all(d["streamSid"] == stream.events("start")[0]["streamSid"] for d in dtmf)
    # Keys go out once the words were spoken (no callee voice after them), and before the stop.
    first_key = next(i for i, m in enumerate(stream.messages) if m["event"] == "dtmf")
    before = int(stream.messages[first_key - 1]["media"]["chunk"])
    assert stream.voice_frames and max(stream.voice_frames) <= before
    assert stream.messages[-1]["event"] == "stop"
    await asyncio.wait_for(call.done.wait(), 5)
    assert call.ended_by == "callee" and call.errors == []


async def test_default_program_answers_numbers_nobody_programmed(env: Any) -> None:
    sandbox, app, client = env
    sandbox.default_program = Program(script=CalleeScript([Say("hello there"), HangUp()]))
    await create(client, app, to=OTHER)
    call = await sandbox.wait_for_call()
    await asyncio.wait_for(call.done.wait(), 5)
    assert call.to == OTHER and call.said == ["hello there"] and call.ended_by == "callee"
