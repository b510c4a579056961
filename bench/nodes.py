"""Several nodes on one database: claim throughput, errand round trip, 1 node against 2 nodes.

Figures, never assertions (``bench/README.md``, "Nodes", says what each one means)::

    python -m bench.nodes claims                  # claims per second, SQLite and PostgreSQL
    python -m bench.nodes roundtrip               # submit -> final state, both backends
    python -m bench.nodes calls --levels 20,40    # concurrent calls, 1 node against 2 nodes
    python -m bench.nodes all --json              # everything, one JSON object

PostgreSQL is a throwaway server started here from the installed binaries (``tests/pg_server.py``,
the one the tests use) with durability set like SQLite's WAL ``synchronous=NORMAL``: ``fsync`` on,
``synchronous_commit`` off (a crash may lose the last commits, never corrupts). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from bench.harness import SandboxShards, bench_settings, errand
from bench.latency import pct
from bench.sandbox_proc import bench_script
from concierge.app import bind
from concierge.settings import Settings
from demo.runner import start_stack
from sandbox import scenarios
from sandbox.twilio import Behavior
from storage.db import Database, open_database
from storage.jobs import ClaimLimits, JobStore
from storage.models import JobState, Speaker

BACKENDS = ("sqlite", "postgresql")
#: As durable as SQLite in WAL mode with ``synchronous=NORMAL`` (see the module docstring).
PG_SETTINGS = {"fsync": "on", "synchronous_commit": "off", "full_page_writes": "on"}
#: Claims as the dispatcher makes them (no cap reached: the bench measures the transaction).
CLAIM_LIMITS = dict(max_active=1_000_000, one_call_per_number=True, calls_per_number_per_day=3)
ROOT = Path(__file__).resolve().parents[1]


# -- databases ------------------------------------------------------------------------------


class Backends:
    """A fresh database per measurement on either backend (PostgreSQL started on first use)."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="concierge-nodes-")
        self._pg: Any = None
        self._n = 0

    async def afresh(self, backend: str) -> str:
        """A new empty database's ``DATABASE_URL``."""
        self._n += 1
        if backend == "sqlite":
            return f"sqlite:///{self._tmp.name}/bench-{self._n}.db"
        if self._pg is None:
            from tests.pg_server import PostgresServer

            self._pg = await asyncio.to_thread(PostgresServer.start, settings=PG_SETTINGS)
        url: str = await self._pg.create_database()
        return url

    def close(self) -> None:
        if self._pg is not None:
            self._pg.stop()
        self._tmp.cleanup()


async def open_db(url: str) -> Database:
    """The bench's own connection to a node database (a SQLite URL opens its file)."""
    return await open_database(url)


# -- claims per second ----------------------------------------------------------------------


async def _fill(url: str, jobs: int) -> None:
    db = await open_db(url)
    try:
        store = JobStore(db)
        due = datetime.now(UTC) - timedelta(minutes=1)
        today = date.today()
        for i in range(jobs):
            await store.enqueue(errand(f"+1415{5550000 + i:07d}", i, today=today), due_at=due, max_attempts=3)
    finally:
        await db.close()


async def claims(url: str, *, jobs: int, claimers: int, batch: int, finish: bool) -> dict[str, Any]:
    """``claimers`` connections (nodes) claim ``jobs`` due errands, ``batch`` per claim, until none is left.

    ``finish``: each claimed errand is then taken through in_call to booked (two more transactions),
    as a call would, so the figure is the queue's whole per-errand cost, not the claim alone.
    """
    await _fill(url, jobs)
    dbs = [await open_db(url) for _ in range(claimers)]
    limits = ClaimLimits(batch=batch, **CLAIM_LIMITS)  # type: ignore[arg-type]
    counts = [0] * claimers
    transactions = [0] * claimers

    async def node(k: int) -> None:
        store = JobStore(dbs[k])
        owner = f"node-{k}"
        while True:
            claim = await store.claim(owner, lease_seconds=900, limits=limits)
            transactions[k] += 1
            if not claim.jobs:
                return
            counts[k] += len(claim.jobs)
            if finish:
                for job in claim.jobs:
                    await store.transition(job.id, JobState.IN_CALL, owner=owner, reason="bench")
                    await store.transition(job.id, JobState.BOOKED, owner=owner, reason="bench")
                    transactions[k] += 2

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(node(k) for k in range(claimers)))
        wall = time.perf_counter() - t0
    finally:
        for db in dbs:
            await db.close()
    assert sum(counts) == jobs, (counts, jobs)
    return {
        "jobs": jobs,
        "claimers": claimers,
        "batch": batch,
        "finish": finish,
        "seconds": round(wall, 3),
        "errands_per_s": round(jobs / wall, 1),
        "transactions_per_s": round(sum(transactions) / wall, 1),
        "per_claimer": counts,
    }


