"""Sandbox speech encoding and DTMF detection (pure, no I/O)."""

from __future__ import annotations

import math
import random
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.dtmf import DtmfDetector, detect_digits
from sandbox.speech import (
    SpeechDecoder,
    VoiceEnd,
    VoiceStart,
    WordHeard,
    decode_text,
    encode_speech,
    silence,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

_FREQS = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "A": (697, 1633),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477), "B": (770, 1633),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "C": (852, 1633),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477), "D": (941, 1633),
}  # fmt: skip


def tones(digits: str, *, tone_ms: int = 100, gap_ms: int = 60, amplitude: int = 6000) -> bytes:
    """A small local DTMF generator (independent of the product's) for the detector tests."""
    out = bytearray()
    for d in digits:
        lo, hi = _FREQS[d]
        n = tone_ms * 8
        pcm = bytearray()
        for i in range(n):
            v = amplitude * (math.sin(2 * math.pi * lo * i / 8000) + math.sin(2 * math.pi * hi * i / 8000))
            pcm += int(v).to_bytes(2, "little", signed=True)
        out += audioop.lin2ulaw(bytes(pcm), 2)
        out += silence(gap_ms / 1000)
    return bytes(out)


def rechunk(data: bytes, rng: random.Random, max_size: int = 400) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        n = rng.randint(1, max_size)
        chunks.append(data[i : i + n])
        i += n
    return chunks


def test_encode_layout_and_timing() -> None:
    audio = encode_speech("hello there", words_per_second=4.0)
    assert len(audio) == 2 * 2000
    assert 0xFF not in audio
    assert decode_text(audio) == "hello there"
    events = SpeechDecoder().feed(audio + silence(0.1))
    assert events == [VoiceStart(0), WordHeard("hello", 2000), WordHeard("there", 4000), VoiceEnd(4000)]


def test_non_ascii_is_transliterated_or_dropped() -> None:
    assert decode_text(encode_speech("Café naïve 日本 ok")) == "Cafe naive ok"
    assert encode_speech("   ") == b""


