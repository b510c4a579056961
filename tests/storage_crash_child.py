"""Child process for the crash-safety test (run as a script; holds no pytest tests).

Usage: ``python storage_crash_child.py DB_PATH NOW_ISO OWNER COMMIT_N LEASE_SECONDS``

It claims ``COMMIT_N`` due jobs for ``OWNER`` with its clock frozen at
``NOW_ISO`` (committed), then opens a second ``BEGIN IMMEDIATE`` transaction
that marks every remaining queued job dialing *without committing*, prints
``claimed <json ids>`` and blocks until it is killed. The parent SIGKILLs it:
the committed claims must survive, the open transaction must vanish.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime


async def main(db_path: str, now_iso: str, owner: str, commit_n: int, lease_seconds: float) -> None:
    from storage.db import open_database
    from storage.jobs import JobStore

    now = datetime.fromisoformat(now_iso)
    db = await open_database(db_path)
    try:
        store = JobStore(db, clock=lambda: now)
        claimed = await store.claim_due(owner, limit=commit_n, lease_seconds=lease_seconds)
        async with db.transaction() as tx:
            await tx.execute(
                "UPDATE jobs SET state = 'dialing', lease_owner = ? WHERE state = 'queued'", (owner,)
            )
            print("claimed", json.dumps([j.id for j in claimed]), flush=True)
            await asyncio.Event().wait()  # killed here, mid-transaction
    finally:
        await db.close()


if __name__ == "__main__":
    path, now_text, owner_name, n, lease = sys.argv[1:6]
    asyncio.run(main(path, now_text, owner_name, int(n), float(lease)))
