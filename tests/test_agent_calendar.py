"""GraphCalendar with the real msgraph-sdk against sandbox.graph."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from azure.core.credentials import AccessToken
from factories import call_request

from agent.calendar import GraphCalendar, build_graph_client
from sandbox.graph import SandboxGraph
from storage.errors import ProviderStatusError
from storage.models import Booking, BookingWindow, CallRequest, ChatOrigin, Platform

LA = ZoneInfo("America/Los_Angeles")
LONDON = ZoneInfo("Europe/London")
USER = "alex@contoso.example"


class FakeCredential:
    """An async TokenCredential (what azure.identity.aio credentials look like to the SDK)."""

    def __init__(self, token: str = "sandbox-token") -> None:
        self.token = token
        self.calls = 0

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls += 1
        return AccessToken(self.token, 4_102_444_800)

    async def close(self) -> None:
        pass


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


BUSY = [(datetime(2026, 12, 2, 14, 0, tzinfo=LA), datetime(2026, 12, 2, 15, 0, tzinfo=LA))]


@pytest.fixture
async def graph() -> AsyncIterator[SandboxGraph]:
    g = SandboxGraph(user_id=USER, busy=BUSY, token="sandbox-token")
    await g.start()
    yield g
    await g.stop()


@pytest.fixture
async def calendar(graph: SandboxGraph) -> AsyncIterator[tuple[GraphCalendar, Sleeps]]:
    sleeps = Sleeps()
    client = build_graph_client("tenant", "client", "secret", graph.base_url, credential=FakeCredential())
    cal = GraphCalendar(client, USER, sleep=sleeps)
    yield cal, sleeps
    await cal.aclose()


def london_request() -> CallRequest:
    return call_request(
        person_tz="Europe/London",
        window=BookingWindow(date(2026, 12, 1), date(2026, 12, 4), time(17, 0), time(23, 0), 30),
        origin=ChatOrigin(Platform.TELEGRAM, "1", "2"),
    )


async def test_busy_reads_get_schedule(graph: SandboxGraph, calendar: tuple[GraphCalendar, Sleeps]) -> None:
    cal, _ = calendar
    spans = await cal.busy(datetime(2026, 12, 2, 9, 0, tzinfo=LA), datetime(2026, 12, 2, 18, 0, tzinfo=LA))
    assert spans == [(BUSY[0][0].astimezone(UTC), BUSY[0][1].astimezone(UTC))]
    assert (
        await cal.busy(datetime(2026, 12, 3, 9, 0, tzinfo=LA), datetime(2026, 12, 3, 18, 0, tzinfo=LA)) == []
    )
    method, path, body = graph.requests[0]
    assert (method, path) == ("POST", f"/v1.0/users/{USER}/calendar/getSchedule")
    assert body["Schedules"] == [USER]  # getSchedule's body keys go out PascalCase
    assert body["StartTime"] == {"dateTime": "2026-12-02T17:00:00", "timeZone": "UTC"}


async def test_event_times_are_right_across_time_zones(
    graph: SandboxGraph, calendar: tuple[GraphCalendar, Sleeps]
) -> None:
    cal, _ = calendar
    # 10:00 in Los Angeles is 18:00 in London (inside the person's 17:00-23:00 window).
    booking = Booking(
        start=datetime(2026, 12, 3, 18, 0, tzinfo=LONDON),
        end=datetime(2026, 12, 3, 18, 30, tzinfo=LONDON),
        service="haircut",
        notes="ask for Sam",
    )
    link = await cal.create_event(transaction_id="job-42", request=london_request(), booking=booking)
    [event] = graph.events
    assert link == event["webLink"] and link.startswith("https://outlook.office365.com/")
    assert event["start"] == {"dateTime": "2026-12-03T10:00:00", "timeZone": "America/Los_Angeles"}
    assert event["end"] == {"dateTime": "2026-12-03T10:30:00", "timeZone": "America/Los_Angeles"}
    assert event["subject"] == "Haircut at Joe's Barbershop"
    assert "+14155550100" in event["body"]["content"] and "10:00–10:30" in event["body"]["content"]
    assert "ask for Sam" in event["body"]["content"]  # under the labelled call excerpt
    assert event["transactionId"] == "job-42"
    # The new event now shows up as busy.
    spans = await cal.busy(datetime(2026, 12, 3, 0, 0, tzinfo=LA), datetime(2026, 12, 4, 0, 0, tzinfo=LA))
    assert spans == [(booking.start.astimezone(UTC), booking.end.astimezone(UTC))]


async def test_event_created_once_when_the_answer_is_lost_and_the_create_retried(
    graph: SandboxGraph, calendar: tuple[GraphCalendar, Sleeps]
) -> None:
    cal, sleeps = calendar
    booking = Booking(
        datetime(2026, 12, 1, 15, 0, tzinfo=LA), datetime(2026, 12, 1, 15, 30, tzinfo=LA), "haircut"
    )
    graph.fail_next(503, retry_after=1, apply_first=True)  # created, but the client sees a 503
    link = await cal.create_event(transaction_id="job-7", request=london_request(), booking=booking)
    assert sleeps.waits == [1.0]  # Retry-After honoured
    assert [m for m, p, _ in graph.requests if p.endswith("/events")] == ["POST", "POST"]
    assert len(graph.events) == 1 and graph.events[0]["webLink"] == link
    # A later retry of the whole job (e.g. after a crash) is idempotent too.
    again = await cal.create_event(transaction_id="job-7", request=london_request(), booking=booking)
    assert again == link and len(graph.events) == 1


async def test_throttling_is_retried_then_surfaces_as_a_retryable_error(
    graph: SandboxGraph, calendar: tuple[GraphCalendar, Sleeps]
) -> None:
    cal, sleeps = calendar
    start, end = datetime(2026, 12, 2, 9, 0, tzinfo=LA), datetime(2026, 12, 2, 18, 0, tzinfo=LA)
    graph.fail_next(429, retry_after=2)
    assert len(await cal.busy(start, end)) == 1
    assert sleeps.waits == [2.0]
    graph.fail_next(429, retry_after=2, count=3)
    with pytest.raises(ProviderStatusError) as err:
        await cal.busy(start, end)
    assert err.value.status == 429 and err.value.retryable and err.value.provider == "graph"
    graph.fail_next(503, retry_after=600)  # too long to wait with a caller on the line
    with pytest.raises(ProviderStatusError) as err:
        await cal.busy(start, end)
    assert err.value.status == 503 and err.value.retryable


async def test_bad_token_is_a_permanent_error(graph: SandboxGraph) -> None:
    client = build_graph_client("t", "c", "s", graph.base_url, credential=FakeCredential("wrong"))
    cal = GraphCalendar(client, USER, sleep=Sleeps())
    try:
        with pytest.raises(ProviderStatusError) as err:
            await cal.busy(datetime(2026, 12, 2, 9, tzinfo=LA), datetime(2026, 12, 2, 10, tzinfo=LA))
    finally:
        await cal.aclose()
    assert err.value.status == 401 and not err.value.retryable


async def test_create_event_errors_are_retried_and_mapped_like_every_graph_error(
    graph: SandboxGraph, calendar: tuple[GraphCalendar, Sleeps]
) -> None:
    """The create answer is read raw (no kiota Event parse): its failures must still be retried and
    mapped exactly as kiota's own errors are."""
    cal, sleeps = calendar
    booking = Booking(
        start=datetime(2026, 12, 3, 18, 0, tzinfo=LONDON),
        end=datetime(2026, 12, 3, 18, 30, tzinfo=LONDON),
        service="haircut",
    )

    async def create(job: str) -> str:
        request = london_request()
        return await cal.create_event(transaction_id=job, request=request, booking=booking)

    graph.fail_next(429, retry_after=2)
    link = await create("job-1")
    assert sleeps.waits == [2.0] and graph.events[-1]["webLink"] == link
    graph.fail_next(503, retry_after=2, count=3)
    with pytest.raises(ProviderStatusError) as err:
        await create("job-2")
    assert err.value.status == 503 and err.value.retryable and err.value.provider == "graph"
    assert len(graph.events) == 1


