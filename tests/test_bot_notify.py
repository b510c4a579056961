"""ChatNotifier: one edited progress message, the result exactly once, retries, origin threads.

Real python-telegram-bot / slack_sdk clients against the sandboxes, real JobStore on SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import telegram
from aiohttp import web
from bot_fakes import NOW, FakeDesk
from slack_sdk.web.async_client import AsyncWebClient

from bot import slack as sl
from bot.allow import AllowList
from bot.flow import ChatFlow
from bot.intake import Intake
from bot.notify import NOTIFY_RETRY, ChatNotifier
from sandbox.slack import SandboxSlack
from sandbox.telegram import SandboxTelegram
from storage.db import open_database
from storage.drafts import DraftStore
from storage.jobs import JobStore
from storage.models import (
    Booking,
    BookingWindow,
    CallOutcome,
    CallRequest,
    ChatOrigin,
    Job,
    JobState,
    OutcomeKind,
    Platform,
    Speaker,
    Turn,
    utcnow,
)
from storage.ports import JobEvent
from storage.retry import Backoff

TOKEN = "123456:sandbox-token"
TZ = "America/Los_Angeles"
TRANSCRIPT = [
    Turn(Speaker.CALLEE, "Joe's Barbershop, how can I help?", at=1.0),
    Turn(Speaker.ASSISTANT, "Hi, I'm an AI assistant calling for Alex to book a haircut.", at=2.5),
    Turn(Speaker.CALLEE, "Tuesday at two works.", at=6.0),
]


def request(origin: ChatOrigin) -> CallRequest:
    return CallRequest(
        business_name="Joe's Barbershop",
        phone="+14155550100",
        business_tz=TZ,
        service="haircut",
        person_name="Alex",
        person_tz=TZ,
        window=BookingWindow(datetime(2025, 3, 17).date(), datetime(2025, 3, 23).date()),
        origin=origin,
    )


@pytest.fixture
async def store() -> AsyncIterator[JobStore]:
    db = await open_database(":memory:")
    yield JobStore(db, clock=lambda: NOW)
    await db.close()


@pytest.fixture
async def tg_api() -> AsyncIterator[tuple[SandboxTelegram, telegram.Bot]]:
    api = SandboxTelegram(token=TOKEN)
    await api.start()
    bot = telegram.Bot(TOKEN, base_url=f"{api.base_url}/bot", base_file_url=f"{api.base_url}/file/bot")
    async with bot:
        yield api, bot
    await api.stop()


async def run_to(store: JobStore, job: Job, state: JobState, outcome: CallOutcome) -> Job:
    (claimed,) = await store.claim_due("w1", limit=1, lease_seconds=60)
    assert claimed.id == job.id
    await store.transition(job.id, JobState.IN_CALL, owner="w1")
    return await store.transition(job.id, state, owner="w1", outcome=outcome)


async def test_progress_edited_in_the_origin_thread_and_result_delivered_once_despite_failures(
    store: JobStore, tg_api: tuple[SandboxTelegram, telegram.Bot]
) -> None:
    api, bot = tg_api
    asked = api.user_message(-1001, 7, "/call …", thread_id=5)
    origin = ChatOrigin(Platform.TELEGRAM, chat_id="-1001", user_id="7", thread_id="5", message_id=str(asked))
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    notifier = ChatNotifier(store, telegram_bot=bot, person_tz=TZ, retry=NOTIFY_RETRY, sleep=no_sleep)
    job = await store.enqueue(request(origin), due_at=NOW, max_attempts=3)

    await notifier.notify(job, JobEvent.QUEUED)
    queued = api.sent[-1]
    assert (
        queued.method == "sendMessage"
        and queued.message_thread_id == 5
        and queued.reply_to_message_id == asked
    )
    assert "Queued — I'll call Wed 12 Mar 11:00 your time" in (queued.text or "")
    assert (await store.get(job.id)).meta.progress_message == str(queued.message_id)

    await notifier.notify(job, JobEvent.CALLING)
    assert api.sent[-1].method == "editMessageText" and api.sent[-1].message_id == queued.message_id
    assert "Calling Joe's Barbershop now" in (api.sent[-1].text or "")

    start = datetime(2025, 3, 18, 21, 0, tzinfo=UTC)
    outcome = CallOutcome(
        OutcomeKind.BOOKED,
        summary="Booked with Sam.",
        booking=Booking(start, start + timedelta(minutes=30), "haircut"),
        event_link="https://outlook.example/event/1",
    )
    done = await run_to(store, job, JobState.BOOKED, outcome)
    api.fail_next("sendMessage", 2, error_code=500)
    await notifier.notify(done, JobEvent.FINISHED, TRANSCRIPT)
    await notifier.notify(done, JobEvent.FINISHED, TRANSCRIPT)  # a duplicate report changes nothing

    results = [s for s in api.sent if s.method == "sendMessage" and "Booked:" in (s.text or "")]
    assert len(results) == 1
    (result,) = results
    assert result.message_thread_id == 5 and result.chat_id == -1001
    assert "Tue 18 Mar 14:00" in (result.text or "") and "https://outlook.example/event/1" in (
        result.text or ""
    )
    assert [c for c, _ in api.calls].count("sendMessage") == 1 + 3  # queued + two failures + success
    assert waits == [0.5, 1]
    docs = [s for s in api.sent if s.method == "sendDocument"]
    assert len(docs) == 1 and docs[0].message_thread_id == 5 and docs[0].document is not None
    name, content = docs[0].document
    assert name == f"transcript-{job.id}.txt" and b"Tuesday at two works." in content
    final_edit = [s for s in api.sent if s.method == "editMessageText" and s.message_id == queued.message_id]
    assert (final_edit[-1].text or "").endswith("Booked.")
    meta = (await store.get(job.id)).meta
    assert meta.result_delivered == "booked:1" and meta.transcript_delivered == "booked:1"


# python-telegram-bot's own RetryAfter constructor warns about its future timedelta type.
@pytest.mark.filterwarnings("ignore:.*will be of type:telegram.warnings.PTBDeprecationWarning")
async def test_result_kept_undelivered_when_every_retry_fails_then_delivered_later(
    store: JobStore, tg_api: tuple[SandboxTelegram, telegram.Bot]
) -> None:
    api, bot = tg_api

    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    notifier = ChatNotifier(
        store, telegram_bot=bot, person_tz=TZ, retry=Backoff(max_attempts=3, base_delay=0.01), sleep=no_sleep
    )
    origin = ChatOrigin(Platform.TELEGRAM, chat_id="42", user_id="7")
    job = await store.enqueue(request(origin), due_at=NOW, max_attempts=3)
    done = await run_to(
        store, job, JobState.DECLINED, CallOutcome(OutcomeKind.DECLINED, "Fully booked next week.")
    )
    api.fail_next("sendMessage", 10, error_code=429, retry_after=1)
    await notifier.notify(done, JobEvent.FINISHED)  # must not raise
    assert (await store.get(job.id)).meta.result_delivered is None
    # flood control's retry_after replaces the back-off; three tries each of the progress and the result
    assert waits == [1.0] * 4
    api.fail_next("sendMessage", 0)
    await notifier.notify(done, JobEvent.FINISHED)
    results = [
        s for s in api.sent if "Not booked at Joe's Barbershop: Fully booked next week." in (s.text or "")
    ]
    assert len(results) == 1


async def test_slack_needs_you_buttons_in_the_thread_answered_through_the_desk(store: JobStore) -> None:
    slack = SandboxSlack(bot_token="xoxb-t", signing_secret="sec", team_id="T1")
    await slack.start()
    desk = FakeDesk()
    intake = Intake(extractor=None, person_name="Alex", person_tz=TZ, region="US", clock=lambda: NOW)
    drafts_db = await open_database(":memory:")
    bolt = sl.build_slack_app(
        bot_token="xoxb-t",
        signing_secret="sec",
        flow=ChatFlow(intake=intake, desk=desk, drafts=DraftStore(drafts_db), clock=lambda: NOW),
        allow=AllowList.build(slack_users=["U1"]),
        api_base_url=slack.base_url,
    )
    web_app = web.Application()
    sl.add_slack_routes(web_app, bolt)
    runner = web.AppRunner(web_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/slack/events"  # type: ignore[union-attr]
    client = AsyncWebClient(token="xoxb-t", base_url=slack.base_url)

    async def no_sleep(seconds: float) -> None:
        return None

    try:
        notifier = ChatNotifier(store, slack_client=client, person_tz=TZ, sleep=no_sleep)
        origin = ChatOrigin(
            Platform.SLACK, chat_id="C1", user_id="U1", thread_id="1700000000.000100", team_id="T1"
        )
        job = await store.enqueue(request(origin), due_at=NOW, max_attempts=3)
        await notifier.notify(job, JobEvent.QUEUED)
        await notifier.notify(job, JobEvent.IN_CALL)
        progress = [p for p in slack.posted if p.method in ("postMessage", "update")]
        assert [p.method for p in progress] == ["postMessage", "update"]
        assert progress[0].thread_ts == origin.thread_id and progress[1].ts == progress[0].ts
        assert "On the phone with Joe's Barbershop" in progress[1].text

        outcome = CallOutcome(OutcomeKind.NEEDS_USER, question="Is Wednesday at 4pm OK instead?")
        done = await run_to(store, job, JobState.NEEDS_USER, outcome)
        slack.fail_next("chat.postMessage", 2, status=429)
        await notifier.notify(done, JobEvent.FINISHED, TRANSCRIPT)
        question = await slack.wait_for(lambda p: "Is Wednesday at 4pm OK instead?" in p.text)
        assert question.thread_ts == origin.thread_id
        assert [b[0] for b in question.buttons] == ["Yes", "No", "Cancel errand"]
        assert len([p for p in slack.posted if "Wednesday at 4pm" in p.text]) == 1
        upload = next(p for p in slack.posted if p.method == "file")
        assert upload.thread_ts == origin.thread_id and upload.file is not None
        assert b"Tuesday at two works." in upload.file["content"]

        desk.jobs[done.id] = done
        answer = await slack.click(url, user_id="U1", message=question, action_id=question.buttons[0][1])
        assert answer.status == 200
        await slack.wait_for(
            lambda p: p.method == "update" and p.ts == question.ts and "You answered" in p.text
        )
        assert desk.answers == [(done.id, "U1", "yes")]
    finally:
        await runner.cleanup()
        await slack.stop()
        await drafts_db.close()


async def test_two_nodes_notifying_a_new_errand_at_once_post_one_progress_message(
    db_url: str, tg_api: tuple[SandboxTelegram, telegram.Bot]
) -> None:
    """The node that took the submission and the node that claimed the call both tell the
    person, before any progress message exists: one message is posted, the other node edits it."""
    api, bot = tg_api
    asked = api.user_message(-1001, 7, "/call …", thread_id=5)
    origin = ChatOrigin(Platform.TELEGRAM, chat_id="-1001", user_id="7", thread_id="5", message_id=str(asked))
    async with await open_database(db_url) as db_a, await open_database(db_url) as db_b:
        store_a, store_b = JobStore(db_a, clock=lambda: NOW), JobStore(db_b, clock=lambda: NOW)
        node_a = ChatNotifier(store_a, telegram_bot=bot, person_tz=TZ)
        node_b = ChatNotifier(store_b, telegram_bot=bot, person_tz=TZ)
        for n in range(5):  # five errands, each raced by the two nodes
            job = await store_a.enqueue(request(origin), due_at=NOW, max_attempts=3)
            before = len(api.sent)
            await asyncio.gather(node_a.notify(job, JobEvent.QUEUED), node_b.notify(job, JobEvent.CALLING))
            sent = api.sent[before:]
            posts = [s for s in sent if s.method == "sendMessage"]
            assert len(posts) == 1, f"errand {n}: {[(s.method, s.text) for s in sent]}"
            assert [s.method for s in sent] == ["sendMessage", "editMessageText"]
            assert sent[1].message_id == posts[0].message_id
            meta = (await store_b.get(job.id)).meta
            assert (meta.progress_message, meta.progress_posting) == (str(posts[0].message_id), None)


async def test_a_first_post_claimed_by_a_node_that_died_is_taken_over(
    store: JobStore, tg_api: tuple[SandboxTelegram, telegram.Bot]
) -> None:
    api, bot = tg_api
    origin = ChatOrigin(Platform.TELEGRAM, chat_id="-1001", user_id="7")
    job = await store.enqueue(request(origin), due_at=NOW, max_attempts=3)
    await store.update_meta(job.id, progress_posting=utcnow() - timedelta(seconds=1))  # its time ran out
    await ChatNotifier(store, telegram_bot=bot, person_tz=TZ).notify(job, JobEvent.QUEUED)
    [post] = [s for s in api.sent if s.method == "sendMessage"]
    meta = (await store.get(job.id)).meta
    assert (meta.progress_message, meta.progress_posting) == (str(post.message_id), None)
