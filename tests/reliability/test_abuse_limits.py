"""Abuse limits, through the whole app and its chats: every refusal is a clear chat reply.

One ``Concierge`` for the module with tight limits: 3 unfinished errands per
person, 5 errands per person per hour, 2 calls at once, 15 s per call and a
block list with an exact number, a formatted number and a prefix. The clock
starts on a Sunday night (the sandbox businesses are closed), so queued
errands wait; the call tests move it to a Monday morning.

Quiet hours are also covered as a property over random schedules and clock
jumps with the real dispatcher in ``tests/test_dispatcher_property.py``; the
test here adds the same rule end to end (chat → clock jumps → sandbox phone).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
from reliability_support import TWILIO_SDK_WARNINGS, Stack, open_stack, wait_until

from sandbox.callee import CalleeScript, HangUp, Pause, Say
from sandbox.slack import Posted
from sandbox.twilio import Behavior, SandboxCall
from sandbox.twilio_call import FINAL_STATUSES
from storage.models import JobState

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    *(pytest.mark.filterwarnings(w) for w in TWILIO_SDK_WARNINGS),
]

LA = ZoneInfo("America/Los_Angeles")
USERS = {"queue": 101, "rate": 102, "blocked": 103, "calls": 104, "quiet": 105, "cap": 106}
BLOCKED = ["+14155550177", "(415) 555-0178", "+1415555099*", "+1900*"]
MAX_QUEUED, PER_HOUR, MAX_CALLS, MAX_SECONDS = 3, 5, 2, 15


def sunday_night() -> datetime:
    today = datetime.now(LA).date()
    sunday = today + timedelta(days=(6 - today.weekday()) % 7 or 7)
    return datetime.combine(sunday, time(3, 0), LA)


def monday_at(hour: int, minute: int = 0, second: int = 0) -> datetime:
    monday: date = sunday_night().date() + timedelta(days=1)
    return datetime.combine(monday, time(hour, minute, second), LA)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack() -> AsyncIterator[Stack]:
    s = await open_stack(
        pace=8.0,
        telegram_allowed_users=[str(u) for u in USERS.values()],
        slack_allowed_users=["U0DEMO", "U0RACE"],
        max_queued_per_user=MAX_QUEUED,
        errands_per_user_per_hour=PER_HOUR,
        max_concurrent_calls=MAX_CALLS,
        max_call_seconds=MAX_SECONDS,
        blocked_numbers=BLOCKED,
        silence_timeout_seconds=30.0,
    )
    s.clock.jump_to(sunday_night())
    s.app.dispatcher.wake()
    try:
        yield s
    finally:
        await s.close()


async def closed(stack: Stack) -> None:
    """Sunday night again, with nothing left queued from an earlier test."""
    for job in await stack.app.store.list(states=(JobState.QUEUED,), limit=10_000):
        await stack.app.store.cancel(job.id)
    stack.clock.jump_to(sunday_night())
    stack.app.dispatcher.wake()
    await stack.app.dispatcher.wait_idle()


async def ask(stack: Stack, user: int, text: str) -> str:
    """Send ``text`` as ``user``, press Confirm if offered; the bot's last word on it."""
    tg = stack.world.telegram
    since = len(tg.sent)
    tg.user_message(user, user, text)
    shown = await tg.wait_for(lambda s: s.chat_id == user and s.method == "sendMessage", 15, since=since)
    confirm = next((data for label, data in shown.buttons if label == "Confirm"), None)
    if confirm is None:
        return shown.text or ""
    since = len(tg.sent)
    tg.press_button(user, user, shown.message_id, confirm)
    edited = await tg.wait_for(
        lambda s: s.method == "editMessageText" and s.message_id == shown.message_id, 15, since=since
    )
    return edited.text or ""


def call_text(n: int, what: str = "haircut") -> str:
    return f"/call +1 415 555 {n:04d} Shop {n} | {what} | next week afternoons"


async def test_unfinished_errands_per_person_are_capped(stack: Stack) -> None:
    await closed(stack)
    user = USERS["queue"]
    for n in range(MAX_QUEUED):
        assert "Confirmed" in await ask(stack, user, call_text(1000 + n))
    refusal = await ask(stack, user, call_text(1100))
    assert f"the limit ({MAX_QUEUED})" in refusal and "cancel one" in refusal
    assert len(await stack.app.store.list(user_id=str(user), limit=100)) == MAX_QUEUED
    # another person is not affected
    assert "Confirmed" in await ask(stack, USERS["blocked"], call_text(1200))
    # cancelling one frees a place
    job = (await stack.app.store.list(user_id=str(user), limit=1))[0]
    assert "is cancelled" in await ask(stack, user, f"/cancel {job.id}")
    assert (await stack.app.store.get(job.id)).state is JobState.CANCELLED
    assert "Confirmed" in await ask(stack, user, call_text(1101))


