"""Progress texts read as one clean sentence, whatever the summary they quote."""

from __future__ import annotations

from dataclasses import replace

from test_app import _job

from bot.render import progress
from storage.models import CallOutcome, OutcomeKind


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
