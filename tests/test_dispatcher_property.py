"""Property: whatever the schedule, zone, clock jumps and outcomes, no call is placed while closed.

Random weekly schedules (several intervals, some past midnight, some holidays)
in zones with DST quirks (New York, London, Lord Howe's half-hour shift),
starting near DST changes, driven by random clock jumps, submissions, call
outcomes and cancels. Every ``place_call`` checks ``hours.is_open(now)`` at the
instant it happens. Liveness too: once the loop is idle, no errand is left
overdue while there is free capacity.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta

from dispatcher_harness import harness, request
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from concierge.hours import parse_weekly
from storage.errors import IllegalTransition
from storage.models import CallOutcome, Job, JobState, OutcomeKind

ZONES = ["America/New_York", "Europe/London", "Australia/Lord_Howe", "UTC"]
DST_DAYS = [
    datetime(2026, 3, 8, tzinfo=UTC),  # New York springs forward
    datetime(2026, 3, 29, tzinfo=UTC),  # London springs forward
    datetime(2026, 4, 5, tzinfo=UTC),  # Lord Howe falls back 30 min
    datetime(2026, 10, 4, tzinfo=UTC),  # Lord Howe springs forward 30 min
    datetime(2026, 10, 25, tzinfo=UTC),  # London falls back
    datetime(2026, 11, 1, tzinfo=UTC),  # New York falls back
]
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


@st.composite
def schedules(draw: st.DrawFn) -> str:
    intervals = draw(
        st.lists(
            st.tuples(
                st.integers(0, 6),
                st.integers(0, 287).map(lambda i: i * 5),
                st.integers(2, 20 * 12).map(lambda i: i * 5),
            ),
            min_size=1,
            max_size=5,
        )
    )
    clauses = []
    for day, start, length in intervals:
        end = (start + length) % 1440
        clauses.append(f"{DAYS[day]} {_hhmm(start)}-{'24:00' if end == 0 else _hhmm(end)}")
    holidays = draw(st.lists(st.integers(-3, 10), max_size=2, unique=True))
    if holidays:
        base = date(2026, 1, 1)
        clauses.append("closed " + ", ".join(str(base + timedelta(days=h)) for h in holidays))
    return "; ".join(clauses)


# Hypothesis favours small integers; steps of very different sizes keep days passing.
_MINUTES = st.builds(
    lambda big, jitter: big + jitter, st.sampled_from([0, 60, 300, 720, 1440, 2880, 4320]), st.integers(1, 59)
)
_ADVANCE = st.tuples(st.just("advance"), _MINUTES)
_SUBMIT = st.tuples(st.just("submit"), st.integers(0, 0))
_OUTCOME = st.tuples(st.just("outcome"), st.integers(0, 100), st.sampled_from(list(OutcomeKind)))
# Weighted towards time passing, so schedules get exercised rather than cancelled.
ACTIONS = st.one_of(
    _ADVANCE,
    _ADVANCE,
    _ADVANCE,
    _SUBMIT,
    _OUTCOME,
    _OUTCOME,
    st.tuples(st.just("jump"), _MINUTES),
    st.tuples(st.just("answered"), st.integers(0, 100)),
    st.tuples(st.just("cancel"), st.integers(0, 100)),
)


async def _scenario(spec: str, zone: str, start: datetime, actions: list[tuple]) -> int:
    hours = parse_weekly(spec, zone)
    violations: list[str] = []
    async with harness(
        ":memory:",
        start,
        max_concurrent=2,
        lease_seconds=1800.0,
        max_queued_per_user=1000,
        errands_per_user_per_hour=1000,
    ) as h:

        def check_open(job: Job) -> None:
            now = h.clock.now()
            if not hours.is_open(now):
                violations.append(f"call for {job.id} at {now.isoformat()} while closed")

        h.placer.on_place = check_open
        req = request(hours=spec, tz=zone)
        for action in actions:
            active = await h.store.list(states=(JobState.DIALING, JobState.IN_CALL))
            if action[0] == "advance":
                await h.run_until(h.clock.now() + timedelta(minutes=action[1]))
            elif action[0] == "jump":
                h.clock.advance(timedelta(minutes=action[1]))
            elif action[0] == "submit":
                await h.dispatcher.submit(req)
            elif action[0] == "outcome" and active:
                job = active[action[1] % len(active)]
                await h.dispatcher.report_outcome(job.id, CallOutcome(action[2]))
            elif action[0] == "answered" and active:
                job = active[action[1] % len(active)]
                await h.dispatcher.call_answered(job.id, job.call_sid or "CA?")
            elif action[0] == "cancel":
                jobs = await h.store.list()
                if jobs:
                    try:
                        await h.dispatcher.cancel(jobs[action[1] % len(jobs)].id, "u1")
                    except IllegalTransition:
                        pass
            await h.idle()
            assert not violations, violations
            now = h.clock.now()
            queued = await h.store.list(states=(JobState.QUEUED,))
            for job in queued:
                assert hours.is_open(job.next_attempt_at), f"planned while closed: {job}"
            if await h.store.count_active() < 2:
                overdue = [j.id for j in queued if j.next_attempt_at <= now]
                assert not overdue, f"overdue with free capacity at {now}: {overdue}"
        return len(h.placer.calls)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=schedules(),
    zone=st.sampled_from(ZONES),
    base=st.sampled_from(DST_DAYS),
    offset_minutes=st.integers(-4 * 24 * 60, 2 * 24 * 60),
    actions=st.lists(ACTIONS, min_size=4, max_size=25),
)
def test_no_call_is_ever_placed_outside_opening_hours(
    spec: str, zone: str, base: datetime, offset_minutes: int, actions: list[tuple]
) -> None:
    start = base + timedelta(minutes=offset_minutes)
    placed = asyncio.run(_scenario(spec, zone, start, [("submit", 0), *actions]))
    event("calls placed: " + ("none" if placed == 0 else "some"))


def test_property_scenario_is_not_vacuous() -> None:
    """The scenario machinery really places calls when hours allow (guards the property above)."""
    actions: list[tuple] = [("submit", 0), ("advance", 60 * 48), ("outcome", 0, OutcomeKind.NO_ANSWER)]
    placed = asyncio.run(
        _scenario("daily 01:30-02:30", "America/New_York", DST_DAYS[0] - timedelta(days=1), actions)
    )
    assert placed >= 2
