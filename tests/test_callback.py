"""A business calling our number back: the errand it matches, and a caller with none."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import pytest
from clocks import FakeClock

from agent.conversation import called_back_disclosure
from storage.db import open_database
from storage.jobs import JobStore
from storage.models import TRANSITIONS, BookingWindow, CallRequest, ChatOrigin, JobState, Platform
from telephony.twilio_rest import INCOMING_PATH

T0 = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)
PHONE = "+14155550100"


def request(phone: str = PHONE, service: str = "haircut") -> CallRequest:
    return CallRequest(
        business_name="Joe's Barbershop",
        phone=phone,
        business_tz="America/Los_Angeles",
        service=service,
        person_name="Alex",
        person_tz="America/Los_Angeles",
        window=BookingWindow(start_date=date(2030, 3, 5), end_date=date(2030, 3, 8)),
        origin=ChatOrigin(platform=Platform.TELEGRAM, chat_id="c1", user_id="u1"),
    )


@pytest.fixture
async def store() -> AsyncIterator[JobStore]:
    db = await open_database(":memory:")
    clock = FakeClock(T0)
    try:
        yield JobStore(db, clock=clock)
    finally:
        await db.close()


async def test_the_most_recent_open_errand_to_the_number_takes_the_call(store: JobStore) -> None:
    older = await store.enqueue(request(service="haircut"), due_at=T0, max_attempts=3)
    newer = await store.enqueue(request(service="beard trim"), due_at=T0 + timedelta(hours=1), max_attempts=3)
    other = await store.enqueue(request(phone="+14155550199"), due_at=T0, max_attempts=3)
    job = await store.receive_call(PHONE, "CA" + "1" * 32, owner="d1", lease_seconds=900, token_sha256="h")
    assert job is not None and job.id == newer.id
    assert job.state is JobState.IN_CALL and job.lease_owner == "d1"
    assert job.current_call_sid == "CA" + "1" * 32 and job.meta.inbound_call_sid == job.current_call_sid
    assert job.meta.stream_token_sha256 == "h"
    assert job.calls_made == 0  # a call we did not place does not use up the retry budget
    history = await store.history(job.id)
    assert [(h.from_state, h.to_state, h.owner) for h in history][-1] == (
        JobState.QUEUED,
        JobState.IN_CALL,
        "d1",
    )
    # never dialled while the call back is live: a claim does not see it
    claimed = await store.claim_due("d2", limit=10, lease_seconds=60)
    assert {j.id for j in claimed} == {older.id, other.id}
    # the older errand is now dialing (the number is on the line): a second call from it finds nothing
    assert (
        await store.receive_call(PHONE, "CA" + "2" * 32, owner="d1", lease_seconds=900, token_sha256="h")
        is None
    )


async def test_an_errand_waiting_for_the_person_is_taken_up(store: JobStore) -> None:
    job = await store.enqueue(request(), due_at=T0, max_attempts=3)
    for to in (JobState.DIALING, JobState.IN_CALL, JobState.NEEDS_USER):
        job = await store.transition(job.id, to)
    taken = await store.receive_call(PHONE, "CA" + "3" * 32, owner="d1", lease_seconds=900, token_sha256="h")
    assert taken is not None and taken.id == job.id and taken.state is JobState.IN_CALL
    assert (
        JobState.IN_CALL in TRANSITIONS[JobState.NEEDS_USER]
        and JobState.IN_CALL in TRANSITIONS[JobState.QUEUED]
    )


async def test_finished_errands_are_never_taken_up(store: JobStore) -> None:
    job = await store.enqueue(request(), due_at=T0, max_attempts=3)
    await store.cancel(job.id)
    assert (
        await store.receive_call(PHONE, "CA" + "4" * 32, owner="d1", lease_seconds=900, token_sha256="h")
        is None
    )


def test_the_call_back_disclosure_is_fixed() -> None:
    words = called_back_disclosure("Robin", "Alex", "haircut", transcript_notice=False)
    assert words == "Hi, this is Robin, the AI assistant for Alex, thanks for calling back about the haircut."


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*BasicAuth.*:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:.*'auth' parameter.*:DeprecationWarning")
async def test_a_caller_with_no_open_errand_hears_a_short_message_and_the_call_ends() -> None:
    from demo.runner import start_stack

    world, app, _clock = await start_stack(pace=4.0)
    try:
        voice_url = app.settings.public_base_url.rstrip("/") + INCOMING_PATH
        call = world.twilio.call_in("+14155550142", app.settings.twilio_from_number, voice_url)
        async with asyncio.timeout(30):
            await call.done.wait()
        (url, params, status), *_ = call.callbacks
        assert status == 200 and params["Direction"] == "inbound" and params["CallStatus"] == "ringing"
        assert len(call.twiml_said) == 1 and "AI assistant" in call.twiml_said[0]
        assert call.stream_params == {} and call.ended_by == "twiml" and call.status == "completed"
        assert await app.store.list(user_id="", limit=10) == []
        assert app.webhooks.active_calls() == 0
    finally:
        await app.stop(grace=5)
        await world.stop()
