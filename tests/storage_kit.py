"""Aids for storage tests that run on both engines (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg

from storage.db import Database

#: What a statement the engine refuses raises, on either engine.
DB_ERRORS = (sqlite3.DatabaseError, asyncpg.PostgresError)


async def table_names(db: Database) -> set[str]:
    """The user tables of the database."""
    if db.dialect == "sqlite":
        rows = await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {r[0] for r in rows} - {"sqlite_sequence"}
    rows = await db.fetchall("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    return {r[0] for r in rows}


async def columns(db: Database) -> dict[str, list[str]]:
    """Each table's column names, in declaration order."""
    out: dict[str, list[str]] = {}
    for table in sorted(await table_names(db)):
        if db.dialect == "sqlite":
            rows = await db.fetchall(f"PRAGMA table_info({table})")
            out[table] = [r["name"] for r in rows]
        else:
            rows = await db.fetchall(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name = ? ORDER BY ordinal_position",
                (table,),
            )
            out[table] = [r[0] for r in rows]
    return out


async def wait_until_sound(db: Database, *, within: float = 30.0) -> None:
    """The database is consistent and no dead client's transaction is still open.

    SQLite: its own integrity check. PostgreSQL: the server has rolled back the sessions
    of killed clients (it notices a closed socket on its own, a moment after the kill);
    until then their row locks would make a claim skip rows it should take.
    """
    if db.dialect == "sqlite":
        assert await db.integrity_check() == "ok"  # type: ignore[attr-defined]
        return
    deadline = asyncio.get_running_loop().time() + within
    while True:
        row = await db.fetchone(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
        )
        if row is not None and row[0] == 0:
            return
        assert asyncio.get_running_loop().time() < deadline, "a killed client's transaction stayed open"
        await asyncio.sleep(0.05)
