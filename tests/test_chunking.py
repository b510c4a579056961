"""Clause splitter: natural pieces for TTS, never a split inside numbers, times or abbreviations."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.chunking import ClauseChunker


def chunk(text: str, step: int = 1, **kw: int) -> list[str]:
    c = ClauseChunker(**kw)
    out: list[str] = []
    for i in range(0, len(text), step):
        out += c.feed(text[i : i + step])
    return out + c.flush()


def test_sentence_ends_split_and_are_emitted_as_soon_as_decided() -> None:
    c = ClauseChunker()
    assert c.feed("Hello there.") == []  # could still be "there.5"? no: waits for the next char
    assert c.feed(" How") == ["Hello there."]
    assert c.feed(" are you?") == []
    assert c.flush() == ["How are you?"]


def test_clause_boundaries_need_a_minimum_length() -> None:
    assert chunk("Hi, this is Robin, an AI assistant calling for Alex. Okay.") == [
        "Hi, this is Robin,",
        "an AI assistant calling for Alex.",
        "Okay.",
    ]
    assert chunk("Sure; fine, thanks") == ["Sure; fine, thanks"]
    assert chunk("I would like a haircut; something short, if possible.") == [
        "I would like a haircut;",
        "something short, if possible.",  # "something short," is too short a clause alone
    ]


@pytest.mark.parametrize(
    "text",
    [
        "That will be 1,500 dollars in total for everyone",
        "It takes 3.5 hours of work and that is all there is",
        "We can see you at 3:30 today or maybe later on today",
        "We can see you at 3:30 p.m. on the second of the month",
        "Doctor appointment is with Dr. Lee on Main St. near the park",
        "Bring something, e.g. a photo of the haircut you like please",
        "The meeting is on December 1, 2026 at our main office building",
        "We close at 5 a.m. sharp on a normal weekday for cleaning",
    ],
)
@pytest.mark.parametrize("step", [1, 3, 50])
def test_never_splits_numbers_times_or_abbreviations(text: str, step: int) -> None:
    assert chunk(text, step) == [text]


def test_meridiem_followed_by_capital_ends_the_sentence() -> None:
    assert chunk("We open at 3:30 p.m. Thanks for calling!") == [
        "We open at 3:30 p.m.",
        "Thanks for calling!",
    ]


def test_closing_quotes_stay_with_their_sentence() -> None:
    assert chunk('She said "yes." Then left.') == ['She said "yes."', "Then left."]


def test_long_run_without_punctuation_is_cut_at_a_word_boundary() -> None:
    text = " ".join(f"word{i}" for i in range(60))
    pieces = chunk(text, max_chars=120)
    assert len(pieces) > 1
    assert all(len(p) <= 120 for p in pieces)
    assert " ".join(pieces) == text  # cut only at spaces: no word broken


def test_length_cut_keeps_2_pm_together() -> None:
    text = "x" * 10 + " " + "aaaa " * 20 + "2 pm and more words after that to go past the limit"
    for piece in chunk(text, max_chars=111):
        assert not piece.startswith("pm")
    assert " ".join(chunk(text, max_chars=111)) == text


def test_length_cut_prefers_a_skipped_comma() -> None:
    text = "one two, " + "filler " * 15 + "and, the rest of it goes on and on"
    pieces = chunk(text, max_chars=120, min_clause_words=50, min_clause_chars=500)
    assert pieces[0].endswith("and,")


def test_flush_on_empty_returns_nothing() -> None:
    c = ClauseChunker()
    assert c.flush() == []
    assert c.feed("   ") == []
    assert c.flush() == []


words = st.sampled_from(
    [
        "hello",
        "1,500",
        "3.5",
        "3:30",
        "p.m.",
        "Dr.",
        "Lee,",
        "is",
        "fine.",
        "ok?",
        "2",
        "pm",
        "e.g.",
        "yes—",
        "St.",
    ]
)


@settings(max_examples=150, deadline=None)
@given(st.lists(words, min_size=1, max_size=60), st.integers(min_value=1, max_value=9))
def test_chunks_preserve_the_text_and_are_bounded(ws: list[str], step: int) -> None:
    text = " ".join(ws)
    pieces = chunk(text, step)
    assert " ".join(pieces).split() == text.split()
    assert all(len(p) <= 120 for p in pieces)
    assert pieces == chunk(text, 1000)  # how the deltas are sliced does not change the result