async def test_errands_per_person_per_hour_are_capped_and_the_window_slides(stack: Stack) -> None:
    await closed(stack)
    user = USERS["rate"]
    for n in range(PER_HOUR):
        assert "Confirmed" in await ask(stack, user, call_text(2000 + n))
        job = (await stack.app.store.list(user_id=str(user), limit=1))[0]
        await stack.app.store.cancel(job.id)  # stay under the queue cap: only the hourly rate counts
    refusal = await ask(stack, user, call_text(2100))
    assert f"{PER_HOUR} errands in the last hour" in refusal and "try again" in refusal
    assert len(await stack.app.store.list(user_id=str(user), limit=100)) == PER_HOUR
    stack.clock.jump(timedelta(minutes=61))
    assert "Confirmed" in await ask(stack, user, call_text(2101))


async def test_concurrent_confirms_cannot_exceed_the_queue_cap(stack: Stack) -> None:
    """Slack runs listeners concurrently: many Confirm clicks at once by one person."""
    await closed(stack)
    slack, url, n = stack.world.slack, stack.url("/slack/events"), MAX_QUEUED + 4
    for i in range(n):
        await slack.slash_command(url, text=call_text(3000 + i)[6:], user_id="U0RACE", channel_id="CRACE")

    def prompts() -> list[Posted]:
        return [p for p in slack.posted if p.channel == "CRACE" and p.method == "postMessage" and p.buttons]

    def answered() -> list[Posted]:
        return [p for p in slack.posted if p.channel == "CRACE" and p.method == "update"]

    await wait_until(lambda: _now(len(prompts()) >= n), 15, "every confirmation prompt")
    clicks = [
        slack.click(
            url, user_id="U0RACE", message=p, action_id=next(b[1] for b in p.buttons if b[0] == "Confirm")
        )
        for p in prompts()
    ]
    assert all(a.status == 200 for a in await asyncio.gather(*clicks))
    await wait_until(lambda: _now(len(answered()) >= n), 15, "every click's answer")
    jobs = await stack.app.store.list(user_id="U0RACE", limit=100)
    assert len(jobs) == MAX_QUEUED, [j.state for j in jobs]
    assert sum("the limit" in p.text for p in answered()) == n - MAX_QUEUED


async def _now(value: bool) -> bool:
    return value


async def next_call_to(stack: Stack, number: str) -> SandboxCall:
    """The next call the sandbox receives for ``number`` (calls to others are skipped)."""
    while (call := await stack.world.twilio.wait_for_call(timeout=15)).to != number:
        pass
    return call


@pytest.mark.parametrize(
    ("number", "blocked"),
    [
        ("+1 415 555 0177", True),  # exact E.164 entry
        ("415-555-0178", True),  # entry written nationally, number written another way
        ("+1 (415) 555-0993", True),  # prefix entry
        ("+1 900 555 0100", True),  # premium-rate prefix (and premium rate)
        ("+1 415 555 0179", False),
        ("+1 415 555 0989", False),  # shares all but the prefix's last digit
    ],
)
async def test_block_list_exact_numbers_and_prefixes(stack: Stack, number: str, blocked: bool) -> None:
    await closed(stack)
    before = await stack.app.store.list(limit=10_000)
    answer = await ask(stack, USERS["blocked"], f"/call {number} Some Shop | haircut | next week")
    if blocked:
        assert "won't call" in answer or "premium" in answer.lower(), answer
        assert len(await stack.app.store.list(limit=10_000)) == len(before)
    else:
        assert "Confirmed" in answer, answer


async def test_no_call_while_the_business_is_closed_end_to_end(stack: Stack) -> None:
    await closed(stack)
    user = USERS["quiet"]
    calls_before = len(stack.world.twilio.calls)
    stack.world.twilio.program("+14155554001", Behavior.ANSWER, CalleeScript([Say("Hello."), HangUp()]))
    assert "Confirmed" in await ask(stack, user, "/call +1 415 555 4001 Night Shop | haircut | next week")
    job = (await stack.app.store.list(user_id=str(user), limit=1))[0]
    assert job.next_attempt_at == monday_at(9).astimezone(job.next_attempt_at.tzinfo)
    for when in (sunday_night() + timedelta(hours=17), monday_at(8), monday_at(8, 59, 59)):
        stack.clock.jump_to(when)
        stack.app.dispatcher.wake()
        await stack.app.dispatcher.wait_idle()
        assert len(stack.world.twilio.calls) == calls_before, f"called at {when}"
    stack.clock.jump_to(monday_at(9, 0, 1))
    stack.app.dispatcher.wake()
    call = await next_call_to(stack, "+14155554001")
    await asyncio.wait_for(call.done.wait(), 15)


