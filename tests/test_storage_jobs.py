"""JobStore behaviour on one connection: state machine, history, leases, turns, queries."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from clocks import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st
from storage_kit import DB_ERRORS, table_names

from storage.db import MIGRATIONS, Database, Migration, format_dt, open_database, parse_dt
from storage.errors import IllegalTransition, JobNotFound, LeaseLost
from storage.jobs import ClaimLimits, HistoryEntry, JobStore
from storage.models import (
    TRANSITIONS,
    Booking,
    BookingWindow,
    CallOutcome,
    CallRequest,
    ChatOrigin,
    Job,
    JobMeta,
    JobState,
    OutcomeKind,
    Platform,
    Speaker,
    Turn,
    TurnLatency,
    UserAnswer,
)
from storage.sqlite import split_statements

T0 = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)
S = JobState


def make_request(n: int = 0, *, user_id: str = "u1", platform: Platform = Platform.TELEGRAM) -> CallRequest:
    return CallRequest(
        business_name=f"Joe's Barbershop #{n}",
        phone="+14155550100",
        business_tz="America/Los_Angeles",
        service="haircut",
        person_name="Ann",
        person_tz="Europe/Paris",
        window=BookingWindow(start_date=date(2030, 3, 5), end_date=date(2030, 3, 8)),
        origin=ChatOrigin(platform=platform, chat_id="c1", user_id=user_id, thread_id="t9"),
        notes="ask for Sam",
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await open_database(db_url)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def store(db: Database, clock: FakeClock) -> JobStore:
    return JobStore(db, clock=clock)


async def enqueue(store: JobStore, n: int = 0, *, due_in: float = 0.0, user_id: str = "u1") -> Job:
    return await store.enqueue(
        make_request(n, user_id=user_id), due_at=T0 + timedelta(seconds=due_in), max_attempts=3
    )


#: A path from queued to every state, using only legal steps.
PATHS: dict[JobState, list[JobState]] = {
    S.QUEUED: [],
    S.DIALING: [S.DIALING],
    S.IN_CALL: [S.DIALING, S.IN_CALL],
    S.NEEDS_USER: [S.DIALING, S.IN_CALL, S.NEEDS_USER],
    S.BOOKED: [S.DIALING, S.IN_CALL, S.BOOKED],
    S.DECLINED: [S.DIALING, S.IN_CALL, S.DECLINED],
    S.FAILED: [S.FAILED],
    S.GAVE_UP: [S.DIALING, S.GAVE_UP],
    S.CANCELLED: [S.CANCELLED],
}


async def job_in(store: JobStore, state: JobState) -> Job:
    job = await enqueue(store)
    for step in PATHS[state]:
        job = await store.transition(job.id, step, reason=f"to {step}")
    assert job.state is state
    return job


LEGAL = [(a, b) for a, targets in TRANSITIONS.items() for b in sorted(targets)]
ILLEGAL = [(a, b) for a in JobState for b in JobState if b not in TRANSITIONS[a]]


@pytest.mark.parametrize(("src", "dst"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
async def test_every_legal_transition(
    store: JobStore, clock: FakeClock, src: JobState, dst: JobState
) -> None:
    job = await job_in(store, src)
    clock.advance(5)
    outcome = CallOutcome(kind=OutcomeKind.BUSY, summary="line busy", call_sid="CA1")
    retry_at = T0 + timedelta(hours=2)

    after = await store.transition(job.id, dst, reason="test step", outcome=outcome, next_attempt_at=retry_at)

    assert after.state is dst
    assert after.outcome == outcome
    assert after.next_attempt_at == retry_at
    assert after.updated_at == clock.now()
    assert after.attempts == job.attempts + (1 if dst is S.DIALING else 0)
    last = (await store.history(job.id))[-1]
    assert last == HistoryEntry(at=clock.now(), from_state=src, to_state=dst, reason="test step", owner=None)
    assert await store.get(job.id) == after


async def test_every_illegal_transition_raises_and_changes_nothing(store: JobStore) -> None:
    assert len(ILLEGAL) > 50
    jobs = {state: await job_in(store, state) for state in JobState}
    for src, dst in ILLEGAL:
        job = jobs[src]
        before = await store.history(job.id)
        with pytest.raises(IllegalTransition, match=f"{src} → {dst}"):
            await store.transition(job.id, dst)
        assert await store.get(job.id) == job
        assert await store.history(job.id) == before


async def test_lease_is_kept_into_in_call_and_released_when_leaving(
    store: JobStore, clock: FakeClock
) -> None:
    await enqueue(store)
    [job] = await store.claim_due("d1", limit=5, lease_seconds=30)
    assert (job.state, job.attempts, job.lease_owner) == (S.DIALING, 1, "d1")
    assert job.lease_expires_at == T0 + timedelta(seconds=30)

    in_call = await store.transition(job.id, S.IN_CALL, owner="d1")
    assert (in_call.lease_owner, in_call.lease_expires_at) == ("d1", job.lease_expires_at)

    done = await store.transition(job.id, S.BOOKED, owner="d1", reason="slot agreed")
    assert (done.lease_owner, done.lease_expires_at) == (None, None)
    assert await store.count_active() == 0


async def test_transition_by_a_non_owner_raises_lease_lost(store: JobStore) -> None:
    await enqueue(store)
    [job] = await store.claim_due("d1", limit=1, lease_seconds=30)
    with pytest.raises(LeaseLost):
        await store.transition(job.id, S.IN_CALL, owner="d2")
    with pytest.raises(LeaseLost):
        await store.renew_lease(job.id, "d2", 60)
    assert (await store.get(job.id)).state is S.DIALING
    queued = await store.transition(job.id, S.QUEUED, owner="d1", reason="busy")
    with pytest.raises(LeaseLost):  # released: nobody holds it any more
        await store.transition(queued.id, S.DIALING, owner="d1")


async def test_renew_lease_extends_only_for_the_owner(store: JobStore, clock: FakeClock) -> None:
    await enqueue(store)
    [job] = await store.claim_due("d1", limit=1, lease_seconds=30)
    clock.advance(20)
    renewed = await store.renew_lease(job.id, "d1", 30)
    assert renewed.lease_expires_at == T0 + timedelta(seconds=50)
    clock.advance(25)  # past the first expiry, before the renewed one
    assert await store.expired_leases() == []
    assert await store.take_over(job.id, "d2", 30) is None


async def test_full_history_is_complete_and_ordered(store: JobStore, clock: FakeClock) -> None:
    job = await enqueue(store)
    steps: list[tuple[JobState, str]] = []
    for owner in ("d1", "d2"):
        clock.advance(1)
        [claimed] = await store.claim_due(owner, limit=1, lease_seconds=30)
        steps.append((S.DIALING, owner))
        clock.advance(1)
        await store.transition(job.id, S.IN_CALL, owner=owner, reason="answered")
        steps.append((S.IN_CALL, owner))
        clock.advance(1)
        final = S.QUEUED if owner == "d1" else S.BOOKED
        await store.transition(job.id, final, owner=owner, reason="done", next_attempt_at=clock.now())
        steps.append((final, owner))

    history = await store.history(job.id)
    assert history[0] == HistoryEntry(
        at=T0, from_state=None, to_state=S.QUEUED, reason="enqueued", owner=None
    )
    assert [(h.to_state, h.owner) for h in history[1:]] == steps
    assert [h.from_state for h in history[1:]] == [h.to_state for h in history[:-1]]
    assert [h.at for h in history] == sorted(h.at for h in history)
    assert (await store.get(job.id)).attempts == 2


async def test_history_table_is_append_only(db: Database, store: JobStore) -> None:
    job = await enqueue(store)
    with pytest.raises(DB_ERRORS, match="append-only"):
        async with db.transaction() as tx:
            await tx.execute("UPDATE job_history SET reason = 'rewritten' WHERE job_id = ?", (job.id,))
    with pytest.raises(DB_ERRORS, match="append-only"):
        async with db.transaction() as tx:
            await tx.execute("DELETE FROM job_history WHERE job_id = ?", (job.id,))
    assert [h.reason for h in await store.history(job.id)] == ["enqueued"]


async def test_cancel_before_the_call_is_answered(store: JobStore) -> None:
    for state in (S.QUEUED, S.DIALING, S.NEEDS_USER):
        job = await job_in(store, state)
        cancelled = await store.cancel(job.id)
        assert (cancelled.state, cancelled.lease_owner) == (S.CANCELLED, None)
        last = (await store.history(job.id))[-1]
        assert (last.from_state, last.to_state, last.reason) == (state, S.CANCELLED, "cancelled by user")


@pytest.mark.parametrize("state", [S.IN_CALL, S.BOOKED, S.DECLINED, S.FAILED, S.GAVE_UP, S.CANCELLED])
async def test_cancel_refused_once_answered_or_over(store: JobStore, state: JobState) -> None:
    job = await job_in(store, state)
    with pytest.raises(IllegalTransition, match=f"{state} → cancelled"):
        await store.cancel(job.id, reason="too late")
    assert await store.get(job.id) == job


async def test_unknown_job_raises_job_not_found(store: JobStore) -> None:
    for call in (
        store.get("deadbeef"),
        store.transition("deadbeef", S.DIALING),
        store.cancel("deadbeef"),
        store.set_call_sid("deadbeef", "CA1"),
        store.update_meta("deadbeef", progress_message="1"),
        store.history("deadbeef"),
        store.add_turns("deadbeef", 1, [Turn(Speaker.CALLEE, "hi")]),
        store.take_over("deadbeef", "d1", 30),
    ):
        with pytest.raises(JobNotFound):
            await call


async def test_enqueue_ids_are_short_hex_and_request_round_trips(store: JobStore) -> None:
    jobs = [await enqueue(store, n) for n in range(20)]
    assert all(re.fullmatch(r"[0-9a-f]{8}", j.id) for j in jobs)
    assert len({j.id for j in jobs}) == 20
    got = await store.get(jobs[3].id)
    assert got.request == make_request(3)
    assert (got.state, got.attempts, got.max_attempts, got.meta) == (S.QUEUED, 0, 3, JobMeta())
    with pytest.raises(ValueError):
        await store.enqueue(make_request(), due_at=T0, max_attempts=0)


async def test_claim_due_takes_due_jobs_earliest_first_up_to_limit(store: JobStore, clock: FakeClock) -> None:
    later = await enqueue(store, 1, due_in=-10)
    earliest = await enqueue(store, 2, due_in=-20)
    future = await enqueue(store, 3, due_in=60)
    middle = await enqueue(store, 4, due_in=-15)

    first = await store.claim_due("d1", limit=2, lease_seconds=30)
    assert [j.id for j in first] == [earliest.id, middle.id]
    rest = await store.claim_due("d1", limit=10, lease_seconds=30)
    assert [j.id for j in rest] == [later.id]
    assert await store.claim_due("d1", limit=10, lease_seconds=30) == []
    assert await store.claim_due("d1", limit=0, lease_seconds=30) == []

    clock.advance(60)
    assert [j.id for j in await store.claim_due("d2", limit=10, lease_seconds=30)] == [future.id]


async def test_next_due_at_and_count_active(store: JobStore) -> None:
    assert await store.next_due_at() is None
    assert await store.count_active() == 0
    await enqueue(store, 1, due_in=-5)
    await enqueue(store, 2, due_in=30)
    assert await store.next_due_at() == T0 - timedelta(seconds=5)

    [claimed] = await store.claim_due("d1", limit=5, lease_seconds=30)
    assert await store.next_due_at() == T0 + timedelta(seconds=30)  # only queued jobs count
    assert await store.count_active() == 1
    await store.transition(claimed.id, S.IN_CALL, owner="d1")
    assert await store.count_active() == 1
    await store.transition(claimed.id, S.DECLINED, owner="d1")
    assert await store.count_active() == 0


async def test_list_filters_newest_first(store: JobStore, clock: FakeClock) -> None:
    made = []
    for n in range(6):
        clock.advance(1)
        made.append(await enqueue(store, n, user_id="alice" if n % 2 == 0 else "bob"))
    await store.cancel(made[0].id)
    await store.cancel(made[1].id)

    assert [j.id for j in await store.list()] == [j.id for j in reversed(made)]
    assert [j.id for j in await store.list(limit=2)] == [made[5].id, made[4].id]
    assert [j.id for j in await store.list(user_id="alice")] == [made[4].id, made[2].id, made[0].id]
    assert [j.id for j in await store.list(states=[S.CANCELLED])] == [made[1].id, made[0].id]
    assert [j.id for j in await store.list(states=[S.QUEUED], user_id="bob")] == [made[5].id, made[3].id]
    assert await store.list(states=[]) == []
    assert await store.list(user_id="nobody") == []


async def test_call_sid_lookup(store: JobStore) -> None:
    job = await enqueue(store)
    assert await store.find_by_call_sid("CA123") is None
    updated = await store.set_call_sid(job.id, "CA123")
    assert updated.call_sid == "CA123"
    assert await store.find_by_call_sid("CA123") == updated


async def test_update_meta_changes_only_the_named_fields(store: JobStore) -> None:
    job = await store.enqueue(make_request(), due_at=T0, max_attempts=2, meta=JobMeta(progress_message="7"))
    job = await store.update_meta(job.id, result_delivered="booked:1")
    assert job.meta == JobMeta(progress_message="7", result_delivered="booked:1")
    job = await store.update_meta(job.id, progress_message="8", stream_token_sha256=None)
    assert (job.meta.progress_message, job.meta.result_delivered) == ("8", "booked:1")
    with pytest.raises(TypeError, match="chat_msg"):
        await store.update_meta(job.id, chat_msg=8)
    with pytest.raises(TypeError, match="extra"):
        await store.update_meta(job.id, extra={"x": 1})
    assert (await store.get(job.id)).meta == job.meta


async def test_meta_round_trips_every_field_and_keeps_unknown_legacy_keys(db_url: str) -> None:
    booking = Booking(T0, T0 + timedelta(minutes=30), "haircut", "with Sam")
    full = JobMeta(
        uncounted_attempts=2,
        call_sid_attempt=3,
        confirmed_booking=booking,
        confirmed_attempt=3,
        user_answers=(UserAnswer("Beard too?", "no"), UserAnswer(None, "after 5 pm")),
        progress_message="42",
        progress_posting=T0,
        result_delivered="booked:3",
        transcript_delivered="booked:3",
        stream_token_sha256="ab" * 32,
    )
    assert JobMeta.from_dict(json.loads(json.dumps(full.to_dict()))) == full
    async with await open_database(db_url) as db:
        store = JobStore(db, clock=lambda: T0)
        job = await store.enqueue(make_request(), due_at=T0, max_attempts=3)
        # A row written by another version: a key this one does not know, an int message id.
        legacy = {"progress_message": 7, "chat_msg": 7, "reconciled": {"twilio": "completed"}}
        async with db.transaction() as tx:
            await tx.execute("UPDATE jobs SET meta = ? WHERE id = ?", (json.dumps(legacy), job.id))
        loaded = await store.get(job.id)
        assert loaded.meta.progress_message == "7"
        assert loaded.meta.extra == {"chat_msg": 7, "reconciled": {"twilio": "completed"}}
        await store.update_meta(job.id, result_delivered="failed:1")
        row = await db.fetchone("SELECT meta FROM jobs WHERE id = ?", (job.id,))
        assert row is not None
        assert json.loads(row[0]) == {**legacy, "progress_message": "7", "result_delivered": "failed:1"}


async def test_unclaim_gives_the_attempt_back_in_one_transaction(db: Database, store: JobStore) -> None:
    job = await store.enqueue(make_request(), due_at=T0, max_attempts=3)
    [claimed] = await store.claim_due("d1", limit=1, lease_seconds=60)
    assert (await db.fetchone("SELECT COUNT(*) FROM calls WHERE job_id = ?", (job.id,)))[0] == 1  # type: ignore[index]
    with pytest.raises(LeaseLost):
        await store.unclaim(job.id, "d2", reason="closed", next_attempt_at=T0 + timedelta(hours=1))
    back = await store.unclaim(job.id, "d1", reason="closed", next_attempt_at=T0 + timedelta(hours=1))
    assert (back.state, back.attempts, back.calls_made, back.lease_owner) == (S.QUEUED, 1, 0, None)
    assert back.next_attempt_at == T0 + timedelta(hours=1)
    assert (await db.fetchone("SELECT COUNT(*) FROM calls WHERE job_id = ?", (job.id,)))[0] == 0  # type: ignore[index]
    assert (await store.history(job.id))[-1].reason == "closed"
    with pytest.raises(IllegalTransition):
        await store.unclaim(job.id, "d1", reason="again", next_attempt_at=T0)
    assert claimed.attempts == 1


async def test_migration_2_backfills_phone_and_the_call_ledger(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    request = make_request()
    with sqlite3.connect(path) as conn:  # a database last opened by a version-1 build
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        for statement in split_statements(MIGRATIONS[0].sqlite):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (1, ?)", (format_dt(T0),))
        conn.execute(
            "INSERT INTO jobs (id, state, request, user_id, attempts, max_attempts, next_attempt_at,"
            " created_at, updated_at) VALUES ('j1', 'queued', ?, 'u1', 2, 3, ?, ?, ?)",
            (json.dumps(request.to_dict()), format_dt(T0), format_dt(T0), format_dt(T0)),
        )
        for at, from_state, to_state in [
            (T0, None, "queued"),
            (T0 + timedelta(minutes=1), "queued", "dialing"),
            (T0 + timedelta(minutes=2), "dialing", "queued"),
            (T0 + timedelta(minutes=3), "queued", "dialing"),
            (T0 + timedelta(minutes=4), "dialing", "queued"),
        ]:
            conn.execute(
                "INSERT INTO job_history (job_id, at, from_state, to_state) VALUES ('j1', ?, ?, ?)",
                (format_dt(at), from_state, to_state),
            )
    async with await open_database(path) as db:
        assert await db.schema_version() >= 2
        row = await db.fetchone("SELECT phone FROM jobs WHERE id = 'j1'")
        assert row is not None and row[0] == request.phone
        ledger = await db.fetchall("SELECT attempt, phone, at FROM calls WHERE job_id = 'j1' ORDER BY 1")
        assert [tuple(r) for r in ledger] == [
            (1, request.phone, format_dt(T0 + timedelta(minutes=1))),
            (2, request.phone, format_dt(T0 + timedelta(minutes=3))),
        ]
        plan = await db.fetchall(
            "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM jobs WHERE phone = ? AND state = 'dialing'", ("+1",)
        )
        assert any("jobs_phone_state" in str(r[3]) for r in plan)


async def test_turns_round_trip_with_latency(store: JobStore) -> None:
    job = await enqueue(store)
    first = [
        Turn(Speaker.ASSISTANT, "Hi, I'm an AI assistant calling for Ann.", at=0.4),
        Turn(Speaker.CALLEE, "Sure, what day?", at=3.25),
        Turn(
            Speaker.ASSISTANT,
            "Tuesday at",
            at=4.0,
            interrupted=True,
            latency=TurnLatency(
                speech_end=100.0,
                stt_final=100.31,
                llm_first_token=100.52,
                tts_first_byte=100.61,
                first_audio_out=100.63,
                barge_in_ms=87.5,
            ),
        ),
        Turn(Speaker.CALLEE, "Tuesday is full.", at=5.0, latency=TurnLatency()),
    ]
    await store.add_turns(job.id, 1, first[:2])
    await store.add_turns(job.id, 1, first[2:])  # appended after the stored ones
    second = [Turn(Speaker.CALLEE, "Hello?", at=1.0, latency=TurnLatency(stt_final=7.5))]
    await store.add_turns(job.id, 2, second)
    await store.add_turns(job.id, 2, [])

    assert await store.turns(job.id, 1) == first
    assert await store.turns(job.id, 2) == second
    assert await store.turns(job.id) == first + second
    assert await store.turns(job.id, 3) == []
    latency = (await store.turns(job.id, 1))[2].latency
    assert latency is not None and latency.server_overhead_ms == pytest.approx(320.0)


async def test_expired_leases_and_take_over(store: JobStore, clock: FakeClock) -> None:
    await enqueue(store)
    [job] = await store.claim_due("d1", limit=1, lease_seconds=30)
    clock.advance(29)
    assert await store.expired_leases() == []
    assert await store.take_over(job.id, "d2", 30) is None
    clock.advance(1)
    assert [j.id for j in await store.expired_leases()] == [job.id]

    taken = await store.take_over(job.id, "d2", 30)
    assert taken is not None
    assert (taken.state, taken.lease_owner, taken.attempts) == (S.DIALING, "d2", 1)
    assert taken.lease_expires_at == clock.now() + timedelta(seconds=30)
    assert await store.take_over(job.id, "d3", 30) is None
    last = (await store.history(job.id))[-1]
    assert (last.from_state, last.to_state, last.owner) == (S.DIALING, S.DIALING, "d2")
    assert "d1" in last.reason
    with pytest.raises(LeaseLost):
        await store.transition(job.id, S.IN_CALL, owner="d1")
    queued = await job_in(store, S.QUEUED)
    assert await store.take_over(queued.id, "d2", 30) is None


async def test_transaction_rolls_back_on_error(db: Database, store: JobStore) -> None:
    job = await enqueue(store)
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("UPDATE jobs SET state = 'failed' WHERE id = ?", (job.id,))
            raise RuntimeError("boom")
    assert (await store.get(job.id)).state is S.QUEUED


async def test_file_database_pragmas_and_idempotent_migrations(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "queue.db"
    async with await open_database(path) as first:
        assert await first.journal_mode() == "wal"
        assert await first.schema_version() == MIGRATIONS[-1].version
        for pragma, expected in (("foreign_keys", 1), ("synchronous", 1), ("busy_timeout", 5000)):
            row = await first.fetchone(f"PRAGMA {pragma}")
            assert row is not None and row[0] == expected, pragma
        job = await JobStore(first, clock=clock).enqueue(make_request(), due_at=T0, max_attempts=3)

    async with await open_database(path) as second:  # opening again applies nothing twice
        assert await second.migrate(MIGRATIONS) == []
        versions = await second.fetchall("SELECT version FROM schema_version")
        assert [r[0] for r in versions] == [m.version for m in MIGRATIONS]
        assert await JobStore(second, clock=clock).get(job.id) == job
        assert await second.integrity_check() == "ok"


async def test_failed_migration_rolls_back_whole(db: Database) -> None:
    half = "CREATE TABLE half_done (a INTEGER);\nINSERT INTO no_such_table VALUES (1);"
    with pytest.raises(DB_ERRORS):
        await db.migrate([*MIGRATIONS, Migration(100, sqlite=half, postgresql=half)])
    assert "half_done" not in await table_names(db)
    assert await db.schema_version() == MIGRATIONS[-1].version
    extra = "CREATE TABLE extra (a TEXT DEFAULT ';');"
    assert await db.migrate([*MIGRATIONS, Migration(100, sqlite=extra, postgresql=extra)]) == [100]
    assert "extra" in await table_names(db)


def test_stored_times_sort_like_time() -> None:
    paris = timezone(timedelta(hours=1))
    moments = [
        datetime(2030, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(2030, 1, 1, 0, 30, tzinfo=paris),  # 23:30 UTC the day before
        datetime(2030, 1, 1, 0, 0, 0, tzinfo=UTC),
        datetime(2029, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ]
    texts = [format_dt(m) for m in moments]
    assert sorted(texts) == [format_dt(m) for m in sorted(moments)]
    assert all(parse_dt(t) == m for t, m in zip(texts, moments, strict=True))
    assert format_dt(moments[1]) == "2029-12-31T23:30:00.000000+00:00"
    with pytest.raises(ValueError):
        format_dt(datetime(2030, 1, 1))


def test_user_message_leaks_no_provider_text() -> None:
    from storage.errors import ProviderStatusError, ProviderTimeoutError, user_message

    err = ProviderStatusError("404: mailbox alex@contoso.com not found", provider="graph", status=404)
    assert user_message(err) == "the calendar service had a problem"
    assert "contoso" not in user_message(err)
    timeout = ProviderTimeoutError("t", provider="twilio")
    assert user_message(timeout) == "the phone service did not answer in time"
    assert user_message(ValueError("secret detail")) == "something went wrong on my side"


_LIMIT_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue"), st.integers(0, 2)),
        st.tuples(st.just("claim"), st.integers(0, 0)),
        st.tuples(st.just("end"), st.integers(0, 9)),
        st.tuples(st.just("advance"), st.sampled_from([1, 7, 60, 600, 1440])),
    ),
    min_size=5,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(ops=_LIMIT_OPS)
def test_claims_never_break_the_per_number_or_global_limits(ops: list[tuple[str, int]]) -> None:
    """Whatever is queued, claimed, ended or waited for, the claim's limits hold at every step."""

    async def scenario() -> None:
        clock = FakeClock(T0)
        limits = ClaimLimits(max_active=2, one_call_per_number=True, calls_per_number_per_day=3)
        claims: list[tuple[str, datetime]] = []
        async with await open_database(":memory:") as db:
            store = JobStore(db, clock=clock)
            for op, arg in ops:
                if op == "enqueue":
                    request = dataclasses.replace(make_request(), phone=f"+1415555010{arg}")
                    await store.enqueue(request, due_at=clock(), max_attempts=3)
                elif op == "claim":
                    claim = await store.claim("d", lease_seconds=60, limits=limits)
                    claims += [(j.request.phone, clock()) for j in claim.jobs]
                    for d in claim.deferred:
                        assert d.job.state is S.QUEUED and d.job.next_attempt_at > clock()
                elif op == "end":
                    active = await store.list(states=(S.DIALING,))
                    if active:
                        await store.transition(active[arg % len(active)].id, S.FAILED, reason="ended")
                else:
                    clock.advance(arg * 60)
                active = await store.list(states=(S.DIALING, S.IN_CALL))
                assert len(active) <= 2
                assert len({j.request.phone for j in active}) == len(active)
            for phone, at in claims:
                same_day = [t for p, t in claims if p == phone and at - timedelta(hours=24) < t <= at]
                assert len(same_day) <= 3

    asyncio.run(scenario())
