"""The do-not-call list: add, remove, seed, list, history, and migration 3 on an existing file."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from storage_kit import DB_ERRORS

from storage.db import MIGRATIONS, Database, open_database
from storage.numbers import SOURCE_CALLEE, SOURCE_SETTING, DoNotCall, add_in, contains_in
from storage.sqlite import split_statements

T0 = datetime(2030, 3, 4, 9, 0, tzinfo=UTC)


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


async def test_add_contains_remove_and_history(db: Database) -> None:
    clock = Clock()
    dnc = DoNotCall(db, clock=clock)
    assert not await dnc.contains("+14155550100")
    assert await dnc.add("+14155550100", "“Please don't call this number again.”", SOURCE_CALLEE)
    clock.now += timedelta(minutes=5)
    assert not await dnc.add("+14155550100", "again", "operator")  # the first reason is kept
    assert await dnc.contains("+14155550100")
    entry = await dnc.get("+14155550100")
    assert entry is not None and entry.source == SOURCE_CALLEE and entry.added_at == T0
    assert "don't call" in entry.reason
    assert await dnc.remove("+14155550100", reason="the shop asked us to call again")
    assert not await dnc.remove("+14155550100")
    assert not await dnc.contains("+14155550100") and await dnc.get("+14155550100") is None
    history = await dnc.history("+14155550100")
    assert [(action, source) for _, action, _, source in history] == [
        ("add", SOURCE_CALLEE),
        ("remove", "operator"),
    ]


async def test_history_is_append_only(db: Database) -> None:
    await DoNotCall(db).add("+14155550100", "x")
    for sql in ("UPDATE do_not_call_history SET reason = 'y'", "DELETE FROM do_not_call_history"):
        with pytest.raises(DB_ERRORS, match="append-only"):
            async with db.transaction() as tx:
                await tx.execute(sql)


@pytest.mark.parametrize("bad", ["4155550100", "+0123456789", "+1 415 555 0100", "", "+1"])
async def test_only_e164_is_stored(db: Database, bad: str) -> None:
    with pytest.raises(ValueError, match="E.164"):
        await DoNotCall(db).add(bad)


async def test_seed_takes_numbers_and_skips_prefixes(db: Database) -> None:
    dnc = DoNotCall(db)
    assert await dnc.seed(["+1 (415) 555-0100", "+1900*", "+447700900123"]) == 2
    assert await dnc.seed(["+14155550100"]) == 0  # idempotent across restarts
    listed = await dnc.list()
    assert {e.e164 for e in listed} == {"+14155550100", "+447700900123"}
    assert {e.source for e in listed} == {SOURCE_SETTING}


async def test_list_is_newest_first(db: Database) -> None:
    clock = Clock()
    dnc = DoNotCall(db, clock=clock)
    for n in ("+14155550101", "+14155550102"):
        await dnc.add(n)
        clock.now += timedelta(seconds=1)
    assert [e.e164 for e in await dnc.list()] == ["+14155550102", "+14155550101"]


async def test_inside_a_callers_transaction_and_rolled_back_with_it(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            assert await add_in(tx, "+14155550100", "opted out", SOURCE_CALLEE, at=T0)
            assert await contains_in(tx, "+14155550100")
            raise RuntimeError("the errand update failed")
    assert not await DoNotCall(db).contains("+14155550100")
    assert await DoNotCall(db).history("+14155550100") == []


async def test_migration_3_applies_to_a_database_made_before_it(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # a file written by a version that knew migration 1 only
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
        for statement in split_statements(MIGRATIONS[0].sqlite):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (1, '2030-01-01T00:00:00.000000+00:00')")
    conn.close()
    db = await open_database(path)
    try:
        versions = [r[0] for r in await db.fetchall("SELECT version FROM schema_version ORDER BY version")]
        assert versions == [m.version for m in MIGRATIONS] and 3 in versions
        assert await DoNotCall(db).add("+14155550100")
    finally:
        await db.close()
