"""The scripted callee as a pure frame-by-frame state machine (no sockets)."""

from __future__ import annotations

from sandbox.callee import Beep, Callee, CalleeScript, HangUp, Interrupt, Pause, Say, WaitTurn
from sandbox.dtmf import detect_digits
from sandbox.speech import decode_text, encode_speech, is_silent, silence


def run(callee: Callee, assistant: bytes, frames: int) -> bytes:
    """Play ``assistant`` audio (then nothing) for ``frames`` frames; return what the callee said."""
    said = bytearray()
    for i in range(frames):
        frame = callee.tick(assistant[i * 160 : (i + 1) * 160])
        if frame is None:
            break
        said += frame
    return bytes(said)


def test_turn_ends_after_400ms_of_audio_silence_and_is_consumed_in_order() -> None:
    callee = Callee(CalleeScript([WaitTurn(contains="second"), Say("ok"), HangUp()]))
    audio = encode_speech("first turn") + silence(0.38) + encode_speech("still first") + silence(0.5)
    audio += encode_speech("second turn") + silence(0.5)
    said = run(callee, audio, 1000)
    assert callee.heard == ["first turn still first", "second turn"]
    assert decode_text(said) == "ok" and callee.hung_up and callee.errors == []
    # the callee answered 20 frames (400 ms) after the frame holding the second turn's last voice byte
    last_voice_frame = (len(audio) - 4000 - 1) // 160
    first_voice = said.index(next(b for b in said if b != 0xFF))
    assert first_voice == (last_voice_frame + 20) * 160


def test_interrupt_skips_the_interrupted_turn() -> None:
    callee = Callee(CalleeScript([Interrupt(after_words=1, text="sorry"), WaitTurn(), HangUp()]))
    reply = encode_speech("alpha beta gamma")
    cut = 2667 + 800  # the app clears shortly after the barge-in
    audio = reply[:cut] + silence(1.0) + encode_speech("yes?") + silence(0.5)
    run(callee, audio, 1000)
    assert callee.said == ["sorry"] and callee.heard == ["alpha", "yes?"] and callee.hung_up


def test_pause_counts_audio_frames() -> None:
    callee = Callee(CalleeScript([Pause(0.2), Say("hi")]))
    said = run(callee, b"", 40)
    assert said[: 10 * 160] == silence(0.2) and decode_text(said) == "hi"
    assert not callee.hung_up and callee.script_done


def test_let_me_check_is_a_pause_inside_the_turn_not_its_end() -> None:
    """A lookup at real-world model latency leaves seconds of silence after "Let me check.": the
    receptionist waits for the answer (up to 5 s) instead of taking the floor after 400 ms."""
    callee = Callee(CalleeScript([WaitTurn(), Say("great"), HangUp()]))
    audio = encode_speech("Let me check.") + silence(1.5) + encode_speech("Tuesday works.") + silence(0.5)
    said = run(callee, audio, 1000)
    assert callee.heard == ["Let me check. Tuesday works."]
    assert decode_text(said) == "great" and callee.hung_up
    # ... but a lookup that never answers still ends the turn
    callee = Callee(CalleeScript([WaitTurn(), Say("hello?"), HangUp()]))
    said = run(callee, encode_speech("One moment.") + silence(6.0), 1000)
    assert callee.heard == ["One moment."] and decode_text(said) == "hello?"


def test_a_machine_beeps_a_tone_and_records_only_what_follows_it() -> None:
    callee = Callee(CalleeScript([Say("leave a message"), Beep(hz=1000.0, seconds=0.5)]))
    before = encode_speech("hello there")  # the assistant talking over the greeting
    said = bytearray()
    beeped_at = None
    for i in range(400):
        frame = callee.tick(before[i * 160 : (i + 1) * 160])
        assert frame is not None
        said += frame
        if callee.take_beeped():
            assert beeped_at is None  # reported once
            beeped_at = i
    assert beeped_at is not None and callee.recorded == []
    greeting = encode_speech("leave a message")
    beep = bytes(said[len(greeting) : len(greeting) + 4000])
    # a real tone: sound, but no speech words and no DTMF key in it
    assert not is_silent(beep) and decode_text(beep) == "" and detect_digits(beep) == ""
    assert decode_text(bytes(said)) == "leave a message"
    run(callee, encode_speech("call us back"), 100)
    assert callee.recorded == ["call", "us", "back"] and callee.heard[-1] == "call us back"
