"""DraftStore on a real SQLite file: ids that change with every change, compare-and-set,
take-once, expiry, and drafts that outlive the connection that wrote them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from storage_kit import table_names

from storage.db import Database, open_database
from storage.drafts import DRAFT_TTL, DraftStore, split_draft_id

T0 = datetime(2025, 3, 12, 18, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = await open_database(db_url)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def drafts(db: Database, clock: Clock) -> DraftStore:
    return DraftStore(db, clock=clock)


async def test_migration_4_creates_the_table(db: Database) -> None:
    assert await db.schema_version() >= 4
    assert "drafts" in await table_names(db)


async def test_every_change_gives_a_new_id_and_old_ids_stop_working(drafts: DraftStore) -> None:
    first = await drafts.start("sl:C1:1.0", "U1", {"phone": "+14155550100"})
    assert split_draft_id(first.id) is not None and first.owner == "U1"
    second = await drafts.replace(first.id, {"phone": "+14155550199"})
    assert second is not None and second.id != first.id and second.data == {"phone": "+14155550199"}
    assert await drafts.replace(first.id, {"phone": "+19999999999"}) is None, "a stale id changes nothing"
    assert await drafts.take(first.id) is None, "a stale id takes nothing"
    now = await drafts.current(first.id)
    assert now is not None and now.id == second.id, "the old id still finds the draft, as it is now"
    assert (await drafts.for_key("sl:C1:1.0")) == now
    assert len({first.id, second.id, (await drafts.replace(second.id, {}) or now).id}) == 3


async def test_take_happens_once_under_concurrency(drafts: DraftStore) -> None:
    d = await drafts.start("tg:42:0:7", "7", {"x": 1})
    results = await asyncio.gather(*(drafts.take(d.id) for _ in range(10)))
    assert [r.id for r in results if r is not None] == [d.id]
    assert await drafts.current(d.id) is None and await drafts.for_key("tg:42:0:7") is None


async def test_a_new_draft_replaces_the_threads_old_one(drafts: DraftStore) -> None:
    old = await drafts.start("k", "U1", {"n": 1})
    new = await drafts.start("k", "U1", {"n": 2})
    assert await drafts.current(old.id) is None and (await drafts.for_key("k")) == new
    assert await drafts.count() == 1


async def test_expired_drafts_are_gone_and_purged(drafts: DraftStore, clock: Clock) -> None:
    old = await drafts.start("a", "U1", {})
    clock.now += DRAFT_TTL - timedelta(minutes=1)
    kept = await drafts.start("b", "U1", {})
    assert await drafts.count() == 2
    clock.now += timedelta(minutes=2)
    assert await drafts.for_key("a") is None and await drafts.current(old.id) is None
    assert await drafts.replace(old.id, {}) is None and await drafts.take(old.id) is None
    assert await drafts.count() == 1
    assert await drafts.purge_expired() == 1
    assert (await drafts.for_key("b")) == kept
    changed = await drafts.replace(kept.id, {"touched": True})
    assert changed is not None and changed.updated_at == clock.now, "a change restarts the clock"


@pytest.mark.parametrize("bad", ["", "-", "abc", "abc-", "abc-x", "-3", "a-1-", "a-99999999999"])
async def test_malformed_ids_find_nothing(drafts: DraftStore, bad: str) -> None:
    await drafts.start("k", "U1", {})
    assert await drafts.current(bad) is None
    assert await drafts.replace(bad, {}) is None and await drafts.take(bad) is None
    assert await drafts.count() == 1


async def test_drafts_outlive_the_connection(db_url: str, clock: Clock) -> None:
    path = db_url
    async with await open_database(path) as first:
        made = await DraftStore(first, clock=clock).start("k", "U1", {"phone": "+14155550100"})
    async with await open_database(path) as second:
        store = DraftStore(second, clock=clock)
        again = await store.for_key("k")
        assert again == made
        assert (await store.take(made.id)) == made
