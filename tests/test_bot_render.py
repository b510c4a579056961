"""Progress texts read as one clean sentence, whatever the summary they quote."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from test_app import _job

from bot.render import progress
from storage.models import CallOutcome, JobMeta, OutcomeKind


def test_retry_text_does_not_promise_twice_or_double_its_full_stop() -> None:
    for summary in (
        "The call ended but its result was lost in a restart; I'll call again.",
        "call ended before a result",
        "Nobody answered.",
    ):
        job = replace(_job({}), outcome=CallOutcome(OutcomeKind.ERROR, summary=summary))
        text = progress(job, "retry_planned", "America/Los_Angeles").splitlines()[1]
        assert ".." not in text and text.count("again") == 1, text
        assert text[0].isupper() and "I'll try again" in text


def test_on_hold_shows_when_the_hold_began_in_the_persons_zone_and_back_on_the_phone_after() -> None:
    held = _job(JobMeta(on_hold_since=datetime(2026, 6, 8, 21, 2, tzinfo=UTC)))
    text = progress(held, "on_hold", "America/Los_Angeles")
    assert text.splitlines()[1].startswith("On hold since 14:02 your time"), text  # 21:02 UTC is 14:02 PDT
    assert held.request.business_name in text
    assert "On hold since 23:02" in progress(held, "on_hold", "Europe/Berlin")
    assert progress(held, "in_call", "America/Los_Angeles").splitlines()[1].startswith("On the phone with")
