"""A networked database going away and coming back: the dispatcher waits, then goes on."""

from __future__ import annotations

import re
from datetime import timedelta

from dispatcher_harness import harness, local, request
from storage_kit import CuttableLink

from storage.db import open_database
from storage.jobs import JobStore


async def test_the_loop_waits_out_a_database_outage_and_dials_what_came_due(pg_url: str) -> None:
    port = int(re.search(r":(\d+)/", pg_url).group(1))  # type: ignore[union-attr]
    link = await CuttableLink(port).start()
    start = local("America/New_York", 2026, 6, 8, 10)  # a Monday, open
    async with harness(link.url(pg_url), start) as h:
        await link.cut()  # the database is gone for the dispatcher ...
        async with await open_database(pg_url) as other_node:  # ... while another node queues an errand
            job = await JobStore(other_node, clock=h.clock).enqueue(request(), due_at=start, max_attempts=3)
        h.dispatcher.wake()
        await h.run_until(start + timedelta(seconds=5))  # it keeps failing, backing off, never dying
        assert h.placer.calls == [] and h.task is not None and not h.task.done()
        await link.restore()
        await h.run_until(start + timedelta(seconds=60))
        assert [c.job_id for c in h.placer.calls] == [job.id]
        assert not h.task.done()
    await link.cut()
