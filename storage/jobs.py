"""The errand queue: enqueue, claim with a lease, validated transitions, history.

Every state change is one transaction that updates the ``jobs`` row *and* appends a
``job_history`` row, so the audit trail can never disagree with the state. Claims carry
a lease (owner + expiry): two dispatchers (on any nodes) never dial the same job, and the
jobs of a dispatcher that died are found by :meth:`JobStore.expired_leases` and adopted
with :meth:`JobStore.take_over`. Lease expiry is compared against the store's injected
clock, never the database's, so tests can move time. The SQL runs on SQLite and on
PostgreSQL alike (``storage.sql`` says what each engine promises and how the limits are
kept across nodes: :data:`CLAIM_LOCK`, row locks when a job is read to be changed).
"""

from __future__ import annotations

import builtins
import json
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from storage.errors import IllegalTransition, JobNotFound, LeaseLost, UserLimitReached
from storage.models import (
    TRANSITIONS,
    CallOutcome,
    CallRequest,
    Job,
    JobMeta,
    JobState,
    Turn,
    WaitReason,
    utcnow,
)
from storage.rows import (
    JOB_COLUMNS,
    TURN_COLUMNS,
    HistoryEntry,
    dump_json,
    history_from_row,
    job_from_row,
    load_job,
    record_history,
    turn_from_row,
    turn_params,
)
from storage.sql import Database, Transaction, format_dt, parse_dt

__all__ = ["Claim", "ClaimLimits", "Deferral", "HistoryEntry", "JobStore"]

_ACTIVE = (str(JobState.DIALING), str(JobState.IN_CALL))
_ACTIVE_SQL = f"state IN ('{_ACTIVE[0]}', '{_ACTIVE[1]}')"
#: States ``cancel`` accepts: the call, if any, has not been answered yet.
_CANCELLABLE = frozenset({JobState.QUEUED, JobState.DIALING, JobState.NEEDS_USER})
_ID_ATTEMPTS = 20
_UNFINISHED_SQL = "state IN ('queued', 'dialing', 'in_call')"
#: Held-back jobs one claim may re-plan on top of the ones it claims (keeps the write lock short).
_HELD_BACK_PER_CLAIM = 50
#: The lock every transaction that may change the count of live calls takes first (``Transaction.lock``).
CLAIM_LOCK = "claim"
#: The window of ``ClaimLimits.calls_per_number_per_day``: rolling, not calendar days.
DAY = timedelta(hours=24)


@dataclass(frozen=True)
class ClaimLimits:
    """What one :meth:`JobStore.claim` may take; ``None`` means no such limit.

    Every limit is checked inside the claim's own transaction, so any number of
    dispatchers (in any number of processes) sharing the database hold them together.

    Attributes:
        batch: at most this many jobs in this claim.
        max_active: at most this many jobs in dialing/in_call afterwards, across all owners.
        one_call_per_number: never two jobs with the same number in dialing/in_call.
        calls_per_number_per_day: at most this many claims per number in any 24 hours
            (the ``calls`` ledger; claims given back with ``unclaim`` do not count).
        number_busy_retry: how far a job is put back when its number has a live call
            (when that call ends is unknown; the job must not be looked at again at once).
    """

    batch: int | None = None
    max_active: int | None = None
    one_call_per_number: bool = False
    calls_per_number_per_day: int | None = None
    number_busy_retry: timedelta = timedelta(minutes=5)


@dataclass(frozen=True)
class Deferral:
    """A due job a per-number limit kept from being claimed: still queued, due later.

    Attributes:
        job: the job as stored now (``next_attempt_at`` is when the limit frees,
            ``meta.waiting_for`` says which limit).
        reason: which limit.
    """

    job: Job
    reason: WaitReason


@dataclass(frozen=True)
class Claim:
    """What one :meth:`JobStore.claim` did.

    Attributes:
        jobs: the jobs now leased to the claimer, in dialing.
        deferred: due jobs re-planned for a per-number limit.
        at_cap: ``ClaimLimits.max_active`` is reached (nothing more can be claimed until a call ends).
    """

    jobs: list[Job]
    deferred: list[Deferral]
    at_cap: bool


def new_job_id() -> str:
    """8 lowercase hex characters: short enough to type back in a chat."""
    return secrets.token_hex(4)


