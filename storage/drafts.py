"""Chat drafts in the database: the errand a person is still putting together in a thread.

A draft lives in the database, not in the bot's memory, so it survives a restart and
any server sharing the database can continue it. Each draft has one owner (the chat
user who started it) and an id that changes with *every* change: the id is
``<lineage>-<version>``, where the lineage is random and fixed for the draft's life
and the version counts its changes. Buttons carry the id, so a button shown before a
change no longer matches (:meth:`DraftStore.replace` and :meth:`DraftStore.take` are
compare-and-set on it), and the lineage still tells "changed since" apart from "gone".
The payload is JSON whose shape belongs to the chat layer; this module only keeps it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from storage.models import utcnow
from storage.sql import Database, Row, format_dt, parse_dt

__all__ = ["DRAFT_TTL", "Draft", "DraftStore", "draft_id", "split_draft_id"]

#: A draft nobody touched for this long is gone: its relative dates ("tomorrow") and the
#: business's opening hours shown when it was made would no longer be what the person saw.
DRAFT_TTL = timedelta(hours=24)

_COLUMNS = "lineage, version, thread_key, owner, data, created_at, updated_at"
_ID_ATTEMPTS = 20


def draft_id(lineage: str, version: int) -> str:
    """The id buttons carry: ``<lineage>-<version>``."""
    return f"{lineage}-{version}"


def split_draft_id(value: str) -> tuple[str, int] | None:
    """``(lineage, version)`` of a draft id, or ``None`` for anything else."""
    lineage, sep, version = value.rpartition("-")
    if not sep or not lineage or not version.isdigit() or len(version) > 9:
        return None
    return lineage, int(version)


@dataclass(frozen=True)
class Draft:
    """One stored draft.

    Attributes:
        id: ``<lineage>-<version>``; changes with every change of the draft.
        key: the chat thread it belongs to (platform + chat + thread, built by the bot).
        owner: the chat user id of the person who started it; only they may change it.
        data: the draft's fields (JSON, shape owned by the chat layer).
        created_at / updated_at: aware UTC.
    """

    id: str
    key: str
    owner: str
    data: dict[str, Any]
    created_at: datetime
    updated_at: datetime


def _from_row(row: Row) -> Draft:
    return Draft(
        id=draft_id(row["lineage"], int(row["version"])),
        key=row["thread_key"],
        owner=row["owner"],
        data=json.loads(row["data"]),
        created_at=parse_dt(row["created_at"]),
        updated_at=parse_dt(row["updated_at"]),
    )


class DraftStore:
    """Drafts over one :class:`~storage.db.Database` (table ``drafts``, migration 4).

    One open draft per thread key. Every write is one transaction (rows locked where read), so two
    servers (or two concurrent Slack listeners) pressing Confirm on the same draft take it once.

    Args:
        db: an open database; the store does not close it.
        clock: aware UTC ``now``; tests pass a fake one.
        ttl: drafts untouched for longer are treated as gone and purged.
    """

    def __init__(
        self, db: Database, *, clock: Callable[[], datetime] = utcnow, ttl: timedelta = DRAFT_TTL
    ) -> None:
        self._db = db
        self._clock = clock
        self._ttl = ttl

    def _fresh_after(self) -> str:
        return format_dt(self._clock() - self._ttl)

    async def start(self, key: str, owner: str, data: dict[str, Any]) -> Draft:
        """A new draft at ``key`` owned by ``owner``; any draft already there is replaced.

        Expired drafts are purged here, so the table stays as small as the live drafts.
        """
        at = self._clock()
        now = format_dt(at)
        payload = json.dumps(data, sort_keys=True)
        async with self._db.transaction() as tx:
            await tx.lock(f"draft:{key}")  # two starts in one thread at once: one replaces the other
            await tx.execute("DELETE FROM drafts WHERE updated_at < ?", (self._fresh_after(),))
            await tx.execute("DELETE FROM drafts WHERE thread_key = ?", (key,))
            for _ in range(_ID_ATTEMPTS):
                lineage = secrets.token_hex(6)
                if await tx.fetchone("SELECT 1 FROM drafts WHERE lineage = ?", (lineage,)) is None:
                    break
            else:  # pragma: no cover - 48 random bits colliding 20 times
                raise RuntimeError("could not find a free draft id")
            await tx.execute(
                f"INSERT INTO drafts ({_COLUMNS}) VALUES (?, 1, ?, ?, ?, ?, ?)",
                (lineage, key, owner, payload, now, now),
            )
        return Draft(draft_id(lineage, 1), key, owner, json.loads(payload), at, at)

    async def for_key(self, key: str) -> Draft | None:
        """The open draft of a thread, or ``None``."""
        row = await self._db.fetchone(
            f"SELECT {_COLUMNS} FROM drafts WHERE thread_key = ? AND updated_at >= ?",
            (key, self._fresh_after()),
        )
        return None if row is None else _from_row(row)

    async def current(self, any_id: str) -> Draft | None:
        """The draft ``any_id`` was an id of, as it is now, or ``None`` if it is gone.

        Its ``id`` differs from ``any_id`` when the draft has changed since that id was shown.
        """
        parts = split_draft_id(any_id)
        if parts is None:
            return None
        row = await self._db.fetchone(
            f"SELECT {_COLUMNS} FROM drafts WHERE lineage = ? AND updated_at >= ?",
            (parts[0], self._fresh_after()),
        )
        return None if row is None else _from_row(row)

    async def replace(self, current_id: str, data: dict[str, Any]) -> Draft | None:
        """Change the draft whose id is ``current_id``; it gets a new id.

        Returns:
            The changed draft, or ``None`` if ``current_id`` is no longer the draft's id
            (changed by someone else meanwhile, taken, or expired): nothing is written then.
        """
        parts = split_draft_id(current_id)
        if parts is None:
            return None
        lineage, version = parts
        payload = json.dumps(data, sort_keys=True)
        async with self._db.transaction() as tx:
            changed = await tx.execute(
                "UPDATE drafts SET version = version + 1, data = ?, updated_at = ?"
                " WHERE lineage = ? AND version = ? AND updated_at >= ?",
                (payload, format_dt(self._clock()), lineage, version, self._fresh_after()),
            )
            row = await tx.fetchone(f"SELECT {_COLUMNS} FROM drafts WHERE lineage = ?", (lineage,))
        return _from_row(row) if changed and row is not None else None

    async def take(self, current_id: str) -> Draft | None:
        """Remove the draft whose id is ``current_id`` and return it; ``None`` if that id is not
        current. Exactly one of any number of concurrent callers gets the draft."""
        parts = split_draft_id(current_id)
        if parts is None:
            return None
        async with self._db.transaction() as tx:
            row = await tx.fetchone(
                f"SELECT {_COLUMNS} FROM drafts WHERE lineage = ? AND version = ? AND updated_at >= ?"
                f"{tx.for_update}",
                (*parts, self._fresh_after()),
            )
            if row is not None:
                await tx.execute("DELETE FROM drafts WHERE lineage = ?", (parts[0],))
        return None if row is None else _from_row(row)

    async def drop_key(self, key: str) -> None:
        """Forget the draft of a thread, if any."""
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM drafts WHERE thread_key = ?", (key,))

    async def purge_expired(self) -> int:
        """Delete every expired draft; returns how many."""
        async with self._db.transaction() as tx:
            return await tx.execute("DELETE FROM drafts WHERE updated_at < ?", (self._fresh_after(),))

    async def count(self) -> int:
        """Open (unexpired) drafts."""
        row = await self._db.fetchone(
            "SELECT COUNT(*) FROM drafts WHERE updated_at >= ?", (self._fresh_after(),)
        )
        return int(row[0]) if row is not None else 0
