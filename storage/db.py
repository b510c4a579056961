"""Opening the queue's database: SQLite for one node, PostgreSQL for several.

The stores depend only on ``storage.sql`` (the interface); this module picks the engine
from the target and applies the schema (``storage.migrations``). ``DATABASE_URL`` is
``sqlite:///path`` (the default, embedded) or ``postgresql://user:pass@host:port/db``.
"""

from __future__ import annotations

from pathlib import Path

from storage.migrations import MIGRATIONS
from storage.postgres import PostgresDatabase
from storage.sql import (
    Database,
    DatabaseUnavailable,
    Migration,
    Row,
    SchemaTooNew,
    Singleton,
    Transaction,
    format_dt,
    parse_dt,
)
from storage.sqlite import SqliteDatabase

__all__ = [
    "MIGRATIONS",
    "Database",
    "DatabaseUnavailable",
    "Migration",
    "PostgresDatabase",
    "Row",
    "SchemaTooNew",
    "Singleton",
    "SqliteDatabase",
    "Transaction",
    "format_dt",
    "is_postgres_url",
    "open_database",
    "parse_dt",
]

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_PREFIXES = ("postgresql://", "postgres://")


def is_postgres_url(target: str) -> bool:
    """Whether ``target`` names a PostgreSQL database (``postgresql://`` or ``postgres://``)."""
    return target.startswith(_POSTGRES_PREFIXES)


async def open_database(target: str | Path) -> Database:
    """Open the database ``target`` names and bring its schema up to date.

    Args:
        target: ``postgresql://…`` / ``postgres://…``; ``sqlite:///path``; or a plain SQLite
            file path (``":memory:"`` for a private in-memory database).

    Raises:
        storage.sql.DatabaseUnavailable: PostgreSQL cannot be reached.
        storage.sql.SchemaTooNew: a newer Concierge has migrated the database.
    """
    text = str(target)
    if is_postgres_url(text):
        return await PostgresDatabase.open(text, MIGRATIONS)
    if text.startswith(_SQLITE_PREFIX):
        text = text[len(_SQLITE_PREFIX) :]
    return await SqliteDatabase.open(text, MIGRATIONS)
