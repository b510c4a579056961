"""Outbound audio bookkeeping (``telephony.playback``, pure): what goes to Twilio when."""

from __future__ import annotations

import base64
import json

from telephony.playback import LEAD_BYTES, PIECE_BYTES, AssistantTurn, Clause, Playback

CHUNK = 800  # what the sandbox TTS sends per message


def sent_audio(messages: list[tuple[str, str]]) -> list[bytes]:
    out = []
    for media, mark in messages:
        assert json.loads(mark)["event"] == "mark"
        out.append(base64.b64decode(json.loads(media)["media"]["payload"]))
    return out


def clause_of(playback: Playback, text: str = "one two three") -> Clause:
    return playback.add_clause(text, AssistantTurn(at=0.0))


def test_first_audio_goes_at_once_then_chunks_wait_for_whole_pieces_while_twilio_is_ahead() -> None:
    playback = Playback("MZ1")
    clause = clause_of(playback)
    audio = bytes(range(256)) * 40  # 10,240 bytes, in 800-byte TTS chunks
    chunks = [audio[i : i + CHUNK] for i in range(0, len(audio), CHUNK)]
    pieces = sent_audio(list(playback.take(clause, chunks[0])))
    assert pieces == [chunks[0]]  # the first audio never waits
    for chunk in chunks[1:]:
        ahead = playback.unplayed() >= LEAD_BYTES
        now = sent_audio(list(playback.take(clause, chunk)))
        if ahead:  # Twilio has plenty to play: whole 1,600-byte pieces only, the rest waits
            assert all(len(p) == PIECE_BYTES for p in now) and len(clause.held) < PIECE_BYTES
        else:
            assert now == [chunk]
        pieces += now
    pieces += sent_audio(list(playback.take(clause, b"", final=True)))
    assert b"".join(pieces) == audio and not clause.held and clause.sent == len(audio)
    assert len(pieces) < len(chunks)  # fewer messages than TTS chunks


def test_a_line_about_to_run_dry_gets_every_chunk_at_once() -> None:
    playback = Playback("MZ1")
    clause = clause_of(playback)
    list(playback.take(clause, b"\x01" * CHUNK))
    assert playback.unplayed() < LEAD_BYTES
    assert sent_audio(list(playback.take(clause, b"\x02" * CHUNK))) == [b"\x02" * CHUNK]
    # Twilio confirms what it played: the marks of everything sent so far come back
    for name in list(playback._marks):
        playback.on_mark(name)
    assert playback.unplayed() == 0
    assert sent_audio(list(playback.take(clause, b"\x03" * 100))) == [b"\x03" * 100]


def test_held_audio_is_dropped_with_a_cleared_clause() -> None:
    playback = Playback("MZ1")
    clause = clause_of(playback)
    list(playback.take(clause, b"\x01" * (LEAD_BYTES + PIECE_BYTES)))
    assert list(playback.take(clause, b"\x02" * CHUNK)) == [] and len(clause.held) == CHUNK
    cut = playback.clear()
    assert cut == [clause.turn] and clause.cancelled
    assert list(playback.take(clause, b"", final=True)) == []
    assert clause.heard_words() == []  # nothing confirmed played, nothing claimed
