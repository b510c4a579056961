"""Hold music in the sandbox: real audio that is not speech, which the sandbox Deepgram (Nova and Flux)
hears as Deepgram documents it: no words, no ``SpeechStarted``, no turn started or ended by music."""

from __future__ import annotations

import math
import random
from typing import Any

from sandbox.deepgram_flux import FluxTranscriber
from sandbox.deepgram_stt import Transcriber
from sandbox.speech import SAMPLE_RATE, SpeechGate, encode_speech, hold_music, is_silent, silence

Message = dict[str, Any]
NOVA_QUERY = {
    "model": "nova-3",
    "encoding": "mulaw",
    "sample_rate": "8000",
    "interim_results": "true",
    "vad_events": "true",
    "punctuate": "true",
    "endpointing": "300",
    "utterance_end_ms": "1000",
}
FLUX_QUERY = {"model": "flux-general-en", "encoding": "mulaw", "sample_rate": "8000"}


def chunks(audio: bytes, rng: random.Random, max_size: int = 400) -> list[bytes]:
    out, i = [], 0
    while i < len(audio):
        n = rng.randint(1, max_size)
        out.append(audio[i : i + n])
        i += n
    return out


def test_hold_music_is_sound_with_both_half_waves_and_no_silent_byte() -> None:
    music = hold_music(3.0)
    assert len(music) == 24_000
    assert not any(is_silent(music[i : i + 160]) for i in range(0, len(music), 160))
    assert 0xFF not in music and 0x7F not in music
    assert min(music) < 0x80 <= max(music)  # negative and positive samples: a waveform, not filler
    assert len(set(music)) > 40


def test_gate_passes_speech_unchanged_and_turns_music_into_silence() -> None:
    speech = silence(0.2) + encode_speech("thanks for holding") + silence(0.3)
    for seed in range(20):
        gate = SpeechGate()
        assert b"".join(gate.feed(c) for c in chunks(speech, random.Random(seed))) == speech
    audio = hold_music(2.0) + silence(0.5) + encode_speech("hello again") + silence(0.3)
    gate = SpeechGate()
    out = b"".join(gate.feed(c) for c in chunks(audio, random.Random(7)))
    music_end = len(hold_music(2.0))
    assert len(out) == len(audio)
    assert is_silent(out[:music_end])
    assert out[music_end:] == audio[music_end:]


def test_a_pure_tone_with_exact_zero_samples_is_not_speech_either() -> None:
    """A 1 kHz sine has a µ-law zero every half-wave: its sounds are 3-byte runs, none a word."""
    pcm = [round(8000 * math.sin(2 * math.pi * 1000 * i / SAMPLE_RATE)) for i in range(4000)]
    beep = bytes(_ulaw(x) for x in pcm)
    assert beep.count(0xFF) > 100  # the zeros really split it into short sounds
    gate = SpeechGate()
    assert is_silent(b"".join(gate.feed(c) for c in chunks(beep, random.Random(3), max_size=160)))


def _ulaw(sample: int) -> int:
    """µ-law without the sandbox music's zero nudge (as audioop.lin2ulaw encodes)."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = max(0, magnitude.bit_length() - 8)
    return ~(sign | (exponent << 4) | ((magnitude >> (exponent + 3)) & 0x0F)) & 0xFF


def test_nova_transcribes_nothing_from_music_then_the_callee_as_usual() -> None:
    stt = Transcriber(NOVA_QUERY)
    during: list[Message] = []
    for c in chunks(hold_music(10.0), random.Random(1), max_size=160):
        during += stt.feed(c)
    assert not [m for m in during if m["type"] == "SpeechStarted"]
    words = [m for m in during if m["type"] == "Results" and m["channel"]["alternatives"][0]["transcript"]]
    assert words == []
    assert not [m for m in during if m["type"] == "UtteranceEnd"]
    after = stt.feed(silence(0.5) + encode_speech("Thanks for holding.") + silence(1.5))
    assert [m["type"] for m in after].count("SpeechStarted") == 1
    finals = [m for m in after if m["type"] == "Results" and m["is_final"]]
    assert " ".join(m["channel"]["alternatives"][0]["transcript"] for m in finals) == "Thanks for holding."


def test_flux_opens_and_ends_no_turn_on_music_then_a_turn_on_speech() -> None:
    stt = FluxTranscriber(FLUX_QUERY)
    during: list[Message] = []
    for c in chunks(hold_music(10.0), random.Random(2), max_size=160):
        during += stt.feed(c)
    assert during == []  # no StartOfTurn (so no barge-in), no words, no EndOfTurn: no turn at all
    after = stt.feed(silence(0.5) + encode_speech("Thanks for holding.") + silence(1.0))
    changes = [(m["event"], m["transcript"]) for m in after if m.get("event") not in (None, "Update")]
    assert changes[0] == ("StartOfTurn", "")
    assert changes[-1] == ("EndOfTurn", "Thanks for holding.")
