"""Incremental clause splitter between the streaming model and streaming TTS.

Text-to-speech sounds natural only when it gets whole phrases, but waiting for a
whole reply adds the model's entire generation time to the callee's wait. So the
model's text deltas are cut at the first point where a listener would hear a
pause: a sentence end, or a clause boundary (comma, semicolon, colon, dash) once
the clause is long enough to be worth a separate TTS request. A few things look
like boundaries but are not — "1,500", "3.5", "3:30", "Dr. Lee", "e.g. this",
"3:30 p.m." — and splitting them would make the voice pause mid-number. A long
run with no punctuation at all is cut at a word boundary so one clause never
holds the audio back for long.

The first clause of a reply is what the callee waits for, so it may be cut
sooner (``first_clause_words``): at its first clause boundary whatever its
length, or at a word boundary once it has that many words. At a real model's
~50–100 words per second, waiting for an eight-word first sentence costs
80–160 ms of silence; four words cost half of that, and the rest of the
reply keeps the natural cuts.
"""

from __future__ import annotations

import re

#: Abbreviations after which a period never ends a sentence (titles read with the name after them).
NEVER_END = frozenset(
    {
        "mr.",
        "mrs.",
        "ms.",
        "dr.",
        "st.",
        "prof.",
        "jr.",
        "sr.",
        "mt.",
        "no.",
        "vs.",
        "e.g.",
        "i.e.",
        "approx.",
    }
)
#: Abbreviations that end a sentence only when a capitalised word follows ("…at 3 p.m. Thanks").
MAYBE_END = frozenset({"a.m.", "p.m.", "etc.", "inc.", "ltd.", "co."})
#: Words that must stay attached to the number before them ("2 pm").
_MERIDIEM = frozenset({"am", "pm", "a.m.", "p.m.", "a.m", "p.m", "o'clock"})
_CLOSERS = "\"'”’)]"
_SENTENCE_END = ".!?…"
_CLAUSE = ",;:—–"


