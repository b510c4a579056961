"""Domain dataclasses shared by every layer.

They are plain frozen dataclasses with explicit ``to_dict`` / ``from_dict`` so
the queue can store them as JSON and every layer can import them without
pulling in I/O. Datetimes are always timezone-aware; ``Job`` times are UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, date, datetime, time
from enum import StrEnum
from typing import Any


class Platform(StrEnum):
    """Where an errand came from (and where its results go)."""

    TELEGRAM = "telegram"
    SLACK = "slack"
    CLI = "cli"


@dataclass(frozen=True)
class ChatOrigin:
    """The chat place an errand came from, so every reply lands in the same thread.

    Attributes:
        platform: telegram / slack / cli.
        chat_id: Telegram chat id or Slack channel id.
        user_id: Telegram user id or Slack user id of the person.
        thread_id: Telegram forum ``message_thread_id`` or Slack parent ``thread_ts``.
        message_id: the person's message (Telegram) to reply to, if any.
        team_id: Slack team (workspace) id, if any.
    """

    platform: Platform
    chat_id: str
    user_id: str
    thread_id: str | None = None
    message_id: str | None = None
    team_id: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChatOrigin:
        return cls(**{**d, "platform": Platform(d["platform"])})


@dataclass(frozen=True)
class BookingWindow:
    """When the person would accept the appointment, in the person's time zone.

    Attributes:
        start_date: first acceptable day (inclusive).
        end_date: last acceptable day (inclusive).
        earliest: earliest start time of day.
        latest: latest *end* time of day.
        duration_minutes: how long the appointment takes.
    """

    start_date: date
    end_date: date
    earliest: time = time(9, 0)
    latest: time = time(18, 0)
    duration_minutes: int = 30

    def to_dict(self) -> dict[str, Any]:
        return {
            "start_date": self.start_date.isoformat(),
            "end_date": self.end_date.isoformat(),
            "earliest": self.earliest.isoformat("minutes"),
            "latest": self.latest.isoformat("minutes"),
            "duration_minutes": self.duration_minutes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BookingWindow:
        return cls(
            start_date=date.fromisoformat(d["start_date"]),
            end_date=date.fromisoformat(d["end_date"]),
            earliest=time.fromisoformat(d["earliest"]),
            latest=time.fromisoformat(d["latest"]),
            duration_minutes=int(d["duration_minutes"]),
        )


@dataclass(frozen=True)
class CallRequest:
    """A validated errand: whom to call, what to book, and when it may be.

    Attributes:
        business_name: e.g. "Joe's Barbershop".
        phone: E.164 number, e.g. "+14155550100".
        business_tz: IANA zone of the business, e.g. "America/Los_Angeles".
        service: what to book, e.g. "haircut".
        person_name: whom the booking is for.
        person_tz: IANA zone of the person; ``window`` is expressed in it.
        window: acceptable dates, times of day and duration.
        origin: chat place to report back to.
        notes: anything else the person said ("ask for Sam").
        opening_hours: opening-hours spec (see ``concierge.hours.parse_weekly``)
            overriding the default; ``None`` uses settings.
    """

    business_name: str
    phone: str
    business_tz: str
    service: str
    person_name: str
    person_tz: str
    window: BookingWindow
    origin: ChatOrigin
    notes: str = ""
    opening_hours: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = self.window.to_dict()
        d["origin"] = {**asdict(self.origin), "platform": str(self.origin.platform)}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CallRequest:
        return cls(
            **{
                **d,
                "window": BookingWindow.from_dict(d["window"]),
                "origin": ChatOrigin.from_dict(d["origin"]),
            }
        )


class JobState(StrEnum):
    """States of an errand; transitions are validated by ``storage.jobs``."""

    QUEUED = "queued"
    DIALING = "dialing"
    IN_CALL = "in_call"
    BOOKED = "booked"
    DECLINED = "declined"
    NEEDS_USER = "needs_user"
    FAILED = "failed"
    GAVE_UP = "gave_up"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    @property
    def is_active(self) -> bool:
        """A call is (or may be) live for the job."""
        return self in (JobState.DIALING, JobState.IN_CALL)


FINAL_STATES = frozenset(
    {
        JobState.BOOKED,
        JobState.DECLINED,
        JobState.NEEDS_USER,
        JobState.FAILED,
        JobState.GAVE_UP,
        JobState.CANCELLED,
    }
)

#: Legal transitions (docs/ARCHITECTURE.md, "The errand's states"). ``needs_user`` may be
#: re-queued once the person answers the question. queued / needs_user → in_call: the business
#: called us back (``JobStore.receive_call``); no dial happens, so dialing is skipped.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # → DECLINED: the number opted out on another errand (``OPTED_OUT_STATE``).
    JobState.QUEUED: frozenset(
        {JobState.DIALING, JobState.IN_CALL, JobState.CANCELLED, JobState.FAILED, JobState.DECLINED}
    ),
    JobState.DIALING: frozenset(
        {JobState.IN_CALL, JobState.QUEUED, JobState.FAILED, JobState.GAVE_UP, JobState.CANCELLED}
    ),
    JobState.IN_CALL: frozenset(
        {
            JobState.BOOKED,
            JobState.DECLINED,
            JobState.NEEDS_USER,
            JobState.FAILED,
            JobState.QUEUED,
            JobState.GAVE_UP,
        }
    ),
    JobState.NEEDS_USER: frozenset(
        {JobState.QUEUED, JobState.IN_CALL, JobState.CANCELLED, JobState.DECLINED}
    ),
    JobState.BOOKED: frozenset(),
    JobState.DECLINED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.GAVE_UP: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class OutcomeKind(StrEnum):
    """How one call attempt ended.

    ``OPTED_OUT``: the callee asked not to be called again. It is final and never
    retried: the number goes onto the do-not-call list (``storage.numbers``), the
    errand ends in ``JobState.DECLINED`` (see :data:`OPTED_OUT_STATE`) and every other
    open errand to that number ends too. The summary carries the callee's words.
    """

    BOOKED = "booked"
    DECLINED = "declined"
    NEEDS_USER = "needs_user"
    WRONG_NUMBER = "wrong_number"
    OPTED_OUT = "opted_out"
    FAILED = "failed"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    VOICEMAIL = "voicemail"
    ERROR = "error"  # transient: provider failure, dropped call, crash recovery

    @property
    def retryable(self) -> bool:
        return self in (OutcomeKind.NO_ANSWER, OutcomeKind.BUSY, OutcomeKind.VOICEMAIL, OutcomeKind.ERROR)


#: The final state of an errand whose callee opted out: the business declined to be
#: called, which is no failure of ours and nothing to retry (``FAILED`` would read as
#: "try again later", ``CANCELLED`` as the person's own choice).
OPTED_OUT_STATE = JobState.DECLINED


@dataclass(frozen=True)
class Booking:
    """The slot agreed on the phone (aware datetimes)."""

    start: datetime
    end: datetime
    service: str
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "service": self.service,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Booking:
        return cls(
            start=datetime.fromisoformat(d["start"]),
            end=datetime.fromisoformat(d["end"]),
            service=d["service"],
            notes=d.get("notes", ""),
        )


@dataclass(frozen=True)
class CallOutcome:
    """The result of one call attempt.

    Attributes:
        kind: how it ended.
        summary: one or two sentences for the person.
        booking: the agreed slot when ``kind`` is booked.
        question: what the person must decide when ``kind`` is needs_user.
        call_sid: Twilio call id, if a call was placed.
        event_link: calendar event web link, once the event exists.
    """

    kind: OutcomeKind
    summary: str = ""
    booking: Booking | None = None
    question: str | None = None
    call_sid: str | None = None
    event_link: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "summary": self.summary,
            "booking": self.booking.to_dict() if self.booking else None,
            "question": self.question,
            "call_sid": self.call_sid,
            "event_link": self.event_link,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CallOutcome:
        return cls(
            kind=OutcomeKind(d["kind"]),
            summary=d.get("summary", ""),
            booking=Booking.from_dict(d["booking"]) if d.get("booking") else None,
            question=d.get("question"),
            call_sid=d.get("call_sid"),
            event_link=d.get("event_link"),
        )

    def with_event_link(self, link: str) -> CallOutcome:
        return replace(self, event_link=link)


class Speaker(StrEnum):
    CALLEE = "callee"
    ASSISTANT = "assistant"


@dataclass(frozen=True)
class TurnLatency:
    """Monotonic timestamps (seconds, ``time.monotonic``) of one turn's audio path.

    Any of them may be missing. ``server_overhead_ms`` is STT final → first
    audio frame written to Twilio; ``barge_in_ms`` is callee speech start →
    ``clear`` sent to Twilio.
    """

    speech_end: float | None = None
    stt_final: float | None = None
    llm_first_token: float | None = None
    tts_first_byte: float | None = None
    first_audio_out: float | None = None
    barge_in_ms: float | None = None

    @property
    def server_overhead_ms(self) -> float | None:
        if self.stt_final is None or self.first_audio_out is None:
            return None
        return (self.first_audio_out - self.stt_final) * 1000.0


@dataclass(frozen=True)
class Turn:
    """One utterance in a call transcript.

    Attributes:
        speaker: callee or assistant.
        text: what was said; for an interrupted assistant reply only what was played.
        at: seconds since the call was answered.
        interrupted: the assistant was cut off by the callee (barge-in).
        latency: timing of the assistant turn that answered this one, if any.
    """

    speaker: Speaker
    text: str
    at: float = 0.0
    interrupted: bool = False
    latency: TurnLatency | None = None


class WaitReason(StrEnum):
    """Why a due errand was not called yet and waits until a later ``next_attempt_at``."""

    NUMBER_IN_CALL = "number_in_call"  # another errand's call to the same number is live
    NUMBER_DAILY_LIMIT = "number_daily_limit"  # the number has had its calls for the day


@dataclass(frozen=True)
class UserAnswer:
    """The person's answer to a question the business asked (a needs_user errand).

    Attributes:
        question: what the business asked, if it was recorded.
        answer: what the person replied.
    """

    question: str | None
    answer: str


@dataclass(frozen=True)
class JobMeta:
    """Bookkeeping an errand carries beside its immutable request (the ``jobs.meta`` JSON column).

    Read it from ``Job.meta``; change it only with ``JobStore.update_meta`` (which
    rejects unknown names), so every key the product uses is declared here once.

    Attributes:
        uncounted_attempts: claims that ended without a call (business closed at the
            last moment, a crash before the call existed, a follow-up after the person
            answered); they do not use up the retry budget (see ``Job.calls_made``).
        call_sid_attempt: the attempt ``Job.call_sid`` belongs to (see ``Job.current_call_sid``).
        confirmed_booking: the slot the business confirmed on the phone, stored the moment it
            was confirmed, so a call that breaks afterwards still ends booked.
        confirmed_attempt: the attempt ``confirmed_booking`` belongs to.
        user_answers: the person's answers to the business's questions, for the next call.
        progress_message: chat id of the one progress message edited in place.
        progress_posting: until when a notifier (on some node) is posting the first progress
            message; another one waits for its id instead of posting a second message.
        result_delivered: ``Job.result_marker`` of the result last posted to the chat.
        transcript_delivered: ``Job.result_marker`` of the transcript last posted to the chat.
        stream_token_sha256: hash of the current call's one-time media-stream token.
        call_nonce: the nonce in the callback URLs of the call placed for ``call_nonce_attempt``;
            a callback carrying it belongs to that attempt (``Job.dial_nonce``).
        call_nonce_attempt: the attempt ``call_nonce`` was made for.
        dial_started_at: real (provider-clock) time just before that attempt's create, so a
            lost create answer can be looked up in the provider's calls list.
        waiting_for: why the errand was put back past its due time by a per-number limit
            (set by the claim that deferred it, cleared by the claim that dials it).
        inbound_call_sid: the call the business placed to us (a call back) that took up the
            errand's current attempt; the agent then opens with "thanks for calling back".
        on_hold_since: when the live call went on hold (the business's "please hold"), for the
            chat's "On hold since 14:02"; cleared when the business comes back, and when a new call
            begins (answered or received: a call that ended on hold leaves it behind).
        extra: keys written by another version of Concierge; kept untouched on every write.
    """

    uncounted_attempts: int = 0
    call_sid_attempt: int | None = None
    confirmed_booking: Booking | None = None
    confirmed_attempt: int | None = None
    user_answers: tuple[UserAnswer, ...] = ()
    progress_message: str | None = None
    progress_posting: datetime | None = None
    result_delivered: str | None = None
    transcript_delivered: str | None = None
    stream_token_sha256: str | None = None
    call_nonce: str | None = None
    call_nonce_attempt: int | None = None
    dial_started_at: datetime | None = None
    waiting_for: WaitReason | None = None
    inbound_call_sid: str | None = None
    on_hold_since: datetime | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape: only values that differ from the defaults, plus ``extra``."""
        d: dict[str, Any] = dict(self.extra)
        if self.uncounted_attempts:
            d["uncounted_attempts"] = self.uncounted_attempts
        for name in ("call_sid_attempt", "confirmed_attempt", "progress_message", "result_delivered",
                     "transcript_delivered", "stream_token_sha256", "call_nonce",
                     "call_nonce_attempt", "waiting_for", "inbound_call_sid"):  # fmt: skip
            if (value := getattr(self, name)) is not None:
                d[name] = str(value) if isinstance(value, WaitReason) else value
        for stamp in ("dial_started_at", "on_hold_since", "progress_posting"):
            if (at := getattr(self, stamp)) is not None:
                d[stamp] = at.isoformat()
        if self.confirmed_booking is not None:
            d["confirmed_booking"] = self.confirmed_booking.to_dict()
        if self.user_answers:
            d["user_answers"] = [{"question": a.question, "answer": a.answer} for a in self.user_answers]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobMeta:
        """Inverse of :meth:`to_dict`; keys this version does not know go to ``extra``."""
        known = {f.name for f in fields(cls)} - {"extra"}
        booking = d.get("confirmed_booking")
        progress = d.get("progress_message")
        started = d.get("dial_started_at")
        waiting = d.get("waiting_for")
        held = d.get("on_hold_since")
        posting = d.get("progress_posting")
        return cls(
            uncounted_attempts=int(d.get("uncounted_attempts") or 0),
            call_sid_attempt=_opt_int(d.get("call_sid_attempt")),
            confirmed_booking=Booking.from_dict(booking) if isinstance(booking, dict) else None,
            confirmed_attempt=_opt_int(d.get("confirmed_attempt")),
            user_answers=tuple(
                UserAnswer(a.get("question"), str(a.get("answer", "")))
                for a in d.get("user_answers") or ()
                if isinstance(a, dict)
            ),
            progress_message=str(progress) if progress is not None else None,
            progress_posting=datetime.fromisoformat(posting) if isinstance(posting, str) else None,
            result_delivered=d.get("result_delivered"),
            transcript_delivered=d.get("transcript_delivered"),
            stream_token_sha256=d.get("stream_token_sha256"),
            call_nonce=d.get("call_nonce"),
            call_nonce_attempt=_opt_int(d.get("call_nonce_attempt")),
            dial_started_at=datetime.fromisoformat(started) if isinstance(started, str) else None,
            waiting_for=WaitReason(waiting) if waiting in set(WaitReason) else None,
            inbound_call_sid=d.get("inbound_call_sid"),
            on_hold_since=datetime.fromisoformat(held) if isinstance(held, str) else None,
            extra={k: v for k, v in d.items() if k not in known},
        )

    def changed(self, **values: Any) -> JobMeta:
        """A copy with ``values`` replaced.

        Raises:
            TypeError: a name is not a field of ``JobMeta`` (``extra`` is not writable this way).
        """
        unknown = set(values) - ({f.name for f in fields(self)} - {"extra"})
        if unknown:
            raise TypeError(f"unknown JobMeta field(s): {', '.join(sorted(unknown))}")
        return replace(self, **values)


def _opt_int(value: Any) -> int | None:
    return int(value) if value is not None else None


@dataclass(frozen=True)
class Job:
    """An errand in the queue (a row of ``jobs``). Times are aware UTC datetimes."""

    id: str
    request: CallRequest
    state: JobState
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    call_sid: str | None = None
    outcome: CallOutcome | None = None
    meta: JobMeta = field(default_factory=JobMeta)

    @property
    def calls_made(self) -> int:
        """Attempts that really dialled: claims minus those that placed no call."""
        return self.attempts - self.meta.uncounted_attempts

    @property
    def current_call_sid(self) -> str | None:
        """The CallSid of the *current* attempt, or ``None`` if none was recorded.

        ``call_sid`` keeps the previous attempt's value after a retry, so the
        attempt it belongs to is remembered in ``meta.call_sid_attempt``.
        """
        if self.call_sid and self.meta.call_sid_attempt == self.attempts:
            return self.call_sid
        return None

    @property
    def dial_nonce(self) -> str | None:
        """The callback nonce of the call placed for the *current* attempt, if one was placed."""
        if self.meta.call_nonce_attempt == self.attempts:
            return self.meta.call_nonce
        return None

    @property
    def current_booking(self) -> Booking | None:
        """The slot the business confirmed during the *current* attempt, if one was recorded."""
        if self.meta.confirmed_attempt == self.attempts:
            return self.meta.confirmed_booking
        return None

    @property
    def result_marker(self) -> str:
        """What ``meta.result_delivered`` holds once the result of this final state was posted."""
        return f"{self.state.value}:{self.attempts}"

    @property
    def result_pending(self) -> bool:
        """Finished, but the result never reached the chat (e.g. the process died in between)."""
        return (
            self.state.is_final
            and self.state is not JobState.CANCELLED
            and self.meta.result_delivered != self.result_marker
        )


def utcnow() -> datetime:
    """The real UTC clock; components take a clock callable defaulting to this."""
    return datetime.now(UTC)