@settings(max_examples=60, deadline=None)
@given(
    words=st.lists(st.from_regex(r"[A-Za-z0-9',.?!-]{1,12}", fullmatch=True), min_size=1, max_size=8),
    seed=st.integers(0, 10_000),
    wps=st.sampled_from([2.0, 3.0, 5.0, 40.0]),
)
def test_round_trip_under_random_rechunking(words: list[str], seed: int, wps: float) -> None:
    text = " ".join(words)
    audio = silence(0.05) + encode_speech(text, words_per_second=wps) + silence(0.05)
    decoder = SpeechDecoder()
    events = []
    for chunk in rechunk(audio, random.Random(seed)):
        events += decoder.feed(chunk)
    assert [e.word for e in events if isinstance(e, WordHeard)] == words
    assert isinstance(events[0], VoiceStart) and events[0].offset == 400
    assert isinstance(events[-1], VoiceEnd)


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(0, 3 * 2667), seed=st.integers(0, 1000))
def test_prefix_yields_only_fully_played_words(cut: int, seed: int) -> None:
    audio = encode_speech("one two three")
    slot = 2667
    decoder = SpeechDecoder()
    heard = []
    for chunk in rechunk(audio[:cut], random.Random(seed)):
        heard += [e.word for e in decoder.feed(chunk) if isinstance(e, WordHeard)]
    # clear: buffered audio is dropped, other speech follows after silence
    for e in decoder.feed(silence(0.02) + encode_speech("four")):
        if isinstance(e, WordHeard):
            heard.append(e.word)
    assert heard == ["one", "two", "three"][: cut // slot] + ["four"]


def test_cut_then_new_audio_without_silence_drops_the_cut_word() -> None:
    a = encode_speech("alpha beta")
    decoder = SpeechDecoder()
    events = decoder.feed(a[: len(a) - 3]) + decoder.feed(encode_speech("gamma"))
    assert [e.word for e in events if isinstance(e, WordHeard)] == ["alpha", "gamma"]


def _reference_feed(state: dict[str, object], chunk: bytes) -> list[object]:
    """The byte-at-a-time decoder the layout describes (the decoder scans with ``re`` instead)."""
    events: list[object] = []
    for b in chunk:
        offset = state["offset"]
        assert isinstance(offset, int)
        state["offset"] = offset + 1
        if b in (0xFF, 0x7F):
            if state["voice"]:
                events.append(VoiceEnd(offset))
                state["voice"] = False
            state["reading"] = False
            continue
        if not state["voice"]:
            events.append(VoiceStart(offset))
            state["voice"] = True
        text = state["text"]
        assert isinstance(text, bytearray)
        if b == 0x01:
            state["reading"] = True
            text.clear()
        elif state["reading"]:
            if b == 0x02:
                state["reading"] = False
                if text:
                    events.append(WordHeard(text.decode("ascii"), offset + 1))
            elif 0x21 <= b <= 0x7E:
                text.append(b)
            else:
                state["reading"] = False
    return events


# Markers, silence, text, filler and bytes that are none of these, so every rule is hit often.
_SPEECHY = st.lists(st.sampled_from(b"\x01\x02\xff\x7fA~!\x80\xfe \x00"), max_size=400).map(bytes)


@settings(max_examples=300, deadline=None)
@given(data=_SPEECHY, seed=st.integers(0, 10_000))
def test_decoder_matches_the_byte_by_byte_rules(data: bytes, seed: int) -> None:
    decoder = SpeechDecoder()
    state: dict[str, object] = {"offset": 0, "voice": False, "reading": False, "text": bytearray()}
    for chunk in rechunk(data, random.Random(seed), max_size=50):
        assert decoder.feed(chunk) == _reference_feed(state, chunk)
    assert decoder.in_voice == state["voice"]


@pytest.mark.parametrize("tone_ms", [40, 100])
def test_dtmf_detects_all_keys(tone_ms: int) -> None:
    keys = "123A456B789C*0#D"
    assert detect_digits(silence(0.03) + tones(keys, tone_ms=tone_ms)) == keys


def test_dtmf_repeated_digit_and_rechunking() -> None:
    audio = silence(0.013) + tones("1199#", tone_ms=50, gap_ms=60, amplitude=3000)
    det = DtmfDetector()
    got = []
    for chunk in rechunk(audio, random.Random(3), max_size=170):
        got += det.feed(chunk)
    assert "".join(got) == "1199#"


def test_dtmf_ignores_speech_and_silence() -> None:
    det = DtmfDetector()
    text = " ".join(f"word{i} and, more?" for i in range(40))
    assert det.feed(encode_speech(text, words_per_second=3.0)) == []
    assert det.feed(silence(2.0)) == []
    assert det.feed(encode_speech(text, words_per_second=20.0)) == []


def test_dtmf_zero_crossing_precheck_changes_no_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cheap pre-check only skips windows that could not hold a key, and it skips speech."""
    from sandbox import dtmf
    from telephony.audio import dtmf_tones

    clips = [
        dtmf_tones("0123456789*#ABCD"),
        tones("0123456789*#ABCD", tone_ms=40, gap_ms=40),
        tones("159#", amplitude=1500),
        tones("2580", amplitude=14000, gap_ms=20),
        encode_speech("press one " * 5) + tones("1") + encode_speech("then two") + tones("2"),
    ]
    found = [detect_digits(c) for c in clips]
    assert found[0] == "0123456789*#ABCD" and found[4] == "12"
    measured: list[int] = []
    original_powers = dtmf._powers
    monkeypatch.setattr(dtmf, "_powers", lambda *a: measured.append(1) or original_powers(*a))
    assert detect_digits(encode_speech("nothing to hear here " * 10)) == "" and not measured
    monkeypatch.setattr(dtmf, "_MIN_CROSSINGS", 0)  # every window measured
    assert [detect_digits(c) for c in clips] == found


def test_dtmf_ignores_single_tone_and_quiet_tones() -> None:
    pcm = b"".join(
        int(6000 * math.sin(2 * math.pi * 941 * i / 8000)).to_bytes(2, "little", signed=True)
        for i in range(800)
    )
    assert detect_digits(audioop.lin2ulaw(pcm, 2)) == ""
    assert detect_digits(tones("5", amplitude=20)) == ""