async def claims_table(backends: Backends, names: list[str], jobs: int) -> list[dict[str, Any]]:
    out = []
    for backend in names:
        for claimers, batch, finish in (
            (1, 1, False),
            (2, 1, False),
            (4, 1, False),
            (2, 20, False),
            (2, 1, True),
        ):
            url = await backends.afresh(backend)
            row = await claims(url, jobs=jobs, claimers=claimers, batch=batch, finish=finish)
            out.append({"backend": backend, **row})
            print(_claims_line(out[-1]), file=sys.stderr, flush=True)
    return out


def _claims_line(r: dict[str, Any]) -> str:
    what = "claim+in_call+booked" if r["finish"] else "claim"
    return (
        f"{r['backend']:10} {r['claimers']} claimer(s), batch {r['batch']:2}, {what:20}"
        f" {r['errands_per_s']:8.1f} errands/s  {r['transactions_per_s']:8.1f} tx/s  split {r['per_claimer']}"
    )


# -- errand round trip ----------------------------------------------------------------------


async def roundtrip(url: str, *, errands: int, kind: str, pace: float) -> dict[str, Any]:
    """Submit one errand at a time to an in-process node and time it to its final state.

    ``busy``: the line is busy and one attempt is allowed, so the errand goes submit → claim →
    Twilio create → ringing → busy callback → gave_up: the queue and the REST path, no audio.
    ``booked``: the bench receptionist (four assistant turns) at ``pace`` times real time.
    """
    world, app, _clock = await start_stack(
        pace=pace,
        database_url=url,
        default_business_hours="mon-sun 00:00-24:00",
        callee_local_hours="00:00-24:00",
        max_attempts=1,
        max_calls_per_number_per_day=10_000,
        silence_timeout_seconds=6.0,
    )
    today = date.today()
    times: list[float] = []
    states: dict[str, int] = {}
    try:
        if kind == "booked":
            world.graph.busy = list(scenarios.build("interrupt", today=today).busy)
        for i in range(errands):
            number = f"+1415{5560000 + i:07d}"
            if kind == "busy":
                world.twilio.program(number, Behavior.BUSY)
            else:
                world.twilio.program(number, Behavior.ANSWER, bench_script(today=today))
                world.graph.events.clear()  # the last errand's booking would make the offer busy
            t0 = time.perf_counter()
            job = await app.dispatcher.submit(errand(number, i, today=today))
            # The store has no change feed: a 5 ms poll bounds the figure's error.
            while not (job := await app.store.get(job.id)).state.is_final:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            times.append((time.perf_counter() - t0) * 1000.0)
            states[str(job.state)] = states.get(str(job.state), 0) + 1
    finally:
        await app.stop(grace=5)
        await world.stop()
    return {
        "kind": kind,
        "errands": errands,
        "states": states,
        "ms": {"p50": pct(times, 50), "p95": pct(times, 95), "max": round(max(times), 1)},
    }


