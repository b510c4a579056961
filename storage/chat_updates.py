"""Chat updates already handled, in the database, so a redelivered one is handled once.

Telegram redelivers a webhook update it got no answer to and, in long polling, every update
whose offset was not confirmed yet: after the polling node dies, the node that takes over gets
the last batch again. Slack retries an event it did not see acknowledged within 3 seconds. With
several nodes, the second delivery may reach a different node than the first, so "seen" has to
live in the database. An update is marked before it is handled (at most once: a node dying
halfway loses it rather than, say, queueing an errand twice).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from storage.models import utcnow
from storage.sql import Database, format_dt

__all__ = ["SEEN_TTL", "SeenUpdates"]

#: Far longer than any redelivery (Telegram keeps updates 24 h, Slack retries within minutes).
SEEN_TTL = timedelta(hours=25)
#: Expired marks are purged at most this often.
PURGE_EVERY = timedelta(minutes=10)


class SeenUpdates:
    """Table ``chat_updates`` (migration 5): one row per update key first seen.

    Args:
        db: an open database; the store does not close it.
        clock: aware UTC ``now``.
        ttl: marks older than this are purged.
    """

    def __init__(
        self, db: Database, *, clock: Callable[[], datetime] = utcnow, ttl: timedelta = SEEN_TTL
    ) -> None:
        self._db = db
        self._clock = clock
        self._ttl = ttl
        self._purged: datetime | None = None

    async def first_time(self, key: str) -> bool:
        """Mark ``key`` (e.g. ``"tg:<update_id>"``) seen; whether no node had seen it before."""
        at = self._clock()
        async with self._db.transaction() as tx:
            if self._purged is None or at - self._purged >= PURGE_EVERY:
                await tx.execute("DELETE FROM chat_updates WHERE seen_at < ?", (format_dt(at - self._ttl),))
                self._purged = at
            added = await tx.execute(
                "INSERT INTO chat_updates (update_key, seen_at) VALUES (?, ?)"
                " ON CONFLICT (update_key) DO NOTHING",
                (key, format_dt(at)),
            )
        return added == 1
