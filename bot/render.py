"""Every text the bot says, in one place, as pure functions.

Kept apart from the chat SDKs so the wording can be read, changed and tested
without a chat server, and so Telegram and Slack say exactly the same thing.
Plain text only (no Markdown) so nothing needs escaping on either platform.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from storage import text as bounds
from storage.models import CallRequest, Job, JobState, OutcomeKind, Turn, WaitReason

HELP = (
    "I phone businesses for you and book appointments.\n\n"
    "Just tell me, e.g.: book me a haircut at Joe's Barbershop, +1 415 555 0100, next week, afternoons\n"
    "Or the exact form: /call +14155550100 Joe's Barbershop | haircut | next week afternoons\n\n"
    "/status — your errands\n/cancel ID — cancel one before I call\n/help — this text"
)

NOT_ALLOWED = (
    "Sorry — I only take errands from people on my allow-list. "
    "Ask the person who runs this assistant to add you."
)
ACK = "On it…"
EDIT_PROMPT = "What should I change? Reply here (e.g. “make it Friday morning” or a new number)."
DRAFT_GONE = "That request is no longer open — send it again if you still need it."
DRAFT_DROPPED = "OK, dropped. Nothing will be called."
NOT_YOURS = "Only the person who asked can answer that."
NOT_YOUR_DRAFT = (
    "This request belongs to the person who started it, so only they can change or confirm it. "
    "To ask for your own, start a new one with /call."
)
DRAFT_CHANGED = "This request has changed since — please use the buttons on the latest message."
DRAFT_RACED = "That request changed while I was reading your message — please send your change again."
MODEL_DOWN = (
    "I couldn't read that just now. Try the exact form: "
    "/call +14155550100 Joe's Barbershop | haircut | next week afternoons"
)

_FIELD_WORDS = {
    "phone": "the business's phone number",
    "business": "the name of the business",
    "service": "what to book (e.g. a haircut)",
    "window": "when it could be (e.g. “next week afternoons”, “Friday morning”)",
}


def refuse_emergency(raw: str) -> str:
    return (
        f"I can't call {raw.strip()}: that's an emergency number. "
        "If this is an emergency, please call it yourself right now."
    )


def refuse_invalid(raw: str) -> str:
    return f"“{raw.strip()}” doesn't look like a phone number I can call. Please send it with the area code."


def refuse_short(raw: str) -> str:
    return f"I can't call {raw.strip()}: short codes and service numbers aren't allowed."


def refuse_premium(raw: str) -> str:
    return f"I won't call {raw.strip()}: it's a premium-rate number that would cost you money."


def refuse_blocked(e164: str) -> str:
    return f"I won't call {e164}: that number is on the block list."


def refuse_do_not_call(e164: str) -> str:
    return (
        f"I won't call {e164}: that number is on the do-not-call list "
        "(whoever answers there asked not to be called, or the operator blocked it)."
    )


def ask_missing(missing: Sequence[str], so_far: dict[str, Any]) -> str:
    """Ask back for what is missing, showing what was understood so nothing is retyped."""
    got = [f"{k.replace('_', ' ')}: {v}" for k, v in so_far.items() if v]
    need = "; ".join(_FIELD_WORDS[m] for m in missing)
    head = ("Got it so far — " + ", ".join(got) + ".\n") if got else ""
    return f"{head}I still need {need}. Reply here and I'll pick it up."


def fmt_time(at: datetime, tz: str) -> str:
    """'9:00' or '14:02' in ``tz`` (the clock time alone, for today's events)."""
    local = at.astimezone(ZoneInfo(tz))
    return f"{local.hour}:{local:%M}"


def fmt_when(at: datetime, tz: str) -> str:
    """'Tue 14 Jan 9:00' in ``tz``."""
    return f"{at.astimezone(ZoneInfo(tz)):%a %d %b} {fmt_time(at, tz)}"


def request_summary(r: CallRequest) -> str:
    w = r.window
    days = f"{w.start_date:%a %d %b}" + ("" if w.start_date == w.end_date else f" – {w.end_date:%a %d %b}")
    lines = [
        f"Call {r.business_name} ({r.phone})",
        f"to book: {r.service} ({w.duration_minutes} min)",
        f"when: {days}, between {w.earliest:%H:%M} and {w.latest:%H:%M} (your time, {r.person_tz})",
    ]
    if r.notes:
        lines.append(f"notes: {r.notes}")
    return "\n".join(lines)


def plan_line(due: datetime, request: CallRequest, now: datetime) -> str:
    """When the call will happen: "They open Tue 9:00 their time — I'll call then."."""
    if due - now <= timedelta(minutes=1):
        return "They're open now — I'll call right away once you confirm."
    theirs = fmt_when(due, request.business_tz)
    line = f"They open {theirs} their time — I'll call then."
    if request.business_tz != request.person_tz:
        line += f" (That's {fmt_when(due, request.person_tz)} for you.)"
    return line


def confirm_prompt(request: CallRequest, due: datetime, now: datetime) -> str:
    return f"{request_summary(request)}\n\n{plan_line(due, request, now)}\nShall I go ahead?"


def confirmed(job: Job, person_tz: str) -> str:
    return (
        f"Confirmed — errand {job.id} is queued; I'll call {fmt_when(job.next_attempt_at, person_tz)} "
        f"your time. (/cancel {job.id} to stop it.)"
    )


def cancelled(job_id: str) -> str:
    return f"Errand {job_id} is cancelled. Nothing will be called."


def cannot_cancel(job_id: str, why: str) -> str:
    return f"I can't cancel {job_id}: {why}"


def status_list(jobs: Sequence[Job], person_tz: str) -> str:
    if not jobs:
        return "You have no errands yet."
    lines = []
    for j in jobs:
        r = j.request
        when = f", next call {fmt_when(j.next_attempt_at, person_tz)}" if j.state == JobState.QUEUED else ""
        lines.append(f"{j.id} — {r.service} at {r.business_name}: {j.state.value.replace('_', ' ')}{when}")
    return "\n".join(lines)


#: A summary that already promises a retry ("…; I'll call again.") would say it twice.
_AGAIN = re.compile(r"[;,.]?\s*I'll (call|try) again\.?\s*$", re.IGNORECASE)


#: Why an errand waits past its planned time (``JobMeta.waiting_for``), for the person.
_WAITING: dict[WaitReason, str] = {
    WaitReason.NUMBER_IN_CALL: "I'm already on the phone with this number for another errand",
    WaitReason.NUMBER_DAILY_LIMIT: "this number has already had the most calls I make to one number in a day",
}


def progress(job: Job, event: str, person_tz: str) -> str:
    """The one progress message for an errand, rewritten as it advances."""
    r = job.request
    head = f"Errand {job.id}: {r.service} at {r.business_name}"
    if event == "queued":
        when = fmt_when(job.next_attempt_at, person_tz)
        if job.meta.waiting_for is not None:
            waiting = _WAITING[job.meta.waiting_for]
            return f"{head}\nWaiting: {waiting}. I'll call {when} your time."
        return f"{head}\nQueued — I'll call {when} your time."
    if event == "calling":
        return f"{head}\nCalling {r.business_name} now… (attempt {job.attempts} of {job.max_attempts})"
    if event == "in_call":
        return f"{head}\nOn the phone with {r.business_name}…"
    if event == "called_back":
        return f"{head}\nThey called back — on the phone with {r.business_name}…"
    if event == "on_hold":
        since = job.meta.on_hold_since
        at = f" since {fmt_time(since, person_tz)} your time" if since is not None else ""
        return f"{head}\nOn hold{at} — I'm staying on the line until {r.business_name} is back."
    if event == "retry_planned":
        why = job.outcome.summary if job.outcome and job.outcome.summary else "No luck this time"
        why = _AGAIN.sub("", why).rstrip(" .;,") or "No luck this time"
        why = why[0].upper() + why[1:]
        return f"{head}\n{why}. I'll try again {fmt_when(job.next_attempt_at, person_tz)} your time."
    if event == "cancelled":
        return f"{head}\nCancelled."
    return f"{head}\n{job.state.value.replace('_', ' ').capitalize()}."


def business_question(business_name: str, question: str) -> str:
    """A needs-user question, shown as the business's own words (quoted, bounded), never as ours."""
    q = bounds.bounded(question, bounds.QUESTION).strip('“”"')
    return f"{bounds.bounded(business_name, bounds.NAME)} asked on the phone (their words): “{q}”"


NOT_YOUR_QUESTION = "Only the person who sent this errand can answer its question."


def asking_you(business_name: str, question: str) -> str:
    """The question a business asked during a live call, quoted as theirs, while the line is held."""
    return (
        f"Asking you: {business_question(business_name, question)}\n"
        "I'm holding the line: tap an answer or just reply here."
    )


def live_answered(answer: str) -> str:
    """Shown once the person's answer reached the call still on the line."""
    return f"You answered “{bounds.bounded(answer, bounds.QUESTION)}”. I'm passing it on now."


def result(job: Job, person_tz: str) -> str:
    """The final word on an errand: what happened and what next.

    Summaries and questions were written on the call (by the model, from the callee's words):
    they are bounded here, and a question is shown quoted as the business's.
    """
    r, o = job.request, job.outcome
    summary = bounds.bounded(o.summary, bounds.SUMMARY) if o and o.summary else ""
    if job.state == JobState.BOOKED and o and o.booking:
        when = fmt_when(o.booking.start, person_tz)
        text = f"Booked: {o.booking.service or r.service} at {r.business_name}, {when}."
        if o.event_link:
            text += f"\nIn your calendar: {o.event_link}"
        return text + (f"\n{summary}" if summary else "")
    if job.state == JobState.NEEDS_USER:
        if o and o.question:
            ask = business_question(r.business_name, o.question)
        else:
            ask = f"{r.business_name} needs a decision from you. {summary}".rstrip()
        return f"{ask}\nAnswer with a button below (or /cancel {job.id})."
    if job.state == JobState.CANCELLED:
        return cancelled(job.id)
    if o and o.kind == OutcomeKind.OPTED_OUT:
        return (
            f"Not booked: {r.business_name} asked not to be called again: {summary or '(no words kept)'}\n"
            f"I won't call {r.phone} again, for this or any other errand. Please contact them yourself."
        )
    if job.state == JobState.DECLINED:
        return (
            f"Not booked at {r.business_name}: {summary or 'nothing fitted your window'}.\n"
            "Next: send the request again with a wider window, or try another place."
        )
    if o and o.kind == OutcomeKind.WRONG_NUMBER:
        return (
            f"Not booked: {r.phone} doesn't seem to be {r.business_name}. Check the number and send it again."
        )
    why = summary or job.state.value.replace("_", " ")
    return (
        f"I couldn't finish the errand at {r.business_name}: {why}.\n"
        "Next: send it again later, or call them yourself."
    )


def transcript_text(job: Job, turns: Sequence[Turn]) -> str:
    """A plain-text transcript for the file attached to the result."""
    r = job.request
    lines = [f"Call with {r.business_name} ({r.phone}) — errand {job.id}", ""]
    for t in turns:
        who = r.business_name if t.speaker.value == "callee" else "Assistant"
        mm, ss = divmod(int(t.at), 60)
        cut = " [interrupted]" if t.interrupted else ""
        lines.append(f"[{mm:02d}:{ss:02d}] {who}: {t.text}{cut}")
    return "\n".join(lines) + "\n"