async def test_never_more_than_max_concurrent_calls(stack: Stack) -> None:
    await closed(stack)
    user, n_calls = USERS["calls"], 2 * MAX_CALLS + 2
    twilio = stack.world.twilio
    for i in range(n_calls):
        script = CalleeScript([Say("Hello, Shop."), Pause(4.0), HangUp()])
        twilio.program(f"+1415555{5000 + i:04d}", Behavior.ANSWER, script)
    for i in range(n_calls):
        who = user if i < MAX_QUEUED else USERS["cap"]  # the queue cap is per person
        assert "Confirmed" in await ask(stack, who, call_text(5000 + i))
    live_at_creation: list[int] = []

    async def watch() -> None:
        """Snapshot the live calls right after each creation (when their number peaks)."""
        seen = 0
        while seen < n_calls:
            call = await twilio.wait_for_call(timeout=30)
            live_at_creation.append(sum(1 for c in twilio.calls.values() if c.status not in FINAL_STATUSES))
            seen += call.to.startswith("+14155555")

    watcher = asyncio.create_task(watch())
    stack.clock.jump_to(monday_at(10))
    stack.app.dispatcher.wake()
    await asyncio.wait_for(watcher, 60)
    ours = [c for c in twilio.calls.values() if c.to.startswith("+14155555")]
    assert len(ours) == n_calls
    await asyncio.wait_for(asyncio.gather(*(c.done.wait() for c in ours)), 30)
    assert max(live_at_creation) <= MAX_CALLS, live_at_creation
    assert max(live_at_creation) == MAX_CALLS  # the cap was actually reached


@pytest.mark.parametrize("session_cap", [None, 8.0])
async def test_a_call_never_outlasts_max_call_seconds(stack: Stack, session_cap: float | None) -> None:
    """Twilio's ``TimeLimit`` is set on every call; the session also hangs up on its own
    (shown with a session cap below ``TimeLimit``, as if Twilio did not enforce it)."""
    await closed(stack)
    config = stack.app.session_config
    if session_cap is not None:
        stack.app.session_config = dataclasses.replace(config, max_call_seconds=session_cap)
    number = f"+1415555600{int(session_cap or 0)}"
    stack.world.twilio.program(number, Behavior.ANSWER, CalleeScript([Say("Please hold."), Pause(300.0)]))
    try:
        assert "Confirmed" in await ask(
            stack, USERS["cap"], f"/call {number} Hold Shop | haircut | next week"
        )
        stack.clock.jump_to(monday_at(11))
        stack.app.dispatcher.wake()
        call = await next_call_to(stack, number)
        assert call.params.get("TimeLimit") == [str(MAX_SECONDS)]  # Twilio's own cap, set on create
        await asyncio.wait_for(call.done.wait(), 30)
    finally:
        stack.app.session_config = config
    cap = session_cap or MAX_SECONDS
    assert call.callee.seconds <= cap + 1.0, call.callee.seconds  # the callee would have held for 5 min
    ours = ("api", "stream_closed")  # our REST hang-up, or our closing the stream just before it
    if session_cap:
        assert call.ended_by in ours and call.hangup_requested.is_set(), call.ended_by
    else:  # Twilio's TimeLimit or our own cap, whichever counted the 15th second first
        assert call.ended_by in (*ours, "time_limit"), call.ended_by


async def test_people_not_on_the_allow_list_are_told_so_and_nothing_is_queued(stack: Stack) -> None:
    await closed(stack)
    before = len(await stack.app.store.list(limit=10_000))
    answer = await ask(stack, 999_777, call_text(7001))
    assert "allow-list" in answer
    slack = stack.world.slack
    reply = await slack.slash_command(
        stack.url("/slack/events"),
        text=call_text(7002)[6:],
        user_id="U0NOBODY",
        channel_id="C1",
        team_id="T0X",
    )
    assert reply.status == 200 and "allow-list" in reply.text
    assert len(await stack.app.store.list(limit=10_000)) == before
