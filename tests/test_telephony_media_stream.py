"""Pure tests of the Twilio media-stream codec and the µ-law helpers (exact JSON from protocols.md)."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from telephony import audio, media_stream
from telephony.media_stream import Connected, Dtmf, Mark, Media, Start, Stop, parse

PAYLOAD = bytes(range(256)) + b"\xff" * 64
B64 = base64.b64encode(PAYLOAD).decode()


def test_parse_connected() -> None:
    assert parse('{"event":"connected","protocol":"Call","version":"1.0.0"}') == Connected()


def test_parse_start() -> None:
    msg = {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": "MZ123",
        "start": {
            "accountSid": "AC1",
            "streamSid": "MZ123",
            "callSid": "CA9",
            "tracks": ["inbound"],
            "customParameters": {"job": "j1", "token": "tok"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
    ev = parse(json.dumps(msg))
    assert ev == Start(
        "MZ123",
        "CA9",
        {"job": "j1", "token": "tok"},
        {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    )


def test_parse_media_bytes_and_bytes_input() -> None:
    msg = (
        '{"event":"media","sequenceNumber":"3","streamSid":"MZ1",'
        f'"media":{{"track":"inbound","chunk":"2","timestamp":"5","payload":"{B64}"}}}}'
    )
    assert parse(msg) == Media(PAYLOAD, 5, 2)
    assert parse(msg.encode()) == Media(PAYLOAD, 5, 2)


def test_parse_dtmf_mark_stop() -> None:
    assert parse('{"event":"dtmf","dtmf":{"track":"inbound_track","digit":"1"}}') == Dtmf("1")
    assert parse('{"event":"mark","mark":{"name":"m7"}}') == Mark("m7")
    assert parse('{"event":"stop","stop":{"accountSid":"AC1","callSid":"CA9"}}') == Stop()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "",
        "[1,2]",
        '"media"',
        '{"event":"media"}',
        '{"event":"media","media":{"payload":"@@@not-base64@@@"}}',
        '{"event":"media","media":{"payload":"AAA"}}',  # bad padding
        '{"event":"media","media":{"payload":"AAAA","timestamp":"x"}}',
        '{"event":"media","media":"nope"}',
        '{"event":"start","start":{"streamSid":"MZ"}}',
        '{"event":"start","start":{"callSid":"CA","streamSid":"MZ","customParameters":[1]}}',
        '{"event":"mark","mark":{}}',
        '{"event":"dtmf"}',
        '{"event":"whatever"}',
        '{"no_event":true}',
    ],
)
def test_malformed_is_skipped_never_raised(text: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="telephony.media_stream"):
        assert parse(text) is None
    assert caplog.records, "a skipped message is logged"


def test_builders_round_trip_as_json() -> None:
    m = json.loads(media_stream.media_msg("MZ1", PAYLOAD))
    assert m == {"event": "media", "streamSid": "MZ1", "media": {"payload": B64}}
    assert json.loads(media_stream.mark_msg("MZ1", 'a"b')) == {
        "event": "mark",
        "streamSid": "MZ1",
        "mark": {"name": 'a"b'},
    }
    assert json.loads(media_stream.clear_msg("MZ1")) == {"event": "clear", "streamSid": "MZ1"}


def test_silence_helpers() -> None:
    assert audio.FRAME_BYTES == 160 and audio.SILENCE_BYTE == 0xFF
    assert audio.is_silence(audio.silence(0.02)) and len(audio.silence(0.02)) == 160
    assert not audio.is_silence(b"\xff\x10\xff")


def test_dtmf_tones_shape() -> None:
    tones = audio.dtmf_tones("12#", tone_ms=100, gap_ms=60)
    assert len(tones) == 3 * (800 + 480)
    assert not audio.is_silence(tones[:800])
    assert audio.is_silence(tones[800:1280])
    with pytest.raises(ValueError):
        audio.dtmf_tones("x")


def test_dtmf_tones_are_detected_by_the_sandbox_line() -> None:
    from sandbox.dtmf import DtmfDetector

    det = DtmfDetector()
    tones = audio.dtmf_tones("1905*#")
    heard: list[str] = []
    for i in range(0, len(tones), 160):  # as Twilio frames
        heard += det.feed(tones[i : i + 160])
    assert "".join(heard) == "1905*#"
