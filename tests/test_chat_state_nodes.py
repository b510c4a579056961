"""Chat state shared by several nodes on one database: the question a live call waits on, drafts,
updates already handled, and Telegram long polling on exactly one node.

Each "node" here is what one ``concierge serve`` builds for the chats: its own database
connection, chat flow and front end (python-telegram-bot / slack-bolt against the sandbox),
on the same database as the other node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from bot_fakes import NOW, FakeDesk
from factories import call_request

from bot import render
from bot import slack as sl
from bot import telegram as tg
from bot.allow import AllowList
from bot.flow import ChatFlow
from bot.intake import Intake
from bot.notify import ChatNotifier
from concierge.app import TELEGRAM_POLLING
from concierge.live_ask import PendingQuestions
from sandbox.slack import SandboxSlack
from sandbox.telegram import SandboxTelegram
from storage.chat_updates import SeenUpdates
from storage.db import Database, open_database
from storage.drafts import DraftStore
from storage.jobs import JobStore
from storage.live_questions import LiveQuestionStore
from storage.models import ChatOrigin, Job, JobState, Platform
from storage.ports import LiveAnswer

TG_TOKEN = "123456:sandbox-token"
SLACK_TOKEN, SLACK_SECRET, TEAM = "xoxb-sandbox", "signing-secret", "T0SANDBOX"
ALEX, BOB = 7, 8
SL_ALEX, SL_BOB, CHANNEL = "U0ALEX", "U0BOB", "C0GENERAL"
QUESTION = "Would Alex prefer the 30 or 60 minute cut?"
#: Seconds a waiting call looks for an answer another node stored (the app uses 0.25 s).
POLL = 0.02
#: Bound on any single wait in these tests (events, not sleeps, decide when they go on).
BOUND = 10.0


@dataclass
class Node:
    db: Database
    desk: FakeDesk
    flow: ChatFlow
    questions: PendingQuestions


async def open_node(stack: contextlib.AsyncExitStack, db_url: str, name: str, post: Any = None) -> Node:
    db = await open_database(db_url)
    stack.push_async_callback(db.close)
    desk = FakeDesk()
    questions = PendingQuestions(
        post or _never_posts, LiveQuestionStore(db), timeout=BOUND, node=name, poll_interval=POLL
    )
    intake = Intake(
        extractor=None, person_name="Alex", person_tz="America/Los_Angeles", region="US", clock=lambda: NOW
    )
    flow = ChatFlow(
        intake=intake, desk=desk, drafts=DraftStore(db, clock=lambda: NOW), clock=lambda: NOW, live=questions
    )
    return Node(db, desk, flow, questions)


async def _never_posts(job: Job, question: str, options: Any) -> bool:
    raise AssertionError("this node holds no call")


@pytest.fixture
async def stack() -> AsyncIterator[contextlib.AsyncExitStack]:
    async with contextlib.AsyncExitStack() as s:
        yield s


def in_call_job(origin: ChatOrigin, job_id: str = "j1") -> Job:
    return Job(
        id=job_id,
        request=call_request(origin=origin),
        state=JobState.IN_CALL,
        attempts=1,
        max_attempts=3,
        next_attempt_at=NOW,
        created_at=NOW,
        updated_at=NOW,
    )


class Shown:
    """Node A's ``post``: records that the question reached the chat."""

    def __init__(self) -> None:
        self.shown = asyncio.Event()

    async def post(self, job: Job, question: str, options: Any) -> bool:
        self.shown.set()
        return True


# -- live ask across nodes -------------------------------------------------------------------


async def test_an_answer_typed_at_node_b_reaches_the_call_waiting_on_node_a(
    stack: contextlib.AsyncExitStack, db_url: str
) -> None:
    chat = Shown()
    a = await open_node(stack, db_url, "node-a", chat.post)
    b = await open_node(stack, db_url, "node-b")
    origin = ChatOrigin(Platform.TELEGRAM, str(ALEX), str(ALEX))
    waiting = asyncio.create_task(a.questions.ask(in_call_job(origin), QUESTION))
    await asyncio.wait_for(chat.shown.wait(), BOUND)

    assert await b.questions.open_for(str(ALEX)) == "j1"
    assert await b.questions.open_for(str(BOB)) is None
    refused = await b.flow.press(str(BOB), "ans:j1:no")
    assert refused.notice == render.NOT_YOUR_QUESTION and not waiting.done()

    out = await b.flow.follow_up(f"tg:{ALEX}", origin, "The long one please")
    assert out is not None and "The long one please" in out.text
    assert await asyncio.wait_for(waiting, BOUND) == "The long one please"
    assert b.desk.answers == [] and a.desk.answers == []  # the call took it
    assert await b.questions.open_for(str(ALEX)) is None  # closed by node A