class JobStore:
    """The queue over one :class:`~storage.db.Database`.

    Args:
        db: an open database; the store does not close it.
        clock: returns the current aware UTC time; tests pass a fake one.
    """

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self._db = db
        self._clock = clock

    def _now(self) -> str:
        return format_dt(self._clock())

    def _later(self, seconds: float) -> str:
        return format_dt(self._clock() + timedelta(seconds=seconds))

    # -- reading -----------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        """The job with this id.

        Raises:
            JobNotFound: no such job.
        """
        row = await self._db.fetchone(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise JobNotFound(f"no errand with id {job_id!r}")
        return job_from_row(row)

    async def list(
        self,
        *,
        states: Iterable[JobState] | None = None,
        user_id: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Job]:
        """Jobs newest first, optionally only some states and one chat user.

        Args:
            states: keep only these states (``None`` = all).
            user_id: keep only errands whose ``request.origin.user_id`` is this.
            limit: at most this many.
        """
        where: list[str] = []
        params: list[Any] = []
        if states is not None:
            wanted = [str(s) for s in states]
            if not wanted:
                return []
            where.append(f"state IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        sql = f"SELECT {JOB_COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        rows = await self._db.fetchall(sql, (*params, limit))
        return [job_from_row(r) for r in rows]

    async def next_due_at(self) -> datetime | None:
        """Earliest ``next_attempt_at`` of the queued jobs, so a timer knows how long to sleep."""
        row = await self._db.fetchone("SELECT MIN(next_attempt_at) FROM jobs WHERE state = 'queued'")
        if row is None or row[0] is None:
            return None
        return parse_dt(row[0])

    async def find_by_call_sid(self, call_sid: str) -> Job | None:
        """The job a Twilio call belongs to (status callbacks carry only the CallSid)."""
        row = await self._db.fetchone(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE call_sid = ? ORDER BY updated_at DESC LIMIT 1",
            (call_sid,),
        )
        return job_from_row(row) if row is not None else None

    async def count_active(self) -> int:
        """Jobs in dialing or in_call: the number of calls that may be live (concurrency cap)."""
        row = await self._db.fetchone(f"SELECT COUNT(*) FROM jobs WHERE {_ACTIVE_SQL}")
        return int(row[0]) if row is not None else 0

    async def expired_leases(self) -> builtins.list[Job]:
        """Active jobs whose lease has run out (or that never had one): crash-recovery candidates."""
        rows = await self._db.fetchall(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE {_ACTIVE_SQL}"
            " AND (lease_expires_at IS NULL OR lease_expires_at <= ?) ORDER BY lease_expires_at",
            (self._now(),),
        )
        return [job_from_row(r) for r in rows]

    async def history(self, job_id: str) -> builtins.list[HistoryEntry]:
        """Every recorded change of the job, oldest first.

        Raises:
            JobNotFound: no such job.
        """
        await self.get(job_id)
        rows = await self._db.fetchall(
            "SELECT at, from_state, to_state, reason, owner FROM job_history WHERE job_id = ? ORDER BY seq",
            (job_id,),
        )
        return [history_from_row(r) for r in rows]

    async def turns(self, job_id: str, attempt: int | None = None) -> builtins.list[Turn]:
        """Transcript turns (with latency) of one attempt, or of all attempts in order."""
        sql = f"SELECT {TURN_COLUMNS} FROM turns WHERE job_id = ?"
        params: tuple[Any, ...] = (job_id,)
        if attempt is not None:
            sql += " AND attempt = ?"
            params = (job_id, attempt)
        rows = await self._db.fetchall(sql + " ORDER BY attempt, idx", params)
        return [turn_from_row(r) for r in rows]

    # -- writing -----------------------------------------------------------

    async def enqueue(
        self,
        request: CallRequest,
        *,
        due_at: datetime,
        max_attempts: int,
        meta: JobMeta | None = None,
    ) -> Job:
        """Store a new errand in ``queued``, due at ``due_at``.

        Raises:
            ValueError: ``max_attempts`` < 1 or a naive ``due_at``.
        """
        async with self._db.transaction() as tx:
            return await self._insert(tx, request, due_at=due_at, max_attempts=max_attempts, meta=meta)

    async def _insert(
        self,
        tx: Transaction,
        request: CallRequest,
        *,
        due_at: datetime,
        max_attempts: int,
        meta: JobMeta | None,
    ) -> Job:
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        now = self._now()
        due = format_dt(due_at)
        job_id = await self._free_id(tx)
        await tx.execute(
            "INSERT INTO jobs (id, state, request, user_id, phone, attempts, max_attempts,"
            " next_attempt_at, created_at, updated_at, meta)"
            " VALUES (?, 'queued', ?, ?, ?, 0, ?, ?, ?, ?, ?)",
            (
                job_id,
                dump_json(request.to_dict()),
                request.origin.user_id,
                request.phone,
                max_attempts,
                due,
                now,
                now,
                dump_json((meta or JobMeta()).to_dict()),
            ),
        )
        await record_history(tx, job_id, now, None, JobState.QUEUED, "enqueued", None)
        return await load_job(tx, job_id)

    async def enqueue_checked(
        self,
        request: CallRequest,
        *,
        due_at: datetime,
        max_attempts: int,
        max_unfinished: int,
        max_per_hour: int,
    ) -> Job:
        """:meth:`enqueue`, unless the person (``request.origin.user_id``) is at a limit.

        The counts and the insert are one transaction, so two submissions at once
        (two chat handlers, two processes) cannot both pass the last free place.

        Args:
            max_unfinished: errands the person may have queued, dialing or in a call.
            max_per_hour: errands the person may submit in any hour.

        Raises:
            UserLimitReached: ``limit`` says which.
            ValueError: ``max_attempts`` < 1 or a naive ``due_at``.
        """
        user = request.origin.user_id
        hour_ago = format_dt(self._clock() - timedelta(hours=1))
        async with self._db.transaction() as tx:
            # Counting then inserting: two submissions by one person (any nodes) take turns.
            await tx.lock(f"user:{user}")
            unfinished = await _count(
                tx, f"SELECT COUNT(*) FROM jobs WHERE user_id = ? AND {_UNFINISHED_SQL}", (user,)
            )
            if unfinished >= max_unfinished:
                raise UserLimitReached("unfinished", allowed=max_unfinished, count=unfinished)
            recent = await _count(
                tx, "SELECT COUNT(*) FROM jobs WHERE user_id = ? AND created_at > ?", (user, hour_ago)
            )
            if recent >= max_per_hour:
                raise UserLimitReached("per_hour", allowed=max_per_hour, count=recent)
            return await self._insert(tx, request, due_at=due_at, max_attempts=max_attempts, meta=None)

    async def claim_due(self, owner: str, *, limit: int, lease_seconds: float) -> builtins.list[Job]:
        """Lease up to ``limit`` due queued jobs to ``owner`` with no other limit (see :meth:`claim`)."""
        claim = await self.claim(owner, lease_seconds=lease_seconds, limits=ClaimLimits(batch=limit))
        return claim.jobs

    async def claim(
        self,
        owner: str,
        *,
        lease_seconds: float,
        limits: ClaimLimits,
        plan: Callable[[CallRequest, datetime], datetime | None] | None = None,
    ) -> Claim:
        """Lease due queued jobs to ``owner`` and move them to dialing, within ``limits``.

        Selection, the limit counts and the updates happen in one ``BEGIN
        IMMEDIATE`` transaction, so concurrent claimers (other connections, other
        processes) each get disjoint jobs and together never exceed a limit.
        Earliest due first. A due job that a per-number limit holds back stays
        queued and is re-planned to when the limit frees (with a history row and
        ``JobMeta.waiting_for``), so no claimer looks at it again before then.

        Args:
            plan: the first instant at or after the given one the errand may be called
                (e.g. its business's next opening), applied to a re-planned time so the
                person is told a time a call can really happen; ``None`` keeps the time.
        """
        now_dt = self._clock()
        now = format_dt(now_dt)
        expires = self._later(lease_seconds)
        claimed: list[str] = []
        deferred: list[tuple[str, WaitReason]] = []
        async with self._db.transaction() as tx:
            # Every limit below counts rows across jobs: claimers on every node take turns here.
            await tx.lock(CLAIM_LOCK)
            room = limits.batch if limits.batch is not None else 1 << 62
            active = 0
            if limits.max_active is not None:
                active = await _count(tx, f"SELECT COUNT(*) FROM jobs WHERE {_ACTIVE_SQL}")
                room = min(room, limits.max_active - active)
            busy: set[str] = set()
            if limits.one_call_per_number:
                rows = await tx.fetchall(f"SELECT DISTINCT phone FROM jobs WHERE {_ACTIVE_SQL}")
                busy = {r["phone"] for r in rows}
            # Enough candidates to fill the room past a run of held-back ones; any left over are
            # looked at by the next claim (the claimer goes round again after deferring).
            due = (
                await tx.fetchall(
                    "SELECT id, phone, meta FROM jobs WHERE state = 'queued' AND next_attempt_at <= ?"
                    f" ORDER BY next_attempt_at, rowid LIMIT ?{tx.skip_locked}",
                    (now, min(room, 1 << 20) + _HELD_BACK_PER_CLAIM),
                )
                if room > 0
                else []
            )
            for row in due:
                if len(claimed) >= room:
                    break
                job_id, phone, meta = row["id"], row["phone"], json.loads(row["meta"])
                held = await _held_back(tx, phone, busy, now_dt, limits)
                if held is not None:
                    until, why, detail = held
                    if plan is not None:
                        request = await tx.fetchone("SELECT request FROM jobs WHERE id = ?", (job_id,))
                        assert request is not None
                        until = plan(CallRequest.from_dict(json.loads(request[0])), until) or until
                    await _defer(tx, job_id, meta, now, until, why, detail)
                    deferred.append((job_id, why))
                    continue
                meta.pop("waiting_for", None)
                await tx.execute(
                    "UPDATE jobs SET state = 'dialing', attempts = attempts + 1, lease_owner = ?,"
                    " lease_expires_at = ?, updated_at = ?, meta = ? WHERE id = ?",
                    (owner, expires, now, dump_json(meta), job_id),
                )
                await record_history(tx, job_id, now, JobState.QUEUED, JobState.DIALING, "claimed", owner)
                await _log_call(tx, job_id, now)
                claimed.append(job_id)
                busy.add(phone)
            at_cap = limits.max_active is not None and active + len(claimed) >= limits.max_active
            return Claim(
                jobs=[await load_job(tx, job_id) for job_id in claimed],
                deferred=[Deferral(await load_job(tx, job_id), why) for job_id, why in deferred],
                at_cap=at_cap,
            )

    async def transition(
        self,
        job_id: str,
        to: JobState,
        *,
        owner: str | None = None,
        reason: str = "",
        outcome: CallOutcome | None = None,
        next_attempt_at: datetime | None = None,
    ) -> Job:
        """Move a job to ``to`` and record why, in one transaction.

        Entering dialing counts an attempt. Leaving dialing/in_call for any
        other state releases the lease. ``outcome`` and ``next_attempt_at``
        replace the stored values when given.

        Args:
            owner: when given, the caller must hold the job's lease.

        Raises:
            JobNotFound: no such job.
            LeaseLost: ``owner`` does not hold the lease (e.g. it was taken over).
            IllegalTransition: ``storage.models.TRANSITIONS`` forbids the change.
        """
        now = self._now()
        async with self._db.transaction() as tx:
            job = await load_job(tx, job_id)
            if owner is not None and job.lease_owner != owner:
                raise LeaseLost(f"errand {job_id}: lease held by {job.lease_owner!r}, not {owner!r}")
            if to not in TRANSITIONS[job.state]:
                raise IllegalTransition(f"errand {job_id}: {job.state} → {to} is not allowed")
            await self._apply(tx, job, to, now, owner, reason, outcome, next_attempt_at)
            return await load_job(tx, job_id)

    async def cancel(self, job_id: str, *, reason: str = "cancelled by user") -> Job:
        """Cancel an errand whose call has not been answered (queued, dialing, needs_user).

        Raises:
            JobNotFound: no such job.
            IllegalTransition: the call is in progress or the errand is already over.
        """
        now = self._now()
        async with self._db.transaction() as tx:
            job = await load_job(tx, job_id)
            if job.state not in _CANCELLABLE or JobState.CANCELLED not in TRANSITIONS[job.state]:
                raise IllegalTransition(f"errand {job_id}: {job.state} → cancelled is not allowed")
            await self._apply(tx, job, JobState.CANCELLED, now, None, reason, None, None)
            return await load_job(tx, job_id)

    async def _apply(
        self,
        tx: Transaction,
        job: Job,
        to: JobState,
        now: str,
        owner: str | None,
        reason: str,
        outcome: CallOutcome | None,
        next_attempt_at: datetime | None,
    ) -> None:
        sets = ["state = ?", "updated_at = ?"]
        params: list[Any] = [str(to), now]
        if to is JobState.DIALING:
            sets.append("attempts = attempts + 1")
        if job.state.is_active and not to.is_active:
            sets.append("lease_owner = NULL, lease_expires_at = NULL")
        if outcome is not None:
            sets.append("outcome = ?")
            params.append(dump_json(outcome.to_dict()))
        if next_attempt_at is not None:
            sets.append("next_attempt_at = ?")
            params.append(format_dt(next_attempt_at))
        await tx.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*params, job.id))
        await record_history(tx, job.id, now, job.state, to, reason, owner)
        if to is JobState.DIALING:
            await _log_call(tx, job.id, now)

    async def unclaim(self, job_id: str, owner: str, *, reason: str, next_attempt_at: datetime) -> Job:
        """The claim ended without a call: back to queued, due at ``next_attempt_at``.

        In one transaction the attempt is marked uncounted (``JobMeta.uncounted_attempts``,
        so it does not use up the retry budget) and removed from the number's call
        ledger (so it does not count against the number's daily calls).

        Raises:
            JobNotFound: no such job.
            LeaseLost: ``owner`` does not hold the lease.
            IllegalTransition: the job is not dialing.
        """
        now = self._now()
        async with self._db.transaction() as tx:
            job = await load_job(tx, job_id)
            if job.state is not JobState.DIALING:
                raise IllegalTransition(f"errand {job_id}: {job.state} → queued is not a claim given back")
            if job.lease_owner != owner:
                raise LeaseLost(f"errand {job_id}: lease held by {job.lease_owner!r}, not {owner!r}")
            await self._apply(tx, job, JobState.QUEUED, now, owner, reason, None, next_attempt_at)
            meta = job.meta.changed(uncounted_attempts=job.meta.uncounted_attempts + 1)
            await tx.execute("UPDATE jobs SET meta = ? WHERE id = ?", (dump_json(meta.to_dict()), job_id))
            await tx.execute("DELETE FROM calls WHERE job_id = ? AND attempt = ?", (job_id, job.attempts))
            return await load_job(tx, job_id)

    async def receive_call(
        self, phone: str, call_sid: str, *, owner: str, lease_seconds: float, token_sha256: str
    ) -> Job | None:
        """The business at ``phone`` is calling us: its open errand goes straight to in_call.

        The errand is the most recently created one to ``phone`` that is queued or
        needs_user (ties on the creation time: the later inserted). Errands being
        dialled or in a call right now are left alone: that number is already on the
        line with us. In one transaction the errand moves to in_call under ``owner``'s
        lease (so no claim dials it while the call is live, and recovery sees whose call
        it is), counts a new attempt that does not use up the retry budget (we placed no
        call) and is not put in the number's call ledger, and records the call's CallSid
        and stream token. ``None``: no open errand to that number.
        """
        now = self._now()
        async with self._db.transaction() as tx:
            # A job entering in_call counts against the claim limits: take the claimers' turn.
            await tx.lock(CLAIM_LOCK)
            row = await tx.fetchone(
                "SELECT id FROM jobs WHERE phone = ? AND state IN ('queued', 'needs_user')"
                f" ORDER BY created_at DESC, rowid DESC LIMIT 1{tx.for_update}",
                (phone,),
            )
            if row is None:
                return None
            job = await load_job(tx, row["id"])
            meta = job.meta.changed(
                uncounted_attempts=job.meta.uncounted_attempts + 1,
                call_sid_attempt=job.attempts + 1,
                stream_token_sha256=token_sha256,
                inbound_call_sid=call_sid,
                waiting_for=None,
            )
            await tx.execute(
                "UPDATE jobs SET state = 'in_call', attempts = attempts + 1, lease_owner = ?,"
                " lease_expires_at = ?, call_sid = ?, meta = ?, updated_at = ? WHERE id = ?",
                (owner, self._later(lease_seconds), call_sid, dump_json(meta.to_dict()), now, job.id),
            )
            await record_history(
                tx, job.id, now, job.state, JobState.IN_CALL, "the business called back", owner
            )
            return await load_job(tx, job.id)

    async def set_call_sid(self, job_id: str, call_sid: str) -> Job:
        """Remember the Twilio call placed for the job's *current* attempt (``Job.current_call_sid``).

        The column and the attempt it belongs to are written together, so the
        webhooks (which match Twilio's callbacks against ``Job.call_sid``) and
        crash recovery always agree on which attempt the call was.

        Raises:
            JobNotFound: no such job.
        """
        async with self._db.transaction() as tx:
            job = await load_job(tx, job_id)
            meta = job.meta.changed(call_sid_attempt=job.attempts)
            await tx.execute(
                "UPDATE jobs SET call_sid = ?, meta = ?, updated_at = ? WHERE id = ?",
                (call_sid, dump_json(meta.to_dict()), self._now(), job_id),
            )
            return await load_job(tx, job_id)

    async def update_meta(self, job_id: str, **values: Any) -> Job:
        """Change the named ``JobMeta`` fields (the others, and unknown stored keys, are kept).

        Read and write are one transaction, so concurrent updates of different
        fields never undo each other.

        Raises:
            JobNotFound: no such job.
            TypeError: a name is not a ``JobMeta`` field.
        """
        async with self._db.transaction() as tx:
            job = await load_job(tx, job_id)
            meta = job.meta.changed(**values)
            await tx.execute(
                "UPDATE jobs SET meta = ?, updated_at = ? WHERE id = ?",
                (dump_json(meta.to_dict()), self._now(), job_id),
            )
            return await load_job(tx, job_id)

    async def update_meta_if(
        self, job_id: str, when: Callable[[JobMeta], bool], **values: Any
    ) -> Job | None:
        """:meth:`update_meta`, only if ``when(meta)`` holds for the meta as stored now.

        A compare-and-set across nodes: the test and the write are one transaction with
        the row locked, so of several callers racing for the same change exactly one
        sees ``when`` hold. ``None``: it did not hold, nothing was written.

        Raises:
            JobNotFound: no such job.
            TypeError: a name is not a ``JobMeta`` field.
        """
        async with self._db.transaction() as tx:
            job = await load_job(tx, job_id)
            if not when(job.meta):
                return None
            meta = job.meta.changed(**values)
            await tx.execute(
                "UPDATE jobs SET meta = ?, updated_at = ? WHERE id = ?",
                (dump_json(meta.to_dict()), self._now(), job_id),
            )
            return await load_job(tx, job_id)

    async def renew_lease(self, job_id: str, owner: str, lease_seconds: float) -> Job:
        """Extend ``owner``'s lease to now + ``lease_seconds`` (long calls renew periodically).

        Raises:
            LeaseLost: ``owner`` no longer holds the lease or the job is not active.
        """
        async with self._db.transaction() as tx:
            job = await load_job(tx, job_id)
            if job.lease_owner != owner or not job.state.is_active:
                raise LeaseLost(f"errand {job_id}: lease held by {job.lease_owner!r}, not {owner!r}")
            await tx.execute(
                "UPDATE jobs SET lease_expires_at = ?, updated_at = ? WHERE id = ?",
                (self._later(lease_seconds), self._now(), job_id),
            )
            return await load_job(tx, job_id)

    async def take_over(self, job_id: str, owner: str, lease_seconds: float) -> Job | None:
        """Adopt an active job whose lease expired; ``None`` if the lease still holds.

        The check and the update are one transaction, so among competing
        dispatchers exactly one wins. The state is unchanged: the new owner
        must reconcile with Twilio before deciding anything.

        Raises:
            JobNotFound: no such job.
        """
        now = self._now()
        async with self._db.transaction() as tx:
            job = await load_job(tx, job_id)
            changed = await tx.execute(
                f"UPDATE jobs SET lease_owner = ?, lease_expires_at = ?, updated_at = ? WHERE id = ?"
                f" AND {_ACTIVE_SQL} AND (lease_expires_at IS NULL OR lease_expires_at <= ?)",
                (owner, self._later(lease_seconds), now, job_id, now),
            )
            if changed != 1:
                return None
            reason = f"lease taken over from {job.lease_owner or 'nobody'}"
            await record_history(tx, job_id, now, job.state, job.state, reason, owner)
            return await load_job(tx, job_id)

    async def add_turns(self, job_id: str, attempt: int, turns: Sequence[Turn]) -> None:
        """Append transcript turns of one attempt after any already stored for it.

        Raises:
            JobNotFound: no such job.
        """
        async with self._db.transaction() as tx:
            await load_job(tx, job_id)
            row = await tx.fetchone(
                "SELECT COALESCE(MAX(idx), -1) FROM turns WHERE job_id = ? AND attempt = ?",
                (job_id, attempt),
            )
            start = int(row[0]) + 1 if row is not None else 0
            await tx.executemany(
                f"INSERT INTO turns (job_id, attempt, idx, {TURN_COLUMNS}) VALUES ({', '.join('?' * 14)})",
                [turn_params(job_id, attempt, start + i, t) for i, t in enumerate(turns)],
            )

    async def _free_id(self, tx: Transaction) -> str:
        for _ in range(_ID_ATTEMPTS):
            job_id = new_job_id()
            if await tx.fetchone("SELECT 1 FROM jobs WHERE id = ?", (job_id,)) is None:
                return job_id
        raise RuntimeError(f"no free job id after {_ID_ATTEMPTS} tries")  # 2**32 ids: practically never


async def _log_call(tx: Transaction, job_id: str, now: str) -> None:
    """Enter the claim just made (the job's new attempt) in its number's call ledger."""
    await tx.execute(
        "INSERT INTO calls (job_id, attempt, phone, at) SELECT id, attempts, phone, ? FROM jobs WHERE id = ?"
        " ON CONFLICT (job_id, attempt) DO UPDATE SET phone = excluded.phone, at = excluded.at",
        (now, job_id),
    )


async def _count(tx: Transaction, sql: str, params: Sequence[Any] = ()) -> int:
    row = await tx.fetchone(sql, params)
    return int(row[0]) if row is not None else 0


async def _held_back(
    tx: Transaction, phone: str, busy: set[str], now: datetime, limits: ClaimLimits
) -> tuple[datetime, WaitReason, str] | None:
    """Whether a per-number limit holds a due job back: until when, which limit, and in words."""
    if limits.one_call_per_number and phone in busy:
        why = "another errand's call to this number is live"
        return now + limits.number_busy_retry, WaitReason.NUMBER_IN_CALL, why
    if limits.calls_per_number_per_day is not None:
        per_day = limits.calls_per_number_per_day
        frees = await _daily_limit_frees(tx, phone, now, per_day)
        if frees is not None:
            return frees, WaitReason.NUMBER_DAILY_LIMIT, f"{per_day} calls to this number in 24 h"
    return None


async def _daily_limit_frees(tx: Transaction, phone: str, now: datetime, per_day: int) -> datetime | None:
    """When the number may be called again, or ``None`` if it may be now (fewer than ``per_day``
    ledger entries in the last 24 h). The limit frees when enough of those entries age out."""
    rows = await tx.fetchall(
        "SELECT at FROM calls WHERE phone = ? AND at > ? ORDER BY at", (phone, format_dt(now - DAY))
    )
    if len(rows) < per_day:
        return None
    return parse_dt(rows[len(rows) - per_day]["at"]) + DAY


async def _defer(
    tx: Transaction,
    job_id: str,
    meta: dict[str, Any],
    now: str,
    until: datetime,
    why: WaitReason,
    detail: str,
) -> None:
    """Keep a due job queued until ``until``, saying why (history and ``JobMeta.waiting_for``).

    ``meta`` is the job's stored meta as read in this transaction (the row is locked);
    unknown keys are kept.
    """
    await tx.execute(
        "UPDATE jobs SET next_attempt_at = ?, updated_at = ?, meta = ? WHERE id = ?",
        (format_dt(until), now, dump_json({**meta, "waiting_for": str(why)}), job_id),
    )
    reason = f"waiting: {detail}; next try at {format_dt(until)}"
    await record_history(tx, job_id, now, JobState.QUEUED, JobState.QUEUED, reason, None)