async def test_busy_skips_free_items_and_keeps_non_utc_times() -> None:
    """getSchedule is read from its JSON: free-ish statuses are skipped, every time zone kept."""
    tokyo = ZoneInfo("Asia/Tokyo")
    events = [
        {"start": {"dateTime": "2026-12-02T09:00:00", "timeZone": "Asia/Tokyo"},
         "end": {"dateTime": "2026-12-02T10:00:00", "timeZone": "Asia/Tokyo"}, "showAs": "busy"},
    ]  # fmt: skip
    g = SandboxGraph(user_id=USER, busy=BUSY, events=events, token="sandbox-token")
    await g.start()
    client = build_graph_client("tenant", "client", "secret", g.base_url, credential=FakeCredential())
    cal = GraphCalendar(client, USER)
    try:
        spans = await cal.busy(
            datetime(2026, 12, 1, 0, 0, tzinfo=UTC), datetime(2026, 12, 3, 0, 0, tzinfo=UTC)
        )
    finally:
        await cal.aclose()
        await g.stop()
    assert spans == sorted(
        [
            (
                datetime(2026, 12, 2, 9, 0, tzinfo=tokyo).astimezone(UTC),
                datetime(2026, 12, 2, 10, 0, tzinfo=tokyo).astimezone(UTC),
            ),
            (BUSY[0][0].astimezone(UTC), BUSY[0][1].astimezone(UTC)),
        ]
    )
    assert all(s.tzinfo is UTC and e.tzinfo is UTC for s, e in spans)


