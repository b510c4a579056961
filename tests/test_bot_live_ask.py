"""The person's answer to a question a live call is waiting on: ChatFlow with the app's PendingQuestions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
from bot_fakes import NOW, FakeDesk
from factories import call_request

from bot import render
from bot.flow import ChatFlow, live_ask_buttons
from bot.intake import Intake
from concierge.live_ask import PendingQuestions
from storage.db import Database, open_database
from storage.drafts import DraftStore
from storage.live_questions import LiveQuestionStore
from storage.models import ChatOrigin, Job, JobState, Platform

QUESTION = "Would Alex prefer the 30 or 60 minute cut?"
OWNER, OTHER = "7", "8"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(tmp_path / "concierge.sqlite")
    try:
        yield database
    finally:
        await database.close()


class Chat:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str, tuple[str, ...]]] = []
        self.shown = asyncio.Event()

    async def post(self, job: Job, question: str, options: Sequence[str]) -> bool:
        self.posted.append((job.id, question, tuple(options)))
        self.shown.set()
        return True


def in_call_job() -> Job:
    origin = ChatOrigin(Platform.TELEGRAM, OWNER, OWNER)
    return Job(
        id="j1",
        request=call_request(origin=origin),
        state=JobState.IN_CALL,
        attempts=1,
        max_attempts=3,
        next_attempt_at=NOW,
        created_at=NOW,
        updated_at=NOW,
    )


def make_flow(desk: FakeDesk, db: Database, live: PendingQuestions) -> ChatFlow:
    intake = Intake(
        extractor=None, person_name="Alex", person_tz="America/Los_Angeles", region="US", clock=lambda: NOW
    )
    return ChatFlow(
        intake=intake, desk=desk, drafts=DraftStore(db, clock=lambda: NOW), clock=lambda: NOW, live=live
    )


async def test_only_the_owners_press_reaches_the_waiting_call(db: Database) -> None:
    chat, desk = Chat(), FakeDesk()
    questions = PendingQuestions(chat.post, LiveQuestionStore(db), timeout=30)
    flow = make_flow(desk, db, questions)
    job = in_call_job()
    waiting = asyncio.create_task(questions.ask(job, QUESTION, ["30 minutes", "60 minutes"]))
    await chat.shown.wait()
    assert chat.posted == [("j1", QUESTION, ("30 minutes", "60 minutes"))]
    data = dict((b.label, b.data) for b in live_ask_buttons("j1", ("30 minutes", "60 minutes")))

    refused = await flow.press(OTHER, data["60 minutes"])
    assert refused.notice == render.NOT_YOUR_QUESTION and not waiting.done()

    pressed = await flow.press(OWNER, data["60 minutes"])
    assert pressed.edit is not None and "60 minutes" in pressed.edit.text
    assert await waiting == "60 minutes"
    assert desk.answers == []  # the call took it: nothing for a next call


async def test_free_text_from_the_owner_is_the_answer(db: Database) -> None:
    chat, desk = Chat(), FakeDesk()
    questions = PendingQuestions(chat.post, LiveQuestionStore(db), timeout=30)
    flow = make_flow(desk, db, questions)
    waiting = asyncio.create_task(questions.ask(in_call_job(), QUESTION))
    await chat.shown.wait()
    origin = ChatOrigin(Platform.TELEGRAM, OWNER, OWNER)
    out = await flow.follow_up(f"tg:{OWNER}", origin, "The long one please")
    assert out is not None and "The long one please" in out.text
    assert await waiting == "The long one please"


async def test_no_answer_in_time_and_a_late_press_goes_to_the_next_call(db: Database) -> None:
    chat, desk = Chat(), FakeDesk()
    questions = PendingQuestions(chat.post, LiveQuestionStore(db), timeout=0)
    flow = make_flow(desk, db, questions)
    job = in_call_job()
    desk.jobs[job.id] = job
    assert await questions.ask(job, QUESTION, ["30 minutes"]) is None
    assert await questions.open_for(OWNER) is None
    data = live_ask_buttons("j1", ("30 minutes",))[0].data
    pressed = await flow.press(OWNER, data)
    assert desk.answers == [("j1", OWNER, "30 minutes")]  # today's ErrandDesk.answer path
    assert pressed.edit is not None and "call them back" in pressed.edit.text