async def test_a_button_pressed_in_slack_at_node_b_reaches_the_call_on_node_a(
    stack: contextlib.AsyncExitStack, db_url: str
) -> None:
    """Node A posts the question with the real notifier; the owner's click reaches node B's Bolt app."""
    slack = await start_slack(stack)
    a_db = await open_database(db_url)
    stack.push_async_callback(a_db.close)
    notifier = ChatNotifier(
        JobStore(a_db), slack_client=slack_client(stack, slack), person_tz="America/Los_Angeles"
    )
    a = await open_node(stack, db_url, "node-a", notifier.ask)
    b = await open_node(stack, db_url, "node-b")
    url_b = await serve_slack(stack, slack, b)
    origin = ChatOrigin(Platform.SLACK, CHANNEL, SL_ALEX, thread_id="1700000000.000100", team_id=TEAM)
    waiting = asyncio.create_task(
        a.questions.ask(in_call_job(origin), QUESTION, ["30 minutes", "60 minutes"])
    )
    asked = await slack.wait_for(lambda p: p.method == "postMessage" and bool(p.buttons))

    await slack.click(url_b, user_id=SL_BOB, message=asked, action_id=asked.buttons[1][1])
    await slack.wait_for_response(lambda r: r.get("text") == render.NOT_YOUR_QUESTION)
    assert not waiting.done()
    await slack.click(url_b, user_id=SL_ALEX, message=asked, action_id=asked.buttons[1][1])
    assert await asyncio.wait_for(waiting, BOUND) == "60 minutes"
    edited = await slack.wait_for(lambda p: p.method == "update" and p.ts == asked.ts)
    assert "60 minutes" in edited.text


async def test_an_answer_after_the_call_stopped_waiting_goes_to_the_next_call(
    stack: contextlib.AsyncExitStack, db_url: str
) -> None:
    a = await open_node(stack, db_url, "node-a", Shown().post)
    b = await open_node(stack, db_url, "node-b")
    a.questions = PendingQuestions(Shown().post, LiveQuestionStore(a.db), timeout=0, poll_interval=POLL)
    job = in_call_job(ChatOrigin(Platform.TELEGRAM, str(ALEX), str(ALEX)))
    b.desk.jobs[job.id] = job
    assert await a.questions.ask(job, QUESTION) is None
    assert await b.questions.open_for(str(ALEX)) is None
    pressed = await b.flow.press(str(ALEX), "ans:j1:30 minutes")
    assert b.desk.answers == [("j1", str(ALEX), "30 minutes")]  # today's ErrandDesk.answer path
    assert pressed.edit is not None and "call them back" in pressed.edit.text


async def test_an_answer_told_taken_reaches_the_call_even_as_it_stops_waiting(db_url: str) -> None:
    """The answer is stored between the call's last look and its close: the close returns it."""
    async with await open_database(db_url) as db_a, await open_database(db_url) as db_b:
        a, b = LiveQuestionStore(db_a), LiveQuestionStore(db_b)
        token = await a.open("j1", str(ALEX), node="node-a", expires_in=_minute())
        assert await b.answer("j1", str(ALEX), "yes") is LiveAnswer.TAKEN
        assert await a.close("j1", token) == "yes"
        assert await b.answer("j1", str(ALEX), "no") is LiveAnswer.NONE_OPEN


async def test_of_two_answers_at_two_nodes_exactly_one_is_taken(db_url: str) -> None:
    async with await open_database(db_url) as db_a, await open_database(db_url) as db_b:
        a, b = LiveQuestionStore(db_a), LiveQuestionStore(db_b)
        token = await a.open("j1", str(ALEX), node="node-a", expires_in=_minute())
        results = await asyncio.gather(b.answer("j1", str(ALEX), "yes"), a.answer("j1", str(ALEX), "no"))
        assert sorted(results) == sorted([LiveAnswer.TAKEN, LiveAnswer.NONE_OPEN])
        taken = "yes" if results[0] is LiveAnswer.TAKEN else "no"
        assert await a.answer_of("j1", token) == taken


async def test_a_new_asking_never_reads_the_answer_to_an_earlier_one(db_url: str) -> None:
    async with await open_database(db_url) as db:
        store = LiveQuestionStore(db)
        first = await store.open("j1", str(ALEX), node="a", expires_in=_minute())
        assert await store.answer("j1", str(ALEX), "yes") is LiveAnswer.TAKEN
        second = await store.open("j1", str(ALEX), node="a", expires_in=_minute())
        assert await store.answer_of("j1", second) is None
        assert await store.answer_of("j1", first) is None  # the earlier asking is gone
        assert await store.open_for(str(ALEX)) == "j1"


