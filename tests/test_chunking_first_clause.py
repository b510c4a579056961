"""The first-clause rule of ``agent.chunking.ClauseChunker`` (``first_clause_words``).

The callee waits for a reply's first clause, so it is cut at its first clause boundary whatever
its length, or after a few words; the rest of the reply keeps the usual cuts.
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from agent.chunking import ClauseChunker


def chunk(text: str, *, first: int | None = 4) -> list[str]:
    c = ClauseChunker(first_clause_words=first)
    out: list[str] = []
    for delta in re.findall(r"\s*\S+\s*", text):
        out += c.feed(delta)
    return out + c.flush()


def test_first_comma_cuts_however_short_the_clause() -> None:
    text = "Wonderful, so that's a haircut on Tuesday. Thank you, goodbye!"
    assert chunk(text) == ["Wonderful,", "so that's a haircut on Tuesday.", "Thank you, goodbye!"]
    assert chunk(text, first=None) == ["Wonderful, so that's a haircut on Tuesday.", "Thank you, goodbye!"]


def test_a_long_first_sentence_is_cut_after_four_words_keeping_times_whole() -> None:
    assert chunk("Could we do Tuesday at 2 pm instead of Monday?") == [
        "Could we do Tuesday",
        "at 2 pm instead of Monday?",
    ]
    assert chunk("We could come at 2 pm tomorrow instead.") == ["We could come at", "2 pm tomorrow instead."]
    assert chunk("Hi there Dr. Lee and everyone.") == ["Hi there Dr. Lee", "and everyone."]


def test_a_short_first_sentence_is_not_cut() -> None:
    assert chunk("It's for Alex Doe. That's spelled A L E X.") == [
        "It's for Alex Doe.",
        "That's spelled A L E X.",
    ]


def test_the_cut_waits_for_the_next_word_before_deciding() -> None:
    c = ClauseChunker(first_clause_words=4)
    assert c.feed("Could we do it at 2 ") == ["Could we do it"]
    assert c.feed("pm ") == []  # "at 2" then "pm": never "at 2" | "pm"
    assert c.flush() == ["at 2 pm"]


@given(st.lists(st.sampled_from(["a", "bb", "2", "pm", "Dr.", "x,", "y.", "z?", "3:30", " "]), max_size=40))
def test_first_clause_rule_preserves_the_text(words: list[str]) -> None:
    text = " ".join(words)
    pieces = chunk(text)
    assert " ".join(pieces).split() == text.split()
    assert all(p.strip() for p in pieces)