async def roundtrip_table(backends: Backends, names: list[str], errands: int) -> list[dict[str, Any]]:
    out = []
    for backend in names:
        for kind, pace in (("busy", 1.0), ("booked", 4.0)):
            url = await backends.afresh(backend)
            row = {
                "backend": backend,
                "pace": pace,
                **await roundtrip(url, errands=errands, kind=kind, pace=pace),
            }
            out.append(row)
            print(
                f"{backend:10} {kind:6} (pace {pace:g}) submit→final ms p50 {row['ms']['p50']}"
                f" p95 {row['ms']['p95']} max {row['ms']['max']}  {row['states']}",
                file=sys.stderr,
                flush=True,
            )
    return out


# -- 1 node against 2 nodes -----------------------------------------------------------------


def node_env(settings: Settings, node_id: str) -> dict[str, str]:
    """``concierge serve``'s environment: every setting explicit, as a deployment gives it."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        env[name.upper()] = ",".join(value) if isinstance(value, list) else str(value)
    env["NODE_ID"] = node_id
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _free_port() -> int:
    sock = bind("127.0.0.1", 0)
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


async def calls_round(
    url: str, *, nodes: int, calls: int, ramp: float, sandbox: SandboxShards, hello: dict[str, Any]
) -> dict[str, Any]:
    """``calls`` errands due over ``ramp`` seconds, taken by ``nodes`` ``concierge serve`` processes.

    The errands are queued before the nodes start (a node parks until the next due errand, and
    nothing outside wakes it), due from a moment after every node is ready; whichever node wakes
    first claims each one, so the load splits by who is free.
    """
    from tests.serve_proc import Server

    await sandbox.command("reset")
    tmp = Path(tempfile.mkdtemp(prefix="concierge-nodes-"))
    db = await open_db(url)
    store = JobStore(db)
    today = date.today()
    start_at = datetime.now(UTC) + timedelta(seconds=15 + 5 * nodes)
    jobs = [
        await store.enqueue(
            errand(hello["numbers"][i], i, today=today),
            due_at=start_at + timedelta(seconds=ramp * i / calls),
            max_attempts=1,
        )
        for i in range(calls)
    ]
    servers = []
    for k in range(nodes):
        port = _free_port()
        settings = bench_settings(hello, port=port, db_path="", overrides={"database_url": url})
        servers.append(Server(node_env(settings, f"node-{k + 1}"), tmp, tmp / f"node-{k + 1}.log"))
    try:
        await asyncio.gather(*(s.start() for s in servers))
        if datetime.now(UTC) > start_at:
            print("  (a node was ready only after the first errand fell due)", file=sys.stderr)
        procs = [psutil.Process(s.proc.pid) for s in servers if s.proc is not None and s.proc.pid is not None]
        cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
        await asyncio.sleep(max(0.0, (start_at - datetime.now(UTC)).total_seconds()))
        t0 = time.monotonic()
        open_states = [s for s in JobState if not s.is_final]
        while await store.list(states=open_states, limit=1):
            if time.monotonic() - t0 > 300:
                raise TimeoutError(f"{calls} calls on {nodes} node(s) still running after 300 s")
            await asyncio.sleep(1.0)
        seconds = time.monotonic() - t0
        cpu = [(sum(p.cpu_times()[:2]) - c) * 1000.0 for p, c in zip(procs, cpu0, strict=True)]
        stats = await sandbox.command("stats")
        heard = await sandbox.heard()
        overheads: list[float] = []
        owners: dict[str, int] = {}
        states: dict[str, int] = {}
        not_booked: dict[str, int] = {}
        for job in jobs:
            final = await store.get(job.id)
            states[str(final.state)] = states.get(str(final.state), 0) + 1
            if final.state is not JobState.BOOKED and final.outcome is not None:
                why = f"{final.outcome.kind}: {final.outcome.summary}"[:100]
                not_booked[why] = not_booked.get(why, 0) + 1
            claimed = [h.owner for h in await store.history(job.id) if str(h.to_state) == "dialing"]
            for owner in claimed:
                owners[owner or "?"] = owners.get(owner or "?", 0) + 1
            for turn in await store.turns(job.id):
                lat = turn.latency
                if (
                    turn.speaker is Speaker.ASSISTANT
                    and lat is not None
                    and lat.server_overhead_ms is not None
                ):
                    overheads.append(lat.server_overhead_ms)
        gaps = [t["gap_ms"] for c in heard for t in c["turns"] if t.get("gap_ms") is not None]
        audio_s = sum(c["seconds"] for c in heard)
    finally:
        for s in servers:
            if s.proc is not None and s.returncode is None:
                with contextlib.suppress(Exception):
                    await s.terminate(timeout=30)
        await db.close()
    return {
        "nodes": nodes,
        "calls": calls,
        "states": states,
        "claimed_by": owners,
        "not_booked": not_booked,
        "wall_seconds": round(seconds, 1),
        "server_overhead_ms": {"p50": pct(overheads, 50), "p99": pct(overheads, 99), "n": len(overheads)},
        "heard_gap_ms": {"p50": pct(gaps, 50), "p95": pct(gaps, 95), "n": len(gaps)},
        "node_cpu_ms_per_call_second": round(sum(cpu) / audio_s, 1) if audio_s else None,
        "node_cpu_ms": [round(c) for c in cpu],
        "sandbox_loop_lag_ms_p99": stats.get("loop_lag_ms_p99"),
        "sandbox_cpu_ms": stats.get("cpu_ms"),
    }


async def calls_table(
    backends: Backends, backend: str, levels: list[int], ramp: float
) -> list[dict[str, Any]]:
    sandbox = SandboxShards(numbers=max(levels), pace=1.0, latencies={}, shards=3)
    hello = await sandbox.start()
    out = []
    try:
        for calls in levels:
            for nodes in (1, 2):
                url = await backends.afresh(backend)
                row = {
                    "backend": backend,
                    **await calls_round(
                        url, nodes=nodes, calls=calls, ramp=ramp, sandbox=sandbox, hello=hello
                    ),
                }
                out.append(row)
                overhead, gap = row["server_overhead_ms"], row["heard_gap_ms"]
                print(
                    f"{backend:10} {calls:3} calls on {nodes} node(s): {row['states']}"
                    f" by {row['claimed_by']}; {row['not_booked'] or ''}"
                    f" server overhead p50 {overhead['p50']} p99 {overhead['p99']} ms;"
                    f" heard gap p50 {gap['p50']} p95 {gap['p95']} ms;"
                    f" node CPU {row['node_cpu_ms_per_call_second']} ms per call-second;"
                    f" sandbox lag p99 {row['sandbox_loop_lag_ms_p99']} ms",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        await sandbox.stop()
    return out


# -- command line -----------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    names = [b for b in args.backends.split(",") if b]
    backends = Backends()
    out: dict[str, Any] = {"machine": {"nproc": os.cpu_count(), "load_1m": os.getloadavg()[0]}}
    try:
        if args.what in ("claims", "all"):
            out["claims"] = await claims_table(backends, names, args.jobs)
        if args.what in ("roundtrip", "all"):
            out["roundtrip"] = await roundtrip_table(backends, names, args.errands)
        if args.what in ("calls", "all"):
            levels = [int(x) for x in args.levels.split(",") if x]
            out["calls"] = await calls_table(backends, args.calls_backend, levels, args.ramp)
    finally:
        backends.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.nodes", description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", default="all", choices=("claims", "roundtrip", "calls", "all"))
    p.add_argument("--backends", default=",".join(BACKENDS), help="sqlite,postgresql (claims, roundtrip)")
    p.add_argument("--jobs", type=int, default=1000, help="errands per claims measurement")
    p.add_argument("--errands", type=int, default=20, help="errands per round-trip measurement")
    p.add_argument("--levels", default="20,40", help="concurrent calls per 1-node / 2-node round")
    p.add_argument("--ramp", type=float, default=3.0, help="seconds over which a round's errands fall due")
    p.add_argument("--calls-backend", default="postgresql", choices=BACKENDS, help="database of the nodes")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args(argv)
    out = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
