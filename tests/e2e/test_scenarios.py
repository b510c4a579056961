"""Every scenario end to end: chat → queue → call → result in the chat thread, through the real SDKs.

Each run starts the whole sandbox world and the real ``Concierge`` application on
loopback, writes to the Telegram bot as the person, presses Confirm, and lets the
sandbox receptionist take the call(s). Audio is paced 4× faster than real time;
every timing decision in the product and the sandbox counts audio, not wall time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from demo.runner import ErrandRun, run_scenario, start_stack
from demo.world import DEMO_TELEGRAM_USER
from sandbox import scenarios
from storage.models import JobState, OutcomeKind, Speaker
from storage.numbers import DoNotCall

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:.*BasicAuth.*:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*'auth' parameter.*:DeprecationWarning"),
]


#: Audio pace of ``long_hold``: its two minutes of music are 30 s of waiting at 4x; every timing in the
#: product and the sandbox counts audio, so 16x (the crash test's pace) checks the same hold.
LONG_HOLD_PACE = 16.0


async def run(name: str, pace: float = 4.0) -> ErrandRun:
    world, app, clock = await start_stack(pace=pace, silence_timeout_seconds=6.0)
    try:
        return await run_scenario(world, app, clock, name, timeout=90)
    finally:
        await app.stop(grace=5)
        await world.stop()


def chat_texts(result: ErrandRun) -> list[str]:
    return [s.text or s.caption or "" for s in result.chat]


def assert_common(result: ErrandRun) -> None:
    assert result.ok, result.problems
    # every message went to the person's own chat
    assert {s.chat_id for s in result.chat} == {DEMO_TELEGRAM_USER}
    # the transcript file was attached when a call happened
    if result.turns:
        assert any(s.method == "sendDocument" for s in result.chat)
    # the assistant disclosed it is an AI in the first words the callee heard in full
    spoken = [
        t for t in result.turns if t.speaker is Speaker.ASSISTANT and not t.text.startswith("[pressed")
    ]
    if spoken:
        first_whole = next(t for t in spoken if not t.interrupted)
        assert "AI assistant" in first_whole.text, spoken


@pytest.mark.parametrize("name", ["happy", "clash", "interrupt", "menu", "hold"])
async def test_booking_scenarios(name: str) -> None:
    result = await run(name)
    assert_common(result)
    job = result.job
    assert job.state is JobState.BOOKED and job.outcome is not None
    assert job.outcome.kind is OutcomeKind.BOOKED and job.outcome.event_link
    events = [e for e in result.events if e.get("transactionId") == job.id]
    assert len(events) == 1
    texts = chat_texts(result)
    assert any(job.outcome.event_link in t for t in texts), texts
    assert len(result.calls) == 1  # dialled exactly once
    callee = [t.text for t in result.turns if t.speaker is Speaker.CALLEE]
    assert any("Wednesday" in t for t in callee)
    if name == "clash":
        assert any("Tuesday" in t for t in callee)
    if name == "interrupt":
        assert any(t.interrupted for t in result.turns)
        assert result.calls[0].clears >= 1
    if name == "menu":
        assert result.calls[0].digits_heard.startswith("1")


async def test_long_hold_waits_silently_through_two_minutes_of_music_then_books() -> None:
    result = await run("long_hold", pace=LONG_HOLD_PACE)
    assert_common(result)
    job = result.job
    assert job.state is JobState.BOOKED and job.outcome is not None and job.outcome.event_link
    assert len(result.calls) == 1
    callee = result.calls[0].callee
    assert callee.seconds >= scenarios.LONG_HOLD_SECONDS  # the line was kept through the music
    heard = callee.heard
    held = next(i for i, t in enumerate(heard) if "I'll hold" in t)
    # Nothing was said during the music (no "are you still there?"): the next turn the callee heard
    # is the answer to "Thanks for holding".
    assert "haircut" in heard[held + 1], heard
    assert not any("still there" in t.lower() for t in heard), heard
    # Music carried no words: the callee's turns are exactly what it said, and the booking went on.
    callee_turns = [t.text for t in result.turns if t.speaker is Speaker.CALLEE]
    assert callee_turns[:2] == [
        "Joe's Barbershop, please hold.",
        "Thanks for holding, sorry about the wait. How can I help you?",
    ], callee_turns
    assert any("Wednesday" in t for t in callee_turns)
    # The chat showed the hold while it lasted, then the call again, then the result.
    texts = chat_texts(result)
    held_at = next((i for i, t in enumerate(texts) if "On hold since" in t), None)
    assert held_at is not None, texts
    assert result.chat[held_at].method == "editMessageText"
    back = [i for i, t in enumerate(texts) if "On the phone with" in t]
    assert back and back[-1] > held_at, texts
    assert sum("On hold since" in t for t in texts) == 1, texts  # one edit for the hold, not one per check


async def test_voicemail_then_booked_on_the_second_call() -> None:
    result = await run("voicemail")
    assert_common(result)
    assert result.job.state is JobState.BOOKED and result.job.attempts == 2
    assert len(result.calls) == 2
    assert len([e for e in result.events if e.get("transactionId") == result.job.id]) == 1
    assert any("retry" in t.lower() or "try again" in t.lower() for t in chat_texts(result))
    # Twilio could not place the greeting's end (machine_end_other): no message, just hang up
    machine = result.calls[0]
    amd = [params for url, params, _ in machine.callbacks if "/twilio/amd" in url]
    assert [p["AnsweredBy"] for p in amd] == ["machine_end_other"]
    assert "AI assistant" not in machine.recorded and machine.hangup_requested.is_set()


async def test_voicemail_message_is_left_after_the_beep_and_the_errand_retried() -> None:
    result = await run("voicemail_message")
    assert_common(result)
    machine = result.calls[0]
    recorded = machine.recorded
    # one message, recorded from the beep: the disclosure first, then whom for, what, whom to call back
    assert recorded.startswith("Hi, this is"), recorded
    assert recorded.count("AI assistant") == 1, recorded
    assert result.job.request.person_name in recorded and "haircut" in recorded, recorded
    callback = "".join(ch for ch in recorded if ch.isdigit())
    assert "4155550199" in callback, recorded  # TWILIO_FROM_NUMBER, digit by digit
    assert recorded.rstrip(".").endswith("goodbye"), recorded  # played out whole
    assert machine.hangup_requested.is_set()  # and then we hung up (REST)
    amd = [params for url, params, _ in machine.callbacks if "/twilio/amd" in url]
    assert [p["AnsweredBy"] for p in amd] == ["machine_end_beep"]
    # queued again and booked on the next call
    assert result.job.state is JobState.BOOKED and result.job.attempts == 2
    assert len(result.calls) == 2
    assert any("left a voicemail" in t.lower() for t in chat_texts(result)), chat_texts(result)


async def test_no_answer_three_times_gives_up_and_tells_the_person() -> None:
    result = await run("no_answer")
    assert_common(result)
    assert result.job.state is JobState.GAVE_UP and result.job.attempts == 3
    assert len(result.calls) == 3 and not result.events
    assert result.turns == []


@pytest.mark.parametrize(
    ("name", "state", "kind"),
    [
        ("fully_booked", JobState.DECLINED, OutcomeKind.DECLINED),
        ("wrong_number", JobState.FAILED, OutcomeKind.WRONG_NUMBER),
        ("needs_user", JobState.NEEDS_USER, OutcomeKind.NEEDS_USER),
    ],
)
async def test_unbooked_endings(name: str, state: JobState, kind: OutcomeKind) -> None:
    result = await run(name)
    assert_common(result)
    assert result.job.state is state and result.job.outcome is not None
    assert result.job.outcome.kind is kind
    assert not [e for e in result.events if e.get("transactionId") == result.job.id]
    assert len(result.calls) == 1
    if name == "needs_user":
        question = result.job.outcome.question or ""
        assert "beard trim" in question
        asked = [s for s in result.chat if question and question in (s.text or "")]
        assert asked and any(label == "Yes" for label, _ in asked[-1].buttons)


def asked_in_chat(result: ErrandRun) -> list[str]:
    return [t for t in chat_texts(result) if t.startswith("Asking you:")]


async def test_live_ask_asks_the_person_in_chat_holds_the_line_and_books_with_the_answer() -> None:
    result = await run("live_ask")
    assert_common(result)
    job = result.job
    assert job.state is JobState.BOOKED and len(result.calls) == 1
    # the business's question, quoted as theirs, with the quick replies the person pressed
    asked = [s for s in result.chat if (s.text or "").startswith("Asking you:")]
    assert len(asked) == 1, chat_texts(result)
    assert "(their words): “Would Alex prefer the 30 or 60 minute cut?”" in (asked[0].text or "")
    assert [label for label, _ in asked[0].buttons] == ["30 minutes", "60 minutes"]
    assistant = [t.text for t in result.turns if t.speaker is Speaker.ASSISTANT]
    assert any("One moment, let me check with Alex." in t for t in assistant), assistant
    # the person's answer reached the model as theirs and the conversation went on
    assert any("answer is: 60 minutes" in t for t in assistant), assistant
    assert job.outcome is not None and job.outcome.booking is not None


async def test_live_ask_without_an_answer_ends_as_needs_user_with_the_question() -> None:
    # 2 s of wall time at 4x pace is 8 s of audio: past the 6 s silence give-up, which must not fire.
    world, app, clock = await start_stack(pace=4.0, silence_timeout_seconds=6.0, live_ask_timeout=2.0)
    try:
        result = await run_scenario(world, app, clock, "live_ask", timeout=90, answer_questions=False)
    finally:
        await app.stop(grace=5)
        await world.stop()
    job = result.job
    assert job.state is JobState.NEEDS_USER and job.outcome is not None
    assert job.outcome.kind is OutcomeKind.NEEDS_USER
    assert "30 or 60 minute cut" in (job.outcome.question or "")
    assert len(result.calls) == 1 and len(asked_in_chat(result)) == 1
    # today's needs-you message, with its answer buttons, for the call back
    question = job.outcome.question or ""
    final = [s for s in result.chat if question in (s.text or "") and not (s.text or "").startswith("Asking")]
    assert final and any(label == "Yes" for label, _ in final[-1].buttons)
    assistant = [t.text for t in result.turns if t.speaker is Speaker.ASSISTANT]
    assert any("I'll call you back with the answer" in t for t in assistant), assistant


OPT_OUT_WORDS = "Please don't call this number again."


async def test_opt_out_is_recorded_with_the_callees_words() -> None:
    result = await run("opt_out")
    outcome = result.job.outcome
    assert outcome is not None and outcome.kind is OutcomeKind.OPTED_OUT
    assert OPT_OUT_WORDS in outcome.summary
    first_call = [t.text for t in result.turns if t.speaker is Speaker.ASSISTANT]
    assert any("won't call this number again" in t for t in first_call)
    assert not [e for e in result.events if e.get("transactionId") == result.job.id]


async def test_opt_out_end_to_end() -> None:
    world, app, clock = await start_stack(pace=4.0, silence_timeout_seconds=6.0)
    try:
        result = await run_scenario(world, app, clock, "opt_out", timeout=90)
        assert app.db is not None
        listed = await DoNotCall(app.db).get(result.job.request.phone)
    finally:
        await app.stop(grace=5)
        await world.stop()
    assert_common(result)
    job = result.job
    assert job.state is JobState.DECLINED and len(result.calls) == 1  # never called again
    assert listed is not None and OPT_OUT_WORDS in listed.reason
    texts = chat_texts(result)
    assert any(OPT_OUT_WORDS in t and "asked not to be called again" in t for t in texts), texts


async def test_callback_the_business_calls_back_and_the_call_back_books() -> None:
    result = await run("callback")
    assert_common(result)
    job = result.job
    assert job.state is JobState.BOOKED and job.outcome is not None and job.outcome.event_link
    dialled, received = result.calls
    assert dialled.direction == "outbound-api" and dialled.status == "no-answer"
    assert received.direction == "inbound" and received.to == dialled.from_ and received.from_ == dialled.to
    assert job.outcome.call_sid == received.sid
    # the Voice URL was POSTed signed (accepted), the TwiML streamed the errand with its token
    (url, params, status), *_ = received.callbacks
    assert url.endswith("/twilio/incoming") and params["Direction"] == "inbound" and status == 200
    assert received.stream_params["job"] == job.id
    first = next(t for t in result.turns if t.speaker is Speaker.ASSISTANT)
    opening = "Hi, this is Robin, the AI assistant for Alex Doe, thanks for calling back about the haircut."
    assert first.text.startswith(opening), first.text
    texts = chat_texts(result)
    assert any("They called back" in t for t in texts), texts
    assert any(job.outcome.event_link in t for t in texts), texts
    events = [e for e in result.events if e.get("transactionId") == job.id]
    assert len(events) == 1
    # every state change recorded: queued → dialing → queued (no answer) → in_call (called back) → booked
    app_history = [(h.from_state, h.to_state) for h in result.history]
    assert app_history == [
        (None, JobState.QUEUED),
        (JobState.QUEUED, JobState.DIALING),
        (JobState.DIALING, JobState.QUEUED),
        (JobState.QUEUED, JobState.IN_CALL),
        (JobState.IN_CALL, JobState.BOOKED),
    ], app_history


@pytest.fixture(autouse=True)
def _names_cover_every_scenario() -> AsyncIterator[None] | None:
    assert set(scenarios.NAMES) == {
        "happy", "clash", "interrupt", "menu", "hold", "long_hold", "voicemail", "voicemail_message",
        "callback", "no_answer", "fully_booked", "wrong_number", "needs_user", "live_ask", "opt_out",
    }  # fmt: skip
    return None