class ClauseChunker:
    """Turns a stream of text deltas into speakable clauses.

    Args:
        min_clause_words: a clause boundary (",", ";", ":", "—") splits only when the
            clause before it has at least this many words ...
        min_clause_chars: ... or at least this many characters.
        max_chars: a run without any boundary is cut (at a word boundary) once it is
            longer than this, so TTS is never starved by one long sentence.
        first_clause_words: if set, the first clause is cut at any clause boundary, or at the
            first word boundary after this many words (times and titles are kept whole).
    """

    def __init__(
        self,
        *,
        min_clause_words: int = 3,
        min_clause_chars: int = 20,
        max_chars: int = 120,
        first_clause_words: int | None = None,
    ) -> None:
        self._min_words = min_clause_words
        self._min_chars = min_clause_chars
        self._max_chars = max_chars
        self._first_words = first_clause_words
        self._first = first_clause_words is not None  # the first clause is still to come
        self._buf = ""

    def feed(self, delta: str) -> list[str]:
        """Add a text delta; return the clauses that are now complete (possibly none)."""
        self._buf += delta
        out: list[str] = []
        while True:
            cut = self._find_boundary()
            if cut is None and self._first:
                cut = self._early_cut()
            if cut is None:
                cut = self._length_cut()
            if cut is None:
                break
            piece, self._buf = self._buf[:cut].strip(), self._buf[cut:].lstrip()
            if piece:
                out.append(piece)
                self._first = False
        return out

    def flush(self) -> list[str]:
        """End of the reply: return whatever is left as a final clause."""
        piece, self._buf = self._buf.strip(), ""
        self._first = self._first and not piece
        return [piece] if piece else []

    @property
    def pending(self) -> str:
        """Text received but not yet handed on."""
        return self._buf

    # -- boundaries ---------------------------------------------------------------------------------

    def _find_boundary(self) -> int | None:
        """Index just past the first decided boundary, or None (none yet, or undecided at the end)."""
        buf = self._buf
        for i, ch in enumerate(buf):
            if ch in _SENTENCE_END:
                decision = self._sentence_end(i)
            elif ch in _CLAUSE:
                decision = self._clause_end(i)
            else:
                continue
            if decision is None:  # need more text to decide
                return None
            if decision:
                return self._skip_closers(i + 1)
        return None

    def _skip_closers(self, j: int) -> int:
        while j < len(self._buf) and self._buf[j] in _CLOSERS:
            j += 1
        return j

    def _next_visible(self, j: int) -> tuple[bool | None, str]:
        """After position ``j`` (closers skipped): (whitespace follows?, next non-space char).

        ``None`` means the buffer ends before that can be told.
        """
        j = self._skip_closers(j)
        buf = self._buf
        if j >= len(buf):
            return None, ""
        if not buf[j].isspace():
            return False, buf[j]
        while j < len(buf) and buf[j].isspace():
            j += 1
        return True, (buf[j] if j < len(buf) else "")

    def _sentence_end(self, i: int) -> bool | None:
        buf = self._buf
        # Runs like "..." or "?!" end at their last character.
        if i + 1 < len(buf) and buf[i + 1] in _SENTENCE_END:
            return False
        space, nxt = self._next_visible(i + 1)
        if space is None:
            return None
        if not space:
            return False  # "3.5", "e.g", "a.m" (inner dot), "www.x.com"
        if buf[i] != ".":
            return True
        word = _word_before(buf, i + 1).lower()
        if word in NEVER_END or re.fullmatch(r"[a-z]\.", word):
            return False  # titles and initials ("Dr. Lee", "J. Smith")
        if word in MAYBE_END:
            if not nxt:
                return None  # "p.m. " then nothing yet: wait for the next word
            return nxt.isupper()
        return True

    def _clause_end(self, i: int) -> bool | None:
        buf = self._buf
        space, nxt = self._next_visible(i + 1)
        if space is None or (space and not nxt):
            return None  # what follows decides ("2—3", "December 1, 2026")
        if buf[i] == "—":
            if nxt.isdigit():
                return False  # "2—3"
        else:
            if not space:
                return False  # "1,500", "3:30"
            if nxt.isdigit() and i > 0 and buf[i - 1].isdigit():
                return False  # "December 1, 2026"
            if buf[i] == "–" and (i == 0 or not buf[i - 1].isspace()):
                return False
        clause = buf[: i + 1].strip()
        if self._first:
            return True
        return len(clause.split()) >= self._min_words or len(clause) >= self._min_chars

    def _early_cut(self) -> int | None:
        """First-clause rule: the first word boundary after ``first_clause_words`` words, else None."""
        assert self._first_words is not None
        buf = self._buf
        words = 0
        for m in re.finditer(r"\s+", buf):
            if m.start() == 0:
                continue
            words += 1
            if words >= self._first_words and _can_cut_at(buf, m.start()):
                return m.start()
        return None

    def _length_cut(self) -> int | None:
        """Where to cut a run that grew past ``max_chars`` without a boundary, else None."""
        buf = self._buf
        if len(buf.strip()) <= self._max_chars:
            return None
        limit = len(buf) - len(buf.lstrip()) + self._max_chars
        spaces = [m.start() for m in re.finditer(r"\s+", buf[: limit + 1]) if m.start() > 0]
        allowed = [k for k in spaces if _can_cut_at(buf, k)]
        # Prefer a pause the listener would expect (a too-short clause's comma) over a bare space.
        soft = [k for k in allowed if buf[k - 1] in _CLAUSE]
        for candidates in (soft, allowed, spaces):
            if candidates:
                return candidates[-1]
        return limit


def _word_before(buf: str, end: int) -> str:
    """The token (letters, dots, apostrophes) ending at ``end``."""
    j = end
    while j > 0 and (buf[j - 1].isalpha() or buf[j - 1] in ".'"):
        j -= 1
    return buf[j:end]


def _can_cut_at(buf: str, k: int) -> bool:
    """Whether splitting at the whitespace at ``k`` keeps times and titles whole."""
    before = buf[:k].split()
    after = buf[k:].split()
    if not before or not after:
        return False
    prev, nxt = before[-1].lower(), after[0].lower().rstrip(",;:!?")
    if nxt in _MERIDIEM or nxt.rstrip(".") in {"am", "pm"}:
        return False
    return prev not in NEVER_END
