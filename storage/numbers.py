"""The do-not-call list: numbers that are never dialled again, whoever asks.

A number lands here when its callee asks not to be called again (outcome
``opted_out``), when the operator blocks it (``concierge numbers block``) or
from ``BLOCKED_NUMBERS`` at start-up. It is number-level, not per errand or per
person: an opt-out is honoured at once and for good, for every errand. Every
add and remove is also appended to ``do_not_call_history`` (append-only, like
``job_history``), so an opt-out can always be shown later.

Numbers are stored in E.164; callers normalise first (``bot.phone.check_phone``
or ``phonenumbers``), because ``+1 415…`` and ``+1415…`` must be one entry.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from storage.models import utcnow
from storage.sql import Database, Row, Transaction, format_dt, parse_dt

_E164 = re.compile(r"^\+[1-9]\d{5,14}$")

#: ``source`` of entries seeded from the ``BLOCKED_NUMBERS`` setting.
SOURCE_SETTING = "BLOCKED_NUMBERS"
#: ``source`` of entries added because the callee asked on the phone.
SOURCE_CALLEE = "callee"
#: ``source`` of entries added with ``concierge numbers block``.
SOURCE_OPERATOR = "operator"


@dataclass(frozen=True)
class DoNotCallEntry:
    """One blocked number.

    Attributes:
        e164: the number.
        reason: why, in words (for an opt-out: the callee's own words).
        source: who put it there (``callee``, ``operator``, ``BLOCKED_NUMBERS``, or an errand id).
        added_at: when (aware UTC).
    """

    e164: str
    reason: str
    source: str
    added_at: datetime


def require_e164(e164: str) -> str:
    """``e164`` if it is in E.164 form (``+`` and 6-15 digits).

    Raises:
        ValueError: anything else; normalise with phonenumbers first.
    """
    if not _E164.match(e164):
        raise ValueError(f"not an E.164 number: {e164!r} (expected e.g. +14155550100)")
    return e164


class DoNotCall:
    """The do-not-call list over one :class:`~storage.db.Database`.

    Args:
        db: an open database; the store does not close it.
        clock: aware UTC ``now`` for ``added_at`` and the history.
    """

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._clock = clock

    async def add(self, e164: str, reason: str = "", source: str = SOURCE_OPERATOR) -> bool:
        """Put ``e164`` on the list; ``False`` if it already was (the first reason is kept).

        Raises:
            ValueError: ``e164`` is not E.164.
        """
        async with self._db.transaction() as tx:
            return await add_in(tx, e164, reason, source, at=self._clock())

    async def seed(self, numbers: Iterable[str], *, source: str = SOURCE_SETTING) -> int:
        """Add every E.164 entry of ``numbers`` (others, e.g. ``+1900*`` prefixes, are skipped).

        Returns:
            How many were new.
        """
        added = 0
        async with self._db.transaction() as tx:
            for raw in numbers:
                number = re.sub(r"[\s().-]", "", raw)
                if _E164.match(number):
                    added += await add_in(tx, number, "listed in BLOCKED_NUMBERS", source, at=self._clock())
        return added

    async def remove(self, e164: str, *, reason: str = "", source: str = SOURCE_OPERATOR) -> bool:
        """Take ``e164`` off the list; ``False`` if it was not on it."""
        require_e164(e164)
        async with self._db.transaction() as tx:
            removed = await tx.execute("DELETE FROM do_not_call WHERE e164 = ?", (e164,))
            if removed:
                await _log(tx, e164, "remove", reason, source, self._clock())
            return removed > 0

    async def contains(self, e164: str) -> bool:
        """Whether ``e164`` must not be called."""
        return await self._db.fetchone("SELECT 1 FROM do_not_call WHERE e164 = ?", (e164,)) is not None

    async def get(self, e164: str) -> DoNotCallEntry | None:
        """The entry for ``e164``, or ``None``."""
        row = await self._db.fetchone(
            "SELECT e164, reason, source, added_at FROM do_not_call WHERE e164 = ?", (e164,)
        )
        return _entry(row) if row is not None else None

    async def list(self) -> list[DoNotCallEntry]:
        """Every blocked number, most recently added first."""
        rows = await self._db.fetchall(
            "SELECT e164, reason, source, added_at FROM do_not_call ORDER BY added_at DESC, e164"
        )
        return [_entry(r) for r in rows]

    async def history(self, e164: str) -> builtins.list[tuple[datetime, str, str, str]]:
        """``(at, action, reason, source)`` of every add and remove of ``e164``, oldest first."""
        rows = await self._db.fetchall(
            "SELECT at, action, reason, source FROM do_not_call_history WHERE e164 = ? ORDER BY seq",
            (e164,),
        )
        return [(parse_dt(r[0]), str(r[1]), str(r[2]), str(r[3])) for r in rows]


async def add_in(tx: Transaction, e164: str, reason: str, source: str, *, at: datetime) -> bool:
    """:meth:`DoNotCall.add` inside a transaction the caller holds.

    For the dispatcher, so that putting a number on the list and ending the errands
    to it are one commit.
    """
    require_e164(e164)
    added = await tx.execute(
        "INSERT INTO do_not_call (e164, reason, source, added_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (e164) DO NOTHING",
        (e164, reason, source, format_dt(at)),
    )
    if added:
        await _log(tx, e164, "add", reason, source, at)
    return added > 0


async def contains_in(tx: Transaction, e164: str) -> bool:
    """:meth:`DoNotCall.contains` inside a transaction the caller holds (e.g. the claim)."""
    return await tx.fetchone("SELECT 1 FROM do_not_call WHERE e164 = ?", (e164,)) is not None


async def _log(tx: Transaction, e164: str, action: str, reason: str, source: str, at: datetime) -> None:
    await tx.execute(
        "INSERT INTO do_not_call_history (e164, at, action, reason, source) VALUES (?, ?, ?, ?, ?)",
        (e164, format_dt(at), action, reason, source),
    )


def _entry(row: Row) -> DoNotCallEntry:
    return DoNotCallEntry(e164=str(row[0]), reason=str(row[1]), source=str(row[2]), added_at=parse_dt(row[3]))