def _minute() -> Any:
    from datetime import timedelta

    return timedelta(minutes=1)


# -- Slack: every node, drafts and redelivered events ------------------------------------------


async def start_slack(stack: contextlib.AsyncExitStack) -> SandboxSlack:
    slack = SandboxSlack(bot_token=SLACK_TOKEN, signing_secret=SLACK_SECRET, team_id=TEAM)
    await slack.start()
    stack.push_async_callback(slack.stop)
    return slack


def slack_client(stack: contextlib.AsyncExitStack, slack: SandboxSlack) -> Any:
    from slack_sdk.web.async_client import AsyncWebClient

    return AsyncWebClient(token=SLACK_TOKEN, base_url=slack.base_url)


async def serve_slack(stack: contextlib.AsyncExitStack, slack: SandboxSlack, node: Node) -> str:
    bolt = sl.build_slack_app(
        bot_token=SLACK_TOKEN,
        signing_secret=SLACK_SECRET,
        flow=node.flow,
        allow=AllowList.build(slack_users=[SL_ALEX, SL_BOB]),
        api_base_url=slack.base_url,
        seen=SeenUpdates(node.db).first_time,
    )
    return f"{await serve(stack, lambda app: sl.add_slack_routes(app, bolt))}{sl.EVENTS_PATH}"


async def serve(stack: contextlib.AsyncExitStack, add: Callable[[web.Application], None]) -> str:
    web_app = web.Application()
    add(web_app)
    runner = web.AppRunner(web_app)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return f"http://127.0.0.1:{port}"


async def test_a_slack_draft_started_at_one_node_is_continued_and_confirmed_at_the_other(
    stack: contextlib.AsyncExitStack, db_url: str
) -> None:
    slack = await start_slack(stack)
    a = await open_node(stack, db_url, "node-a")
    b = await open_node(stack, db_url, "node-b")
    url_a, url_b = await serve_slack(stack, slack, a), await serve_slack(stack, slack, b)

    await slack.slash_command(
        url_a, text="Joe's Barbershop | haircut | next week afternoons", user_id=SL_ALEX, channel_id=CHANNEL
    )
    parent = await slack.wait_for(lambda p: p.method == "postMessage" and p.thread_ts is None)
    await slack.wait_for(lambda p: p.thread_ts == parent.ts and "phone number" in p.text)
    await slack.message_event(
        url_b, user_id=SL_ALEX, channel=CHANNEL, text="+1 415 555 0100", thread_ts=parent.ts
    )
    confirm = await slack.wait_for(lambda p: p.thread_ts == parent.ts and "Shall I go ahead?" in p.text)
    await slack.click(url_a, user_id=SL_ALEX, message=confirm, action_id=confirm.buttons[0][1])
    await slack.wait_for(lambda p: p.method == "update" and "Confirmed" in p.text)
    (request,) = a.desk.submitted
    assert request.phone == "+14155550100" and not b.desk.submitted


async def test_a_slack_event_redelivered_to_another_node_is_handled_once(
    stack: contextlib.AsyncExitStack, db_url: str
) -> None:
    slack = await start_slack(stack)
    a = await open_node(stack, db_url, "node-a")
    b = await open_node(stack, db_url, "node-b")
    url_a, url_b = await serve_slack(stack, slack, a), await serve_slack(stack, slack, b)
    await slack.slash_command(
        url_a, text="Joe's Barbershop | haircut | next week afternoons", user_id=SL_ALEX, channel_id=CHANNEL
    )
    parent = await slack.wait_for(lambda p: p.method == "postMessage" and p.thread_ts is None)
    await slack.wait_for(lambda p: p.thread_ts == parent.ts and "phone number" in p.text)

    body = json.dumps(message_event(slack, parent.ts, "+1 415 555 0100", event_id="Ev0REDELIVERED"))
    first = await slack.post_raw(url_a, body, {**slack.sign(body), "Content-Type": "application/json"})
    await slack.wait_for(lambda p: p.thread_ts == parent.ts and "Shall I go ahead?" in p.text)
    again = await slack.post_raw(
        url_b, body, {**slack.sign(body), "Content-Type": "application/json", "X-Slack-Retry-Num": "1"}
    )
    assert first.status == again.status == 200
    # Bob's words after the redelivery, at the same node: once they are answered, a second
    # handling of the redelivered event would have answered first.
    await slack.message_event(url_b, user_id=SL_BOB, channel=CHANNEL, text="me too", thread_ts=parent.ts)
    await slack.wait_for(lambda p: p.method == "ephemeral" and "belongs to" in p.text)
    replies = [p for p in slack.posted if p.thread_ts == parent.ts and p.method == "postMessage"]
    assert [p.text for p in replies if "Shall I go ahead?" in p.text or "changed" in p.text][1:] == []