def test_schedule_json_helpers_reject_what_graph_would_not_send() -> None:
    from agent.calendar import _objects, _parse_graph_dt

    assert (
        _objects([{"a": 1}, "x", None, 3]) == [{"a": 1}] and _objects({"a": 1}) == [] and _objects(None) == []
    )
    assert _parse_graph_dt(
        {"dateTime": "2026-12-02T09:00:00.0000000", "timeZone": "Europe/London"}
    ) == datetime(2026, 12, 2, 9, 0, tzinfo=LONDON)
    assert _parse_graph_dt({"dateTime": "2026-12-02T09:00:00Z"}).utcoffset() == UTC.utcoffset(None)
    for bad in (None, {}, {"dateTime": ""}, {"dateTime": 5}, "2026-12-02T09:00:00"):
        with pytest.raises(ProviderStatusError):
            _parse_graph_dt(bad)


@pytest.mark.parametrize("seed", range(5))
async def test_sandbox_availability_view_marks_every_slot_a_span_touches(seed: int) -> None:
    import random

    import aiohttp

    rng = random.Random(seed)
    base = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    busy = []
    for _ in range(rng.randint(0, 12)):
        s = base + timedelta(minutes=rng.randint(-120, 3000))
        busy.append((s, s + timedelta(minutes=rng.randint(1, 300))))
    g = SandboxGraph(user_id=USER, busy=busy, token="sandbox-token")
    await g.start()
    start, end, interval = base, base + timedelta(minutes=2900), rng.choice([5, 15, 30, 60])
    body = {
        "schedules": [USER], "availabilityViewInterval": interval,
        "startTime": {"dateTime": start.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
        "endTime": {"dateTime": end.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"},
    }  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            url = f"{g.base_url}/users/{USER}/calendar/getSchedule"
            async with http.post(url, json=body, headers={"Authorization": "Bearer sandbox-token"}) as resp:
                view = (await resp.json())["value"][0]["availabilityView"]
    finally:
        await g.stop()
    expected, t = "", start
    while t < end:  # the definition: a slot is busy if any span overlaps it
        nxt = t + timedelta(minutes=interval)
        expected += "2" if any(s < nxt and e > t for s, e in busy) else "0"
        t = nxt
    assert view == expected
