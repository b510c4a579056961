"""Row ⇄ domain object conversion for the queue tables.

Kept apart from ``storage.jobs`` so the queue logic reads as queue logic; the
JSON columns (request, outcome, meta) use the models' own ``to_dict`` /
``from_dict`` so the stored shape is the one every layer already knows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage.errors import JobNotFound
from storage.models import CallOutcome, CallRequest, Job, JobMeta, JobState, Speaker, Turn, TurnLatency
from storage.sql import Row, Transaction, parse_dt

#: Column list for every ``SELECT`` that builds a :class:`Job`.
JOB_COLUMNS = (
    "id, state, request, attempts, max_attempts, next_attempt_at, created_at, updated_at, "
    "lease_owner, lease_expires_at, call_sid, outcome, meta"
)

TURN_COLUMNS = (
    "speaker, text, at, interrupted, has_latency, speech_end, stt_final, llm_first_token, "
    "tts_first_byte, first_audio_out, barge_in_ms"
)


@dataclass(frozen=True)
class HistoryEntry:
    """One row of the append-only ``job_history`` table.

    Attributes:
        at: when the change happened (aware UTC).
        from_state: state before; ``None`` for the enqueue row.
        to_state: state after (equal to ``from_state`` for a lease take-over).
        reason: free text for people reading the audit trail.
        owner: the dispatcher that made the change, if any.
    """

    at: datetime
    from_state: JobState | None
    to_state: JobState
    reason: str
    owner: str | None


def dump_json(value: Any) -> str:
    """Compact, key-sorted JSON so equal values store as equal text."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def job_from_row(row: Row) -> Job:
    """Build a :class:`Job` from a row selected with :data:`JOB_COLUMNS`."""
    outcome = row["outcome"]
    lease_expires = row["lease_expires_at"]
    return Job(
        id=row["id"],
        request=CallRequest.from_dict(json.loads(row["request"])),
        state=JobState(row["state"]),
        attempts=int(row["attempts"]),
        max_attempts=int(row["max_attempts"]),
        next_attempt_at=parse_dt(row["next_attempt_at"]),
        created_at=parse_dt(row["created_at"]),
        updated_at=parse_dt(row["updated_at"]),
        lease_owner=row["lease_owner"],
        lease_expires_at=parse_dt(lease_expires) if lease_expires else None,
        call_sid=row["call_sid"],
        outcome=CallOutcome.from_dict(json.loads(outcome)) if outcome else None,
        meta=JobMeta.from_dict(json.loads(row["meta"])),
    )


def history_from_row(row: Row) -> HistoryEntry:
    """Build a :class:`HistoryEntry` from a ``job_history`` row."""
    from_state = row["from_state"]
    return HistoryEntry(
        at=parse_dt(row["at"]),
        from_state=JobState(from_state) if from_state is not None else None,
        to_state=JobState(row["to_state"]),
        reason=row["reason"],
        owner=row["owner"],
    )


def turn_params(job_id: str, attempt: int, idx: int, turn: Turn) -> tuple[Any, ...]:
    """Insert parameters for one turn (``job_id, attempt, idx`` + :data:`TURN_COLUMNS`).

    ``has_latency`` tells "no latency recorded" apart from "a latency record
    whose timestamps are all missing", so the round trip is exact.
    """
    lat = turn.latency
    return (
        job_id,
        attempt,
        idx,
        str(turn.speaker),
        turn.text,
        float(turn.at),
        int(turn.interrupted),
        int(lat is not None),
        lat.speech_end if lat else None,
        lat.stt_final if lat else None,
        lat.llm_first_token if lat else None,
        lat.tts_first_byte if lat else None,
        lat.first_audio_out if lat else None,
        lat.barge_in_ms if lat else None,
    )


def turn_from_row(row: Row) -> Turn:
    """Build a :class:`Turn` from a row selected with :data:`TURN_COLUMNS`."""
    latency = None
    if row["has_latency"]:
        latency = TurnLatency(
            speech_end=row["speech_end"],
            stt_final=row["stt_final"],
            llm_first_token=row["llm_first_token"],
            tts_first_byte=row["tts_first_byte"],
            first_audio_out=row["first_audio_out"],
            barge_in_ms=row["barge_in_ms"],
        )
    return Turn(
        speaker=Speaker(row["speaker"]),
        text=row["text"],
        at=float(row["at"]),
        interrupted=bool(row["interrupted"]),
        latency=latency,
    )


async def load_job(tx: Transaction, job_id: str) -> Job:
    """Read one job inside a transaction (so the caller decides on current data), locking its row.

    Raises:
        JobNotFound: no such job.
    """
    row = await tx.fetchone(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?{tx.for_update}", (job_id,))
    if row is None:
        raise JobNotFound(f"no errand with id {job_id!r}")
    return job_from_row(row)


async def record_history(
    tx: Transaction,
    job_id: str,
    at: str,
    from_state: JobState | None,
    to_state: JobState,
    reason: str,
    owner: str | None,
) -> None:
    """Append one ``job_history`` row; call it in the transaction that changes the job."""
    await tx.execute(
        "INSERT INTO job_history (job_id, at, from_state, to_state, reason, owner) VALUES (?, ?, ?, ?, ?, ?)",
        (job_id, at, str(from_state) if from_state is not None else None, str(to_state), reason, owner),
    )