def message_event(slack: SandboxSlack, thread_ts: str, text: str, *, event_id: str) -> dict[str, Any]:
    ts = "1800000000.000001"
    event = {
        "type": "message", "user": SL_ALEX, "text": text, "ts": ts, "channel": CHANNEL,
        "channel_type": "channel", "event_ts": ts, "thread_ts": thread_ts,
    }  # fmt: skip
    return {
        "token": "legacy-verification-token",
        "team_id": TEAM,
        "api_app_id": "A0SANDBOX",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": 1800000000,
        "authorizations": [{"team_id": TEAM, "user_id": slack.bot_user_id, "is_bot": True}],
    }


# -- Telegram: webhook on every node, long polling on exactly one --------------------------------


def tg_app(api: SandboxTelegram, node: Node, *, webhook: bool) -> tg.TgApp:
    return tg.build_application(
        token=TG_TOKEN,
        api_base_url=api.base_url,
        flow=node.flow,
        allow=AllowList.build(telegram_users=[ALEX, BOB]),
        webhook=webhook,
        seen=SeenUpdates(node.db).first_time,
    )


async def test_a_telegram_update_redelivered_to_another_node_is_handled_once(
    stack: contextlib.AsyncExitStack, db_url: str
) -> None:
    api = SandboxTelegram(token=TG_TOKEN)
    await api.start()
    stack.push_async_callback(api.stop)
    urls = []
    for name in ("node-a", "node-b"):
        node = await open_node(stack, db_url, name)
        app = tg_app(api, node, webhook=True)
        await tg.start_webhook_mode(app)
        stack.push_async_callback(tg.stop, app)
        base = await serve(stack, lambda web_app, app=app: tg.add_webhook_route(web_app, app, "s3cret"))
        urls.append(f"{base}{tg.WEBHOOK_PATH}")

    import aiohttp

    update = api.update_json(ALEX, ALEX, "/call +14155550100 Joe's | trim | tomorrow")
    later = api.update_json(ALEX, ALEX, "/status")
    async with aiohttp.ClientSession() as http:
        for url, body in ((urls[0], update), (urls[1], update), (urls[1], later)):
            async with http.post(url, json=body, headers={tg.SECRET_HEADER: "s3cret"}) as resp:
                assert resp.status == 200
    await api.wait_for(lambda s: "Shall I go ahead?" in (s.text or ""))
    await api.wait_for(lambda s: s.method == "sendMessage" and "Shall I" not in (s.text or ""))
    assert len([s for s in api.sent if "Shall I go ahead?" in (s.text or "")]) == 1


class Watched:
    """A node's real ``Singleton``, with a ``lost`` the test can set as if its connection died."""

    def __init__(self, real: Any) -> None:
        self.lost = asyncio.Event()
        self._real = real

    def die(self) -> None:
        self.lost.set()

    async def release(self) -> None:
        await self._real.release()


