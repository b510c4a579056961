"""Telegram front end end-to-end: python-telegram-bot against the sandbox Bot API,
Claude intake through the real anthropic SDK against the sandbox Messages API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest
from aiohttp import web
from bot_fakes import NOW, FakeDesk

from bot import telegram as tg
from bot.allow import AllowList
from bot.flow import ChatFlow
from bot.intake import ClaudeExtractor, Intake
from sandbox.anthropic import SandboxAnthropic
from sandbox.telegram import SandboxTelegram, Sent
from storage.db import Database, open_database
from storage.drafts import DraftStore

TOKEN = "123456:sandbox-token"
ALEX, BOB, STRANGER = 7, 8, 99


@dataclass
class Rig:
    api: SandboxTelegram
    desk: FakeDesk
    app: tg.TgApp


def make_flow(desk: FakeDesk, client: anthropic.AsyncAnthropic | None, db: Database) -> ChatFlow:
    intake = Intake(
        extractor=ClaudeExtractor(client, model="claude-haiku-4-5") if client else None,
        person_name="Alex",
        person_tz="America/Los_Angeles",
        region="US",
        clock=lambda: NOW,
    )
    return ChatFlow(intake=intake, desk=desk, drafts=DraftStore(db, clock=lambda: NOW), clock=lambda: NOW)


@pytest.fixture
async def claude() -> AsyncIterator[anthropic.AsyncAnthropic]:
    server = SandboxAnthropic(api_key="sk-test")
    await server.start()
    client = anthropic.AsyncAnthropic(api_key="sk-test", base_url=server.base_url, max_retries=0)
    yield client
    await client.close()
    await server.stop()


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(tmp_path / "concierge.sqlite")
    yield database
    await database.close()


@pytest.fixture
async def rig(claude: anthropic.AsyncAnthropic, db: Database) -> AsyncIterator[Rig]:
    api = SandboxTelegram(token=TOKEN)
    await api.start()
    desk = FakeDesk()
    app = tg.build_application(
        token=TOKEN,
        api_base_url=api.base_url,
        flow=make_flow(desk, claude, db),
        allow=AllowList.build(telegram_users=[ALEX, BOB]),
    )
    await tg.start_polling(app, poll_timeout=1)
    yield Rig(api, desk, app)
    await tg.stop(app)
    await api.stop()


def replying_to(mid: int, word: str):  # noqa: ANN201
    return lambda s: s.method == "sendMessage" and s.reply_to_message_id == mid and word in (s.text or "")


async def alerted(api: SandboxTelegram, word: str) -> dict[str, Any]:
    """The first callback answer shown as an alert that says ``word`` (only the presser sees it)."""

    found = await api.wait_for_callback_answer(lambda c: word in str(c.get("text", "")))
    assert found.get("show_alert") in (True, "true", "True"), found
    return found


async def test_free_text_missing_number_asked_back_then_confirmed(rig: Rig) -> None:
    api = rig.api
    m1 = api.user_message(42, ALEX, "book me a haircut at Joe's Barbershop next week afternoons")
    ask = await api.wait_for(replying_to(m1, "phone number"))
    assert "Joe's Barbershop" in (ask.text or "") and not ask.buttons
    assert not rig.desk.submitted

    m2 = api.user_message(42, ALEX, "+1 415 555 0100")
    confirm = await api.wait_for(replying_to(m2, "Shall I go ahead?"))
    assert "They open Tue 18 Mar 9:00 their time — I'll call then." in (confirm.text or "")
    assert [label for label, _ in confirm.buttons] == ["Confirm", "Edit", "Cancel"]
    assert not rig.desk.submitted  # nothing is queued before the person confirms

    api.press_button(42, ALEX, confirm.message_id, confirm.buttons[0][1])
    done = await api.wait_for(lambda s: s.method == "editMessageText" and "Confirmed" in (s.text or ""))
    assert done.message_id == confirm.message_id and done.reply_markup is None
    assert "/cancel j1" in (done.text or "")
    (req,) = rig.desk.submitted
    assert (req.phone, req.business_name, req.service) == ("+14155550100", "Joe's Barbershop", "haircut")
    assert req.origin.chat_id == "42" and req.origin.user_id == str(ALEX)
    assert str(req.window.start_date) == "2025-03-17" and req.window.earliest.hour == 12
    assert api.answered_callbacks  # the button spinner was stopped


async def test_deterministic_call_in_a_forum_topic_edit_then_confirm(rig: Rig) -> None:
    api = rig.api
    m1 = api.user_message(
        -1001, ALEX, "/call +14155550100 Joe's Barbershop | haircut | next week afternoons", 5
    )
    confirm = await api.wait_for(replying_to(m1, "Shall I go ahead?"))
    assert confirm.message_thread_id == 5 and confirm.chat_id == -1001

    api.press_button(-1001, ALEX, confirm.message_id, confirm.buttons[1][1])  # Edit
    prompt = await api.wait_for(lambda s: "What should I change?" in (s.text or ""))
    assert prompt.message_thread_id == 5
    m2 = api.user_message(-1001, ALEX, "make it Friday morning", 5)
    again = await api.wait_for(replying_to(m2, "Shall I go ahead?"))
    assert "Fri 14 Mar" in (again.text or "") and again.message_thread_id == 5

    api.press_button(-1001, ALEX, again.message_id, again.buttons[0][1])
    await api.wait_for(lambda s: s.method == "editMessageText" and "Confirmed" in (s.text or ""))
    (req,) = rig.desk.submitted
    assert req.origin.thread_id == "5" and str(req.window.start_date) == "2025-03-14"
    assert req.window.earliest.hour == 9


async def test_cancel_button_drops_the_draft(rig: Rig) -> None:
    api = rig.api
    m1 = api.user_message(42, ALEX, "/call +14155550100 Joe's | trim | tomorrow")
    confirm = await api.wait_for(replying_to(m1, "Shall I go ahead?"))
    api.press_button(42, ALEX, confirm.message_id, confirm.buttons[2][1])
    await api.wait_for(lambda s: s.method == "editMessageText" and "dropped" in (s.text or ""))
    api.press_button(42, ALEX, confirm.message_id, confirm.buttons[0][1])  # a late Confirm
    await alerted(api, "no longer open")
    assert not rig.desk.submitted
    assert len([s for s in api.sent if s.method == "editMessageText"]) == 1, "the refusal edits nothing"


async def test_cancel_command_and_status(rig: Rig) -> None:
    api = rig.api
    m1 = api.user_message(42, ALEX, "/call +14155550100 Joe's | trim | tomorrow")
    confirm = await api.wait_for(replying_to(m1, "Shall I go ahead?"))
    api.press_button(42, ALEX, confirm.message_id, confirm.buttons[0][1])
    await api.wait_for(lambda s: "Confirmed" in (s.text or ""))

    m2 = api.user_message(42, ALEX, "/status")
    await api.wait_for(replying_to(m2, "j1 — trim at Joe's: queued"))
    m3 = api.user_message(42, ALEX, "/cancel j1")
    await api.wait_for(replying_to(m3, "Errand j1 is cancelled"))
    assert rig.desk.cancelled == [("j1", str(ALEX))]
    m4 = api.user_message(42, ALEX, "/cancel j1")
    await api.wait_for(replying_to(m4, "already on the phone or finished"))
    m5 = api.user_message(42, ALEX, "/cancel nope")
    await api.wait_for(replying_to(m5, "don't know that errand"))


async def test_stranger_is_refused_and_nothing_submitted(rig: Rig) -> None:
    api = rig.api
    m1 = api.user_message(99, STRANGER, "/call +14155550100 Joe's | trim | tomorrow")
    await api.wait_for(replying_to(m1, "allow-list"))
    m2 = api.user_message(99, STRANGER, "book me a haircut at Joe's, +1 415 555 0100, tomorrow")
    await api.wait_for(replying_to(m2, "allow-list"))
    # A stranger pressing Alex's Confirm button does nothing either.
    m3 = api.user_message(42, ALEX, "/call +14155550100 Joe's | trim | tomorrow")
    confirm = await api.wait_for(replying_to(m3, "Shall I go ahead?"))
    api.press_button(42, STRANGER, confirm.message_id, confirm.buttons[0][1])
    m4 = api.user_message(99, STRANGER, "/status")  # processed after the press (updates are in order)
    await api.wait_for(replying_to(m4, "allow-list"))
    assert any(c.get("show_alert") for c in api.answered_callbacks)
    assert not rig.desk.submitted
    assert not any(s.method == "editMessageText" for s in api.sent)


async def test_emergency_number_refused(rig: Rig) -> None:
    api = rig.api
    m1 = api.user_message(42, ALEX, "call 911 and book a table at Luigi tomorrow evening")
    reply = await api.wait_for(replying_to(m1, "emergency number"))
    assert not reply.buttons
    m2 = api.user_message(42, ALEX, "/call 112 Luigi | table | tomorrow")
    await api.wait_for(replying_to(m2, "emergency number"))
    m3 = api.user_message(42, ALEX, "/call +1 900 555 0199 Psychic | reading | tomorrow")
    await api.wait_for(replying_to(m3, "premium-rate"))
    assert not rig.desk.submitted


async def test_webhook_requires_the_secret(db: Database) -> None:
    api = SandboxTelegram(token=TOKEN)
    await api.start()
    desk = FakeDesk()
    app = tg.build_application(
        token=TOKEN,
        api_base_url=api.base_url,
        flow=make_flow(desk, None, db),
        allow=AllowList.build(telegram_users=[ALEX]),
        webhook=True,
    )
    await tg.start_webhook_mode(app, url="https://example.invalid/telegram/webhook", secret="s3cret")
    assert api.webhook["secret_token"] == "s3cret"
    web_app = web.Application()
    tg.add_webhook_route(web_app, app, "s3cret")
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/telegram/webhook"
    try:
        async with aiohttp.ClientSession() as http:
            call = api.update_json(42, ALEX, "/call +14155550100 Joe's | trim | tomorrow")
            for headers in ({}, {tg.SECRET_HEADER: "wrong"}, {tg.SECRET_HEADER: "s3cret-but-longer"}):
                async with http.post(url, json=call, headers=headers) as resp:
                    assert resp.status == 403
            async with http.post(url, json=call, headers={tg.SECRET_HEADER: "s3cret"}) as resp:
                assert resp.status == 200
        sent: Sent = await api.wait_for(lambda s: "Shall I go ahead?" in (s.text or ""))
        assert sent.chat_id == 42
        assert len([s for s in api.sent if s.method == "sendMessage"]) == 1  # only the signed one
        assert not desk.submitted
    finally:
        await runner.cleanup()
        await tg.stop(app)
        await api.stop()


async def test_a_group_draft_is_its_starters_and_stale_buttons_are_refused(rig: Rig) -> None:
    """Bob, also allowed, presses Alex's buttons in a group: refused, privately. Alex changes
    the draft; the older message's buttons are then refused as stale, the newest one works."""
    api = rig.api
    m1 = api.user_message(-1001, ALEX, "/call +14155550100 Joe's Barbershop | haircut | next week afternoons")
    first = await api.wait_for(replying_to(m1, "Shall I go ahead?"))
    for _, data in first.buttons:
        api.press_button(-1001, BOB, first.message_id, data)
    m2 = api.user_message(-1001, BOB, "+1 415 555 0199")  # Bob's words are his own thread, with no draft
    await alerted(api, "belongs to the person who started it")
    await api.wait_for_callback_answer(
        lambda _: len([c for c in api.answered_callbacks if "belongs to" in str(c.get("text"))]) == 3
    )
    assert not rig.desk.submitted

    m3 = api.user_message(-1001, ALEX, "+1 415 555 0123")
    second = await api.wait_for(replying_to(m3, "Shall I go ahead?"))
    assert "+14155550123" in (second.text or "")
    assert {d for _, d in first.buttons}.isdisjoint(d for _, d in second.buttons), "a new draft id"
    api.press_button(-1001, ALEX, first.message_id, first.buttons[0][1])  # the stale Confirm
    await alerted(api, "changed since")
    api.press_button(-1001, ALEX, second.message_id, second.buttons[0][1])
    await api.wait_for(lambda s: s.method == "editMessageText" and "Confirmed" in (s.text or ""))
    (req,) = rig.desk.submitted
    assert req.phone == "+14155550123" and req.origin.user_id == str(ALEX)
    assert not [s for s in api.sent if s.reply_to_message_id == m2], "Bob's chatter is not answered"
    edits = [s for s in api.sent if s.method == "editMessageText"]
    assert [e.message_id for e in edits] == [second.message_id], "refused presses edit nothing"
