"""Composition details of ``concierge.app`` that are not covered end to end."""

from __future__ import annotations

from datetime import UTC, date, datetime

from factories import call_request

from concierge.app import with_answers
from storage.models import BookingWindow, ChatOrigin, Job, JobState, Platform


def _job(meta: dict[str, object], notes: str = "ask for Sam") -> Job:
    request = call_request(
        window=BookingWindow(date(2026, 11, 30), date(2026, 12, 4)),
        origin=ChatOrigin(Platform.TELEGRAM, chat_id="1", user_id="1"),
        notes=notes,
    )
    now = datetime(2026, 11, 24, tzinfo=UTC)
    return Job("abc", request, JobState.QUEUED, 1, 3, now, now, now, meta=meta)


def test_the_next_call_knows_the_persons_answers() -> None:
    job = _job({"user_answers": [{"question": "Would he also like a beard trim?", "answer": "no"}]})
    request = with_answers(job)
    assert request.notes.startswith("ask for Sam ")
    assert 'Asked "Would he also like a beard trim?", Alex Doe answered: no.' in request.notes
    assert request.phone == job.request.phone and request.window == job.request.window


def test_without_answers_the_request_is_unchanged() -> None:
    job = _job({})
    assert with_answers(job) is job.request