class Refusals:
    """Counts the tries a node made while another held the lock."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.count = 0  # tries refused
        self.calls = 0  # tries
        self.changed = asyncio.Condition()
        self.last: Any = None

    async def __call__(self) -> Watched | None:
        real = await self._db.try_singleton(TELEGRAM_POLLING)
        held = None if real is None else Watched(real)
        async with self.changed:
            self.calls += 1
            if held is None:
                self.count += 1
            self.last = held
            self.changed.notify_all()
        return held

    async def reach(self, count: int, *, calls: int = 0) -> None:
        async with self.changed:
            await asyncio.wait_for(
                self.changed.wait_for(lambda: self.count >= count and self.calls >= calls), BOUND
            )


async def test_only_one_node_long_polls_telegram_and_the_other_takes_over(
    stack: contextlib.AsyncExitStack, db_url: str
) -> None:
    api = SandboxTelegram(token=TG_TOKEN)
    await api.start()
    stack.push_async_callback(api.stop)
    nodes, apps, pollers, tries, tasks = [], [], [], [], []
    for name in ("node-a", "node-b"):
        node = await open_node(stack, db_url, name)
        app = tg_app(api, node, webhook=False)
        await tg.start_processing(app)
        stack.push_async_callback(tg.stop, app)
        acquire = Refusals(node.db)
        poller = tg.Poller(app, acquire, retry_every=0.05, poll_timeout=1)
        nodes.append(node), apps.append(app), pollers.append(poller), tries.append(acquire)
    a, b = pollers
    tasks.append(asyncio.create_task(a.run()))
    await asyncio.wait_for(a.polling.wait(), BOUND)
    tasks.append(asyncio.create_task(b.run()))
    await tries[1].reach(3)  # node B tried three times while node A polled
    assert a.polling.is_set() and not b.polling.is_set()
    assert apps[0].updater.running and not apps[1].updater.running  # type: ignore[union-attr]

    # A draft started while node A polls ...
    m1 = api.user_message(ALEX, ALEX, "/call +14155550100 Joe's Barbershop | haircut | next week afternoons")
    confirm = await api.wait_for(
        lambda s: s.reply_to_message_id == m1 and "Shall I go ahead?" in (s.text or "")
    )
    # ... node A stops (releases): node B takes over and finishes it from the database.
    a.stop()
    await asyncio.wait_for(tasks[0], BOUND)
    await asyncio.wait_for(b.polling.wait(), BOUND)
    assert not apps[0].updater.running  # type: ignore[union-attr]
    api.press_button(ALEX, ALEX, confirm.message_id, confirm.buttons[0][1])
    await api.wait_for(lambda s: s.method == "editMessageText" and "Confirmed" in (s.text or ""))
    assert len(nodes[1].desk.submitted) == 1 and not nodes[0].desk.submitted

    # Node B's lock is lost (its connection died): it stops polling and tries again like a
    # restarted node A; whichever gets the lock polls, and only it.
    held_b = tries[1].last
    tries[0] = Refusals(nodes[0].db)
    a2 = tg.Poller(apps[0], tries[0], retry_every=0.05, poll_timeout=1)
    tasks.append(asyncio.create_task(a2.run()))
    await tries[0].reach(1)
    calls = tries[1].calls
    held_b.die()
    await tries[1].reach(0, calls=calls + 1)  # node B stopped polling and released before trying again
    await asyncio.wait_for(first_set(a2.polling, b.polling), BOUND)
    assert a2.polling.is_set() != b.polling.is_set()
    assert apps[0].updater.running != apps[1].updater.running  # type: ignore[union-attr]
    m2 = api.user_message(ALEX, ALEX, "/status")
    await api.wait_for(lambda s: s.reply_to_message_id == m2)

    for poller in (b, a2):
        poller.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), BOUND)
    free = await nodes[0].db.try_singleton(TELEGRAM_POLLING)  # both released it
    assert free is not None
    await free.release()


async def first_set(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def test_telegram_s_webhook_points_at_one_live_node_and_follows_a_takeover(
    stack: contextlib.AsyncExitStack, db_url: str
) -> None:
    api = SandboxTelegram(token=TG_TOKEN)
    await api.start()
    stack.push_async_callback(api.stop)
    registrars, tries = [], []
    for name in ("node-a", "node-b"):
        node = await open_node(stack, db_url, name)
        app = tg_app(api, node, webhook=True)
        await tg.start_webhook_mode(app)  # serves the route; registers nothing by itself
        stack.push_async_callback(tg.stop, app)
        acquire = Refusals(node.db)
        url = f"http://127.0.0.1:9/{name}{tg.WEBHOOK_PATH}"  # each node's own public URL
        registrars.append(tg.WebhookRegistrar(app, acquire, url=url, secret="s3cret-token", retry_every=0.05))
        tries.append(acquire)
    assert api.webhook == {}
    a, b = registrars
    task_a = asyncio.create_task(a.run())
    await asyncio.wait_for(a.registered.wait(), BOUND)
    assert api.webhook["url"] == f"http://127.0.0.1:9/node-a{tg.WEBHOOK_PATH}"
    assert api.webhook["secret_token"] == "s3cret-token"
    task_b = asyncio.create_task(b.run())
    await tries[1].reach(3)  # node B tried three times while node A held it: the URL stayed A's
    assert not b.registered.is_set() and api.webhook["url"].endswith(f"/node-a{tg.WEBHOOK_PATH}")
    # Node A goes away (its lock with it): node B points Telegram at itself.
    a.stop()
    await asyncio.wait_for(task_a, BOUND)
    await asyncio.wait_for(b.registered.wait(), BOUND)
    assert api.webhook["url"] == f"http://127.0.0.1:9/node-b{tg.WEBHOOK_PATH}"
    b.stop()
    await asyncio.wait_for(task_b, BOUND)
