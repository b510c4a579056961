"""Slack front end end-to-end: slack-bolt / slack_sdk against the sandbox Slack, mounted
in our own aiohttp app, with Claude intake through the sandbox Messages API."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anthropic
import pytest
from aiohttp import web
from bot_fakes import NOW, FakeDesk

from bot import slack as sl
from bot.allow import AllowList
from bot.flow import ChatFlow
from bot.intake import ClaudeExtractor, Intake
from sandbox.anthropic import SandboxAnthropic
from sandbox.slack import Posted, SandboxSlack
from storage.db import open_database
from storage.drafts import DraftStore

BOT_TOKEN, SECRET, TEAM = "xoxb-sandbox", "signing-secret", "T0SANDBOX"
ALEX, BOB, STRANGER, CHANNEL = "U0ALEX", "U0BOB", "U0STRANGER", "C0GENERAL"


@dataclass
class Rig:
    slack: SandboxSlack
    desk: FakeDesk
    url: str
    claude: anthropic.AsyncAnthropic
    db_path: Path
    stack: contextlib.AsyncExitStack

    async def serve(self) -> str:
        """One more server, as after a restart: its own database connection, Bolt app and
        flow on the same database file; returns its events URL."""
        return await serve(self.stack, self.slack, self.desk, self.claude, self.db_path)


async def serve(
    stack: contextlib.AsyncExitStack,
    slack: SandboxSlack,
    desk: FakeDesk,
    claude: anthropic.AsyncAnthropic,
    db_path: Path,
) -> str:
    db = await open_database(db_path)
    stack.push_async_callback(db.close)
    intake = Intake(
        extractor=ClaudeExtractor(claude, model="claude-haiku-4-5"),
        person_name="Alex",
        person_tz="America/Los_Angeles",
        region="US",
        clock=lambda: NOW,
    )
    flow = ChatFlow(intake=intake, desk=desk, drafts=DraftStore(db, clock=lambda: NOW), clock=lambda: NOW)
    bolt = sl.build_slack_app(
        bot_token=BOT_TOKEN,
        signing_secret=SECRET,
        flow=flow,
        allow=AllowList.build(slack_users=[ALEX, BOB]),
        api_base_url=slack.base_url,
    )
    web_app = web.Application()
    sl.add_slack_routes(web_app, bolt)
    runner = web.AppRunner(web_app)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return f"http://127.0.0.1:{port}/slack/events"


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with contextlib.AsyncExitStack() as stack:
        model = SandboxAnthropic(api_key="sk-test")
        await model.start()
        stack.push_async_callback(model.stop)
        claude = anthropic.AsyncAnthropic(api_key="sk-test", base_url=model.base_url, max_retries=0)
        stack.push_async_callback(claude.close)
        slack = SandboxSlack(bot_token=BOT_TOKEN, signing_secret=SECRET, team_id=TEAM)
        await slack.start()
        stack.push_async_callback(slack.stop)
        desk = FakeDesk()
        path = tmp_path / "concierge.sqlite"
        url = await serve(stack, slack, desk, claude, path)
        yield Rig(slack, desk, url, claude, path, stack)


def in_thread(ts: str, word: str):  # noqa: ANN201
    return lambda p: p.method == "postMessage" and p.thread_ts == ts and word in p.text


async def start_errand(rig: Rig, text: str) -> Posted:
    answer = await rig.slack.slash_command(rig.url, text=text, user_id=ALEX, channel_id=CHANNEL)
    assert answer.status == 200 and answer.text == "On it…"
    return await rig.slack.wait_for(lambda p: p.method == "postMessage" and p.thread_ts is None)


async def test_slash_command_acked_then_asked_back_in_thread_and_confirmed(rig: Rig) -> None:
    slack = rig.slack
    parent = await start_errand(rig, "book me a haircut at Joe's Barbershop next week afternoons")
    assert parent.channel == CHANNEL and "asked me to" in parent.text
    ask = await slack.wait_for(in_thread(parent.ts, "phone number"))
    assert not ask.buttons

    answer = await slack.message_event(
        rig.url, user_id=ALEX, channel=CHANNEL, text="+1 415 555 0100", thread_ts=parent.ts
    )
    assert answer.status == 200
    confirm = await slack.wait_for(in_thread(parent.ts, "Shall I go ahead?"))
    assert "They open Tue 18 Mar 9:00 their time" in confirm.text
    assert [b[0] for b in confirm.buttons] == ["Confirm", "Edit", "Cancel"]
    assert not rig.desk.submitted

    click = await slack.click(rig.url, user_id=ALEX, message=confirm, action_id=confirm.buttons[0][1])
    assert click.status == 200
    done = await slack.wait_for(lambda p: p.method == "update" and "Confirmed" in p.text)
    assert done.ts == confirm.ts and not done.buttons
    (req,) = rig.desk.submitted
    assert req.phone == "+14155550100" and req.origin.thread_id == parent.ts
    assert (req.origin.chat_id, req.origin.user_id, req.origin.team_id) == (CHANNEL, ALEX, TEAM)


async def test_deterministic_call_edit_in_thread_then_confirm(rig: Rig) -> None:
    slack = rig.slack
    parent = await start_errand(rig, "+14155550100 Joe's Barbershop | haircut | next week afternoons")
    confirm = await slack.wait_for(in_thread(parent.ts, "Shall I go ahead?"))
    await slack.click(rig.url, user_id=ALEX, message=confirm, action_id=confirm.buttons[1][1])
    await slack.wait_for(in_thread(parent.ts, "What should I change?"))
    await slack.message_event(
        rig.url, user_id=ALEX, channel=CHANNEL, text="Friday morning", thread_ts=parent.ts
    )
    again = await slack.wait_for(lambda p: in_thread(parent.ts, "Fri 14 Mar")(p) and bool(p.buttons))
    await slack.click(rig.url, user_id=ALEX, message=again, action_id=again.buttons[0][1])
    await slack.wait_for(lambda p: p.method == "update" and p.ts == again.ts and "Confirmed" in p.text)
    (req,) = rig.desk.submitted
    assert str(req.window.start_date) == "2025-03-14"


async def test_stranger_refused_in_the_ack_and_on_buttons(rig: Rig) -> None:
    slack = rig.slack
    answer = await slack.slash_command(
        rig.url, text="+14155550100 Joe's | trim | tomorrow", user_id=STRANGER, channel_id=CHANNEL
    )
    assert answer.status == 200 and "allow-list" in answer.text
    parent = await start_errand(rig, "+14155550100 Joe's | trim | tomorrow")
    confirm = await slack.wait_for(in_thread(parent.ts, "Shall I go ahead?"))
    await slack.click(rig.url, user_id=STRANGER, message=confirm, action_id=confirm.buttons[0][1])
    refusal = await slack.wait_for_response(lambda r: "allow-list" in r.get("text", ""))
    assert refusal["response_type"] == "ephemeral"
    assert not rig.desk.submitted
    assert len([p for p in slack.posted if p.thread_ts is None]) == 1  # only Alex's errand got a thread


async def test_emergency_number_refused_in_thread(rig: Rig) -> None:
    parent = await start_errand(rig, "911 Fire | rescue | today")
    reply = await rig.slack.wait_for(in_thread(parent.ts, "emergency number"))
    assert not reply.buttons and not rig.desk.submitted


async def test_unsigned_wrongly_signed_or_stale_requests_get_401(rig: Rig) -> None:
    slack = rig.slack
    body = urllib.parse.urlencode(
        {
            "command": "/call",
            "text": "+14155550100 Joe's | trim | tomorrow",
            "user_id": ALEX,
            "team_id": TEAM,
            "channel_id": CHANNEL,
            "response_url": f"{slack.root}/response/x",
        }
    )
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    good = slack.sign(body)
    wrong = {**good, "X-Slack-Signature": "v0=" + "0" * 64}
    stale = slack.sign(body, timestamp=int(time.time()) - 6 * 60)
    tampered = {**good}
    for headers, payload in (
        (form, body),
        ({**form, **wrong}, body),
        ({**form, **stale}, body),
        ({**form, **tampered}, body.replace("trim", "perm")),
    ):
        answer = await slack.post_raw(rig.url, payload, headers)
        assert answer.status == 401
    assert not slack.posted and not rig.desk.submitted
    assert not [c for c in slack.calls if c[0] != "auth.test"]


def ephemeral_to(user: str, word: str):  # noqa: ANN201
    return lambda p: p.method == "ephemeral" and p.user == user and word in p.text


async def test_someone_elses_reply_does_not_change_the_draft_nor_their_click_confirm_it(rig: Rig) -> None:
    """The probe: Bob, also allowed, replies in Alex's thread with another number, then the
    original Confirm is pressed. The draft is Alex's: Bob's words change nothing (he is told
    so, privately), his own click on Confirm is refused, and Alex's click submits Alex's number."""
    slack = rig.slack
    parent = await start_errand(rig, "+14155550100 Joe's Barbershop | haircut | next week afternoons")
    confirm = await slack.wait_for(in_thread(parent.ts, "Shall I go ahead?"))

    await slack.message_event(
        rig.url, user_id=BOB, channel=CHANNEL, text="+1 415 555 0199", thread_ts=parent.ts
    )
    note = await slack.wait_for(ephemeral_to(BOB, "belongs to the person who started it"))
    assert note.thread_ts == parent.ts and note.channel == CHANNEL
    assert [p for p in slack.posted if "Shall I go ahead?" in p.text] == [confirm], "no new prompt"

    await slack.click(rig.url, user_id=BOB, message=confirm, action_id=confirm.buttons[0][1])
    refusal = await slack.wait_for_response(lambda r: "belongs to the person" in r.get("text", ""))
    assert refusal["response_type"] == "ephemeral" and refusal["replace_original"] is False
    assert not rig.desk.submitted and not [p for p in slack.posted if p.method == "update"]

    await slack.click(rig.url, user_id=ALEX, message=confirm, action_id=confirm.buttons[0][1])
    await slack.wait_for(lambda p: p.method == "update" and p.ts == confirm.ts and "Confirmed" in p.text)
    (req,) = rig.desk.submitted
    assert req.phone == "+14155550100" and req.origin.user_id == ALEX


async def test_every_change_makes_the_older_buttons_stale(rig: Rig) -> None:
    slack = rig.slack
    parent = await start_errand(rig, "+14155550100 Joe's Barbershop | haircut | next week afternoons")
    first = await slack.wait_for(in_thread(parent.ts, "Shall I go ahead?"))
    await slack.message_event(
        rig.url, user_id=ALEX, channel=CHANNEL, text="+1 415 555 0199", thread_ts=parent.ts
    )
    second = await slack.wait_for(lambda p: in_thread(parent.ts, "+14155550199")(p) and bool(p.buttons))
    assert {b[2] for b in first.buttons}.isdisjoint(b[2] for b in second.buttons), "a new draft id"

    for label in ("Confirm", "Edit", "Cancel"):
        action = next(b[1] for b in first.buttons if b[0] == label)
        await slack.click(rig.url, user_id=ALEX, message=first, action_id=action)
    await slack.wait_for_response(
        lambda r: len([x for x in slack.responses if "changed since" in x["text"]]) == 3
    )
    assert not rig.desk.submitted and not [p for p in slack.posted if p.method == "update"]

    await slack.click(rig.url, user_id=ALEX, message=second, action_id=second.buttons[0][1])
    await slack.wait_for(lambda p: p.method == "update" and p.ts == second.ts and "Confirmed" in p.text)
    (req,) = rig.desk.submitted
    assert req.phone == "+14155550199"


async def test_a_draft_survives_a_restart_and_is_queued_once(rig: Rig) -> None:
    slack = rig.slack
    parent = await start_errand(rig, "+14155550100 Joe's Barbershop | haircut | next week afternoons")
    confirm = await slack.wait_for(in_thread(parent.ts, "Shall I go ahead?"))
    restarted = await rig.serve()  # a new process would hold nothing of the first one's memory

    clicks = [
        slack.click(restarted, user_id=ALEX, message=confirm, action_id=confirm.buttons[0][1])
        for _ in range(3)
    ]  # a triple click, on the restarted server and the old one
    clicks.append(slack.click(rig.url, user_id=ALEX, message=confirm, action_id=confirm.buttons[0][1]))
    assert {a.status for a in await asyncio.gather(*clicks)} == {200}
    await slack.wait_for(lambda p: p.method == "update" and p.ts == confirm.ts and "Confirmed" in p.text)
    assert len(rig.desk.submitted) == 1
    assert len([p for p in slack.posted if p.method == "update"]) == 1, "the losers edit nothing"
