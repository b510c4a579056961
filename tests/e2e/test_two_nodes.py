"""Two ``concierge serve`` nodes on one database: 200 errands, one node SIGKILLed mid-round.

The sandbox world (Telegram, Slack, Twilio with scripted receptionists, Deepgram,
Anthropic, Graph) runs in the test process; two ``concierge serve`` processes
(``tests/serve_proc.py``), each with its own port (so its own ``PUBLIC_BASE_URL``)
and its own ``NODE_ID``, share one PostgreSQL database. Twenty people ask for 200
errands — ten on Telegram (long-polled by whichever node holds the lock), ten on
Slack (each person's slash commands and Confirm clicks spread over both nodes, the
clicks all at once) — and each person's eleventh request must be refused: the
per-person limits are counted in the submission's transaction, across nodes.

About 60 errands reach a receptionist who offers a slot no other errand gets and
books it; the others reach a busy line three times (the per-number daily cap,
reached and never passed) and give up. As soon as node A has a call in progress,
while the people are still asking, A is SIGKILLed (``Traffic``: no chat request is
left half-handled by it); node B must take over Telegram polling, take A's errands
over only after their leases run out, ask Twilio (the sandbox) for each call's real
status before dialling again, and finish them. Short calls and a lease of 21 s keep
the run under a minute on a quiet machine.

A sampler reads the database and the sandbox Twilio every 100 ms for the whole run;
every sample must hold the global concurrency cap, one live call per number, the
per-number daily cap and the per-person limits, and the cap must be reached.
At the end: all 200 errands final, never a second call for one attempt (each
attempt's callback nonce names at most one sandbox call) nor a redial while the
errand's call was live, and every message about an errand in its own chat or thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest
from loopback import free_port
from reliability_kit import CallWatch, brisk_receptionist, job_of_call, wait_until
from serve_proc import Server, server_env

from concierge.settings import Settings
from demo.world import SandboxWorld
from sandbox import scenarios
from sandbox.twilio import Behavior, SandboxCall
from sandbox.twilio_call import FINAL_STATUSES
from storage.db import Database, format_dt, open_database
from storage.jobs import JobStore
from storage.models import Job, JobState, Platform

pytestmark = [pytest.mark.slow]

LA = ZoneInfo("America/Los_Angeles")
PACE = 4.0
PEOPLE = 20
PER_PERSON = 10
TG_USERS = [5001 + i for i in range(PEOPLE // 2)]
SLACK_USERS = [f"U0NODE{i:02d}" for i in range(PEOPLE // 2)]
CHANNEL = "CNODES"
#: Errand i talks to a receptionist when i % 10 < 3 (60 of 200); the others hear a busy line.
TALKERS_PER_TEN = 3
CAP = 16
DAILY = 3
ATTEMPTS = 3
#: Longest call (audio seconds in the sandbox, wall seconds for the session) and the lease: a
#: dead node's errands wait this long, so it is most of the run's wall time after the kill.
MAX_CALL = 20
LEASE = MAX_CALL + 1
SAMPLE_EVERY = 0.1
ACTIVE = "('dialing', 'in_call')"
UNFINISHED = "('queued', 'dialing', 'in_call')"


@dataclass(frozen=True)
class Errand:
    index: int
    person: int | str
    number: str
    business: str
    slot: datetime | None  # None: the line is busy

    @property
    def command(self) -> str:
        day = (self.slot or _first_day()).date().isoformat()
        return f"{self.number} {self.business} | haircut | {day}"


def _first_day() -> datetime:
    monday = scenarios.next_week_monday(datetime.now(LA).date())
    return datetime.combine(monday + timedelta(days=1), dtime(9, 0), LA)


def plan() -> list[Errand]:
    """Person p's k-th errand is errand p + 20k; each has its own number and, if it talks, slot.

    Then each person's eleventh (a busy line): one of the eleven is refused, the eleventh for a
    Telegram person (one draft at a time), any one for a Slack person (all clicked at once).
    """
    people: list[int | str] = [*TG_USERS, *SLACK_USERS]
    out, talkers = [], 0
    for i in range(PEOPLE * (PER_PERSON + 1)):
        person = people[i % PEOPLE]
        business = f"Shop {i:03d} of {person}"
        if i % 10 < TALKERS_PER_TEN and i < PEOPLE * PER_PERSON:
            day = _first_day() + timedelta(days=talkers // 16)
            slot = day + timedelta(minutes=30 * (talkers % 16))
            talkers += 1
            out.append(Errand(i, person, f"+1415555{7000 + i:04d}", business, slot))
        else:
            out.append(Errand(i, person, f"+1415555{8000 + i:04d}", business, None))
    return out


# -- the two nodes -----------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    port: int
    server: Server

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def node(world: SandboxWorld, name: str, url: str, tmp: Path) -> Node:
    port = free_port()
    env = server_env(
        world,
        port=port,
        database_path=tmp / "unused.db",  # replaced by database_url
        database_url=url,
        default_business_hours="daily 00:00-24:00",
        callee_local_hours="00:00-24:00",
        retry_backoff_minutes=0,
        max_concurrent_calls=CAP,
        max_attempts=ATTEMPTS,
        max_calls_per_number_per_day=DAILY,
        max_queued_per_user=PER_PERSON,
        errands_per_user_per_hour=PER_PERSON,
        max_call_seconds=MAX_CALL,
        lease_seconds=LEASE,
        silence_timeout_seconds=6.0,
        telegram_allowed_users=[str(u) for u in TG_USERS],
        slack_allowed_users=SLACK_USERS,
    )
    env["NODE_ID"] = name
    return Node(name, port, Server(env, tmp, tmp / f"{name}.log"))


# -- the people --------------------------------------------------------------------------------


class Traffic:
    """The people's chat steps: the nodes they may reach, and a pause for the kill.

    A step is one request and its visible answer (a prompt, a confirmation). A request a node was
    handling when it died is lost — Slack does not resend a slash command or a click, and a
    Telegram update is marked handled before it is handled — and a person would simply ask again;
    the test does not model that. So the kill pauses new steps, lets those under way finish, kills,
    and resumes with the dead node out of ``alive`` (as a load balancer would take it out).
    """

    def __init__(self, nodes: list[Node]) -> None:
        self.alive = list(nodes)
        self._open = asyncio.Event()
        self._open.set()
        self._under_way = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.asynccontextmanager
    async def step(self) -> AsyncIterator[None]:
        await self._open.wait()
        self._under_way += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._under_way -= 1
            if not self._under_way:
                self._idle.set()

    def url(self, k: int) -> str:
        return self.alive[k % len(self.alive)].base + "/slack/events"

    async def kill(self, dead: Node) -> None:
        self._open.clear()
        try:
            await self._idle.wait()
            await dead.server.kill()
            self.alive.remove(dead)
        finally:
            self._open.set()


async def telegram_person(
    world: SandboxWorld, traffic: Traffic, user: int, errands: list[Errand]
) -> list[str]:
    """One Telegram person: each errand in turn (a chat holds one draft), the last one too many."""
    tg, answers = world.telegram, []
    for text in [e.command for e in errands]:
        async with traffic.step():
            since = len(tg.sent)
            tg.user_message(user, user, "/call " + text)
            shown = await tg.wait_for(
                lambda s: s.chat_id == user and any(b[0] == "Confirm" for b in s.buttons), 60, since=since
            )
        confirm = next(data for label, data in shown.buttons if label == "Confirm")
        async with traffic.step():
            since = len(tg.sent)
            tg.press_button(user, user, shown.message_id, confirm)
            done = await tg.wait_for(
                lambda s, m=shown.message_id: s.message_id == m and s.method == "editMessageText",
                60,
                since=since,
            )
        answers.append(done.text or "")
    return answers


async def slack_person(world: SandboxWorld, traffic: Traffic, user: str, errands: list[Errand]) -> list[str]:
    """One Slack person: every slash command (to alternate nodes), then every Confirm at once,
    each click to the other node than its slash command (while both live)."""
    slack = world.slack
    prompts = []
    for k, e in enumerate(errands):
        async with traffic.step():
            url = traffic.url(k)
            answer = await slack.slash_command(url, text=e.command, user_id=user, channel_id=CHANNEL)
            assert answer.status == 200
            prompts.append(await slack.wait_for(lambda p, n=e.business: n in p.text and bool(p.buttons), 60))

    async def click(k: int) -> str:
        prompt = prompts[k]
        action = next(b[1] for b in prompt.buttons if b[0] == "Confirm")
        async with traffic.step():
            url = traffic.url(k + 1)
            assert (await slack.click(url, user_id=user, message=prompt, action_id=action)).status == 200
            try:
                done = await slack.wait_for(lambda p: p.method == "update" and p.ts == prompt.ts, 60)
            except TimeoutError:
                raise AssertionError(
                    f"{user}'s Confirm on {prompt.text[:40]!r} ({url}) got no answer"
                ) from None
        return done.text

    return list(await asyncio.gather(*(click(k) for k in range(len(prompts)))))


# -- the sampler -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    at: float
    active: int  # errands in dialing/in_call (the cap counts these)
    active_per_number: int  # most errands in dialing/in_call with one number
    ledger_per_number: int  # most claims of one number in the last 24 h (the calls ledger)
    unfinished_per_person: int
    created_per_person_hour: int
    live_calls: int  # sandbox calls up right now
    live_per_number: int
    calls_per_number: int  # most sandbox calls ever made to one number (the run is under 24 h)


def live(call: SandboxCall) -> bool:
    """Up in the sandbox: not final, its runner not ended, and no hang-up asked for through the
    REST API (Twilio's answer to that request already shows the call completed)."""
    return call.status not in FINAL_STATUSES and not call.done.is_set() and not call.hangup_requested.is_set()


async def sample(db: Database, world: SandboxWorld, t0: float) -> Sample:
    now = datetime.now(UTC)
    row = await db.fetchone(
        "SELECT"
        f" (SELECT COUNT(*) FROM jobs WHERE state IN {ACTIVE}),"
        f" (SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) AS n FROM jobs WHERE state IN {ACTIVE}"
        "   GROUP BY phone) a),"
        " (SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) AS n FROM calls WHERE at > ? GROUP BY phone) b),"
        f" (SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) AS n FROM jobs WHERE state IN {UNFINISHED}"
        "   GROUP BY user_id) c),"
        " (SELECT COALESCE(MAX(n), 0) FROM (SELECT COUNT(*) AS n FROM jobs WHERE created_at > ?"
        "   GROUP BY user_id) d)",
        (format_dt(now - timedelta(hours=24)), format_dt(now - timedelta(hours=1))),
    )
    assert row is not None
    calls = list(world.twilio.calls.values())
    up = [c for c in calls if live(c)]
    return Sample(
        at=time.monotonic() - t0,
        active=int(row[0]),
        active_per_number=int(row[1]),
        ledger_per_number=int(row[2]),
        unfinished_per_person=int(row[3]),
        created_per_person_hour=int(row[4]),
        live_calls=len(up),
        live_per_number=max(Counter(c.to for c in up).values(), default=0),
        calls_per_number=max(Counter(c.to for c in calls).values(), default=0),
    )


class Sampler:
    """Samples every ``SAMPLE_EVERY`` seconds until closed (its own task, owned here)."""

    def __init__(self, db: Database, world: SandboxWorld) -> None:
        self.samples: list[Sample] = []
        self._t0 = time.monotonic()
        self._db, self._world = db, world
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.samples.append(await sample(self._db, self._world, self._t0))
            await asyncio.sleep(SAMPLE_EVERY)  # the sampling period, not a wait for a condition

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


# -- the test ----------------------------------------------------------------------------------


async def test_two_nodes_share_the_queue_and_one_recovers_the_other(pg_url: str, tmp_path: Path) -> None:
    url = pg_url
    errands = plan()
    people_ids: list[int | str] = [*TG_USERS, *SLACK_USERS]
    world = await SandboxWorld(pace=PACE, base=Settings(_env_file=None)).start()  # type: ignore[call-arg]
    for e in errands:
        if e.slot is None:
            world.twilio.program(e.number, Behavior.BUSY)
        else:
            world.twilio.program(e.number, Behavior.ANSWER, brisk_receptionist(e.slot))
    watch = CallWatch(world)
    nodes = [node(world, "node-a", url, tmp_path), node(world, "node-b", url, tmp_path)]
    a, b = nodes
    db = await open_database(url)
    store = JobStore(db)
    sampler: Sampler | None = None
    t0 = time.monotonic()
    try:
        await a.server.start()  # first, so it takes the Telegram polling lock: B takes polling over
        await b.server.start()
        t_ready = time.monotonic() - t0
        sampler = Sampler(db, world)
        traffic = Traffic(nodes)
        asking = asyncio.gather(
            *(telegram_person(world, traffic, u, [e for e in errands if e.person == u]) for u in TG_USERS),
            *(slack_person(world, traffic, u, [e for e in errands if e.person == u]) for u in SLACK_USERS),
        )

        async def a_is_talking() -> bool:
            row = await db.fetchone(
                "SELECT COUNT(*) FROM jobs WHERE state = 'in_call' AND lease_owner = ?", (a.name,)
            )
            return row is not None and int(row[0]) >= 1

        await wait_until(a_is_talking, 120, "node A to have a call in progress")
        await traffic.kill(a)
        t_kill = time.monotonic() - t0
        requests_at_kill = len(world.twilio.requests)
        orphans = await store.list(states=(JobState.DIALING, JobState.IN_CALL), limit=1000)
        orphans = [j for j in orphans if j.lease_owner == a.name]
        answers = await asyncio.wait_for(asking, 240)
        t_asked = time.monotonic() - t0

        async def all_told() -> bool:
            jobs = await store.list(limit=10_000)
            return len(jobs) == len(people_ids) * PER_PERSON and all(
                j.state.is_final and j.meta.result_delivered for j in jobs
            )

        try:
            await wait_until(all_told, 240, "every errand to finish and its result to reach its thread")
        except TimeoutError:
            jobs = await store.list(limit=10_000)
            states = Counter((str(j.state), bool(j.meta.result_delivered)) for j in jobs)
            raise AssertionError(f"{states}\n{b.server.log_tail()}") from None
        t_done = time.monotonic() - t0
        await sampler.close()
        assert await b.server.terminate() == 0
        jobs = await store.list(limit=10_000)
        histories = {j.id: await store.history(j.id) for j in jobs}
    finally:
        if "asking" in locals() and not asking.done():
            asking.cancel()
            with contextlib.suppress(BaseException):
                await asking
        if sampler is not None:
            await sampler.close()
        for n in nodes:
            if n.server.proc is not None and n.server.returncode is None:
                await n.server.kill()
        await db.close()
        await watch.close()
        await world.stop()

    samples = sampler.samples
    print(
        f"\ntwo nodes: ready {t_ready:.1f} s, A killed at {t_kill:.1f} s with {len(orphans)} errand(s),"
        f" all asked by {t_asked:.1f} s, all told at {t_done:.1f} s; {len(samples)} samples,"
        f" peak active {max(s.active for s in samples)}; {len(world.twilio.calls)} calls"
    )
    by_business = {e.business: e for e in errands}

    # every person got ten errands and one refusal, whichever node took each Confirm
    for answer_list in answers:
        assert sum("Confirmed" in t for t in answer_list) == PER_PERSON, answer_list
        assert sum("limit" in t or "last hour" in t for t in answer_list) == 1, answer_list
    assert len(jobs) == len(answers) * PER_PERSON
    assert Counter(j.request.origin.user_id for j in jobs) == {str(p): PER_PERSON for p in people_ids}
    names = {j.request.business_name for j in jobs}
    assert names <= set(by_business)
    for k, p in enumerate(TG_USERS):  # a Telegram person's eleventh, asked last, was the one refused
        assert f"Shop {PEOPLE * PER_PERSON + k:03d} of {p}" not in names

    # the limits held in every sample, and the cap was reached
    for field_name, bound in (
        ("active", CAP),
        ("live_calls", CAP),
        ("active_per_number", 1),
        ("live_per_number", 1),
        ("ledger_per_number", DAILY),
        ("calls_per_number", DAILY),
        ("unfinished_per_person", PER_PERSON),
        ("created_per_person_hour", PER_PERSON),
    ):
        worst = max(samples, key=lambda s, f=field_name: getattr(s, f))
        assert getattr(worst, field_name) <= bound, (field_name, worst)
    assert max(s.active for s in samples) == CAP
    assert max(s.calls_per_number for s in samples) == DAILY  # the busy lines: three calls each

    # every errand final, as its line allows
    calls = list(world.twilio.calls.values())
    for j in jobs:
        e = by_business[j.request.business_name]
        story = "; ".join(f"{h.from_state}>{h.to_state}: {h.reason} ({h.owner})" for h in histories[j.id])
        mine = [c for c in calls if job_of_call(c) == j.id]
        assert j.state is (JobState.BOOKED if e.slot else JobState.GAVE_UP), story
        assert len(mine) <= j.attempts, story
        if e.slot:
            assert j.outcome and j.outcome.booking and j.outcome.booking.start == e.slot, story
        else:
            assert len(mine) == ATTEMPTS, story
    # never a second call for one attempt, never a redial while the errand's call was live
    per_attempt = Counter((job_of_call(c), _nonce(c)) for c in calls)
    assert max(per_attempt.values()) == 1, [k for k, n in per_attempt.items() if n > 1]
    assert not watch.overlaps, watch.overlaps
    # each call's callbacks and stream named the node whose lease placed it
    owners = {n.base: n.name for n in nodes}
    for c in calls:
        claimed_by = [h.owner for h in histories[job_of_call(c)] if str(h.to_state) == "dialing"]
        assert owners[_base(c)] in claimed_by, (c.sid, _base(c), claimed_by)
    assert {_base(c) for c in calls} == set(owners)
    # A's errands: taken over by B only after their leases ran out, each call's status fetched
    # from Twilio before any new call for that errand
    assert orphans
    after = world.twilio.requests[requests_at_kill:]
    for j in orphans:
        taken = [h for h in histories[j.id] if h.reason.startswith(f"lease taken over from {a.name}")]
        assert taken and taken[0].owner == b.name, histories[j.id]
        assert j.lease_expires_at is not None and taken[0].at >= j.lease_expires_at, (taken[0], j)
        if j.current_call_sid:
            fetched = [
                i
                for i, r in enumerate(after)
                if r[0] == "GET" and r[1].endswith(f"/{j.current_call_sid}.json")
            ]
            created = [i for i, r in enumerate(after) if r[0] == "POST" and r[1].endswith("/Calls.json")
                       and _job_of_form(r[2]) == j.id]  # fmt: skip
            assert fetched and (not created or fetched[0] < created[0]), (j.id, fetched, created)
    # every message about an errand in its own chat or thread, and its result there
    check_threads(world, jobs)


def _nonce(call: SandboxCall) -> str:
    return parse_qs(urlsplit(call.param("StatusCallback") or "").query).get("nonce", [""])[0]


def _base(call: SandboxCall) -> str:
    parts = urlsplit(call.param("StatusCallback") or "")
    return f"{parts.scheme}://{parts.netloc}"


def _job_of_form(form: dict[str, list[str]]) -> str:
    url = (form.get("StatusCallback") or [""])[0]
    return parse_qs(urlsplit(url).query).get("job", [""])[0]


def check_threads(world: SandboxWorld, jobs: list[Job]) -> None:
    """Every message naming an errand went to its own Telegram chat or Slack thread; its result too."""
    tg_sent, posted = world.telegram.sent, world.slack.posted
    for j in jobs:
        origin, name = j.request.origin, j.request.business_name
        link = j.outcome.event_link if j.outcome else None
        if origin.platform is Platform.TELEGRAM:
            naming = [s for s in tg_sent if name in (s.text or "") or name in (s.caption or "")]
            assert naming and all(s.chat_id == int(origin.chat_id) for s in naming), name
            assert not any(name in p.text for p in posted), name
            if link:
                assert any(link in (s.text or "") and s.chat_id == int(origin.chat_id) for s in tg_sent), name
        else:
            naming = [p for p in posted if name in p.text]
            assert naming and all(p.channel == origin.chat_id for p in naming), name
            assert all((p.thread_ts or p.ts) == origin.thread_id for p in naming), name
            assert not any(name in (s.text or "") for s in tg_sent), name
            if link:
                assert any(link in p.text and p.thread_ts == origin.thread_id for p in posted), name
