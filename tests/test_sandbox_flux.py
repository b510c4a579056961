"""Sandbox Deepgram Flux (``/v2/listen``): the pure turn state machine, then the REAL deepgram-sdk."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import aiohttp
import pytest

from sandbox.deepgram import SandboxDeepgram
from sandbox.deepgram_flux import FluxTranscriber
from sandbox.speech import encode_speech, silence

with warnings.catch_warnings():
    # deepgram-sdk 7.x imports websockets' legacy client, which warns with websockets >= 14.
    warnings.simplefilter("ignore", DeprecationWarning)
    import deepgram.listen.v2.client  # noqa: F401  (the SDK imports it lazily, at first connect)
    from deepgram import AsyncDeepgramClient, DeepgramClientEnvironment
    from deepgram.core.api_error import ApiError

KEY = "dg-test-key"  # what the shared ``dg`` fixture (tests/conftest.py) accepts
SLOT = 2667  # bytes per word at 3 words per second
SENTENCE = "Yes we have Tuesday at three."
Message = dict[str, Any]


def flux(**query: str) -> FluxTranscriber:
    return FluxTranscriber({"model": "flux-general-en", "encoding": "mulaw", "sample_rate": "8000", **query})


def feed_in_chunks(stt: FluxTranscriber, audio: bytes, size: int = 320) -> list[Message]:
    out: list[Message] = []
    for i in range(0, len(audio), size):
        out += stt.feed(audio[i : i + size])
    return out


def events(messages: list[Message]) -> list[str]:
    return [m["event"] for m in messages if m["type"] == "TurnInfo"]


def turns(messages: list[Message]) -> list[tuple[str, str]]:
    """(event, transcript) of every state change (Updates left out)."""
    return [(m["event"], m["transcript"]) for m in messages if m.get("event") not in (None, "Update")]


def assert_documented_rules(messages: list[Message]) -> None:
    """Deepgram's published Flux state-machine rules, checked on a whole message stream."""
    assert [m["sequence_id"] for m in messages] == list(range(len(messages)))
    state, turn_index, eager_transcript, last_end = "Initial", 0, None, 0.0
    for m in (m for m in messages if m["type"] == "TurnInfo"):
        event = m["event"]
        assert m["turn_index"] == turn_index
        assert m["audio_window_end"] >= last_end
        last_end = m["audio_window_end"]
        assert ("trigger" in m) == (event == "EndOfTurn")
        if event == "StartOfTurn":
            assert state == "Initial"
            state = "TurnOngoing"
        elif event == "Update":
            assert state != "Initial"
            if eager_transcript is not None:
                assert m["transcript"] == eager_transcript  # changes only after TurnResumed
        elif event == "EagerEndOfTurn":
            assert state == "TurnOngoing" and m["transcript"]
            state, eager_transcript = "AwaitingEnd", m["transcript"]
        elif event == "TurnResumed":
            assert state == "AwaitingEnd"
            state, eager_transcript = "TurnOngoing", None
        elif event == "EndOfTurn":
            assert state != "Initial"
            if eager_transcript is not None:
                assert m["transcript"] == eager_transcript
            state, eager_transcript, turn_index = "Initial", None, turn_index + 1


# ---------------------------------------------------------------- pure state machine


def test_one_utterance_with_eager_then_next_turn() -> None:
    stt = flux(eager_eot_threshold="0.5", eot_threshold="0.7")
    out = [stt.connected(), *feed_in_chunks(stt, encode_speech(SENTENCE) + silence(0.6))]
    assert out[0] == {"type": "Connected", "request_id": stt.request_id, "sequence_id": 0}
    voice_end = 6 * SLOT
    assert events(out) == ["StartOfTurn"] + ["Update"] * 8 + ["EagerEndOfTurn", "Update", "EndOfTurn"]
    start, eager, end = out[1], out[-3], out[-1]
    assert start["transcript"] == "" and start["audio_window_end"] == 0 and start["words"] == []
    updates = [m["audio_window_end"] for m in out if m.get("event") == "Update"]
    assert updates == [n / 8000 for n in (*range(2000, 16001, 2000), 18000)]
    assert eager["transcript"] == end["transcript"] == SENTENCE
    assert eager["audio_window_end"] == (voice_end + 1600) / 8000  # 0.5 x 400 ms
    assert end["audio_window_end"] == (voice_end + 2240) / 8000  # 0.7 x 400 ms
    assert (eager["end_of_turn_confidence"], end["end_of_turn_confidence"]) == (0.5, 0.7)
    assert end["trigger"] == "model" and "trigger" not in eager
    assert end["words"][0] == {"word": "Yes", "confidence": 0.99, "start": 0.0, "end": SLOT / 8000}
    assert end["words"][-1]["word"] == "three." and end["words"][-1]["end"] == voice_end / 8000
    assert {m["request_id"] for m in out} == {stt.request_id}
    assert {m["turn_index"] for m in out[1:]} == {0}

    nxt = stt.feed(encode_speech("ok") + silence(0.5))
    assert turns(nxt) == [("StartOfTurn", ""), ("EagerEndOfTurn", "ok"), ("EndOfTurn", "ok")]
    assert {m["turn_index"] for m in nxt} == {1}
    assert nxt[0]["audio_window_start"] == end["audio_window_end"]
    assert_documented_rules(out + nxt)


def test_eager_off_and_chunking_does_not_matter() -> None:
    audio = silence(0.3) + encode_speech(SENTENCE) + silence(0.6)
    whole, chunked = flux(), flux()
    a, b = whole.feed(audio), feed_in_chunks(chunked, audio, size=160)
    assert [{**m, "request_id": ""} for m in a] == [{**m, "request_id": ""} for m in b]
    assert turns(a) == [("StartOfTurn", ""), ("EndOfTurn", SENTENCE)]
    assert a[0]["audio_window_end"] == 0.3  # voice onset, not the first word
    assert a[-1]["audio_window_end"] == (2400 + 6 * SLOT + 2240) / 8000
    assert_documented_rules(a)


def test_pause_then_resume_extends_the_same_turn() -> None:
    stt = flux(eager_eot_threshold="0.5", eot_threshold="0.9")  # eager at 200 ms, end at 360 ms
    out = [stt.connected()]
    out += feed_in_chunks(stt, encode_speech("I need") + silence(0.3) + encode_speech("Tuesday please"))
    out += feed_in_chunks(stt, silence(0.5))
    assert turns(out) == [
        ("StartOfTurn", ""),
        ("EagerEndOfTurn", "I need"),
        ("TurnResumed", "I need"),
        ("EagerEndOfTurn", "I need Tuesday please"),
        ("EndOfTurn", "I need Tuesday please"),
    ]
    resumed = next(m for m in out if m.get("event") == "TurnResumed")
    assert resumed["audio_window_end"] == (2 * SLOT + 2400) / 8000
    assert out[-1]["end_of_turn_confidence"] == 0.9
    assert_documented_rules(out)


def test_state_change_replaces_the_update_at_the_same_offset() -> None:
    # voice ends at 2000 - 1600 so the eager point lands exactly on the 2000-byte update tick
    stt = flux(eager_eot_threshold="0.5")
    word = encode_speech("hi", words_per_second=800)
    out = stt.feed(b"\x90" * (400 - len(word)) + word + silence(0.4))
    eager = next(m for m in out if m["event"] == "EagerEndOfTurn")
    assert eager["audio_window_end"] == 0.25
    assert [m["event"] for m in out if m["audio_window_end"] == 0.25] == ["EagerEndOfTurn"]
    assert_documented_rules(out)


def test_force_end_turn_mid_speech_and_words_after_it_open_a_new_turn() -> None:
    stt = flux()
    out = [stt.connected(), *stt.feed(encode_speech("one two three"))]
    forced = stt.control({"type": "ForceEndTurn"})
    assert turns(forced) == [("EndOfTurn", "one two three")]
    assert forced[0]["trigger"] == "manual" and forced[0]["audio_window_end"] == 3 * SLOT / 8000
    assert stt.control({"type": "ForceEndTurn"}) == []  # no turn open: ignored
    more = stt.feed(encode_speech("four") + silence(0.5))  # still the same voice: no new VoiceStart
    assert turns(more) == [("StartOfTurn", "four"), ("EndOfTurn", "four")]
    assert more[0]["turn_index"] == 1 and more[0]["words"][0]["start"] == 3 * SLOT / 8000
    assert_documented_rules(out + forced + more)


def test_close_stream_reports_pending_audio_without_ending_the_turn() -> None:
    stt = flux(eager_eot_threshold="0.5")
    out = [stt.connected(), *stt.feed(encode_speech("one two"))]
    assert events(out) == ["StartOfTurn", "Update", "Update"]
    tail = stt.close_stream()
    assert [(m["event"], m["transcript"], m["audio_window_end"]) for m in tail] == [
        ("Update", "one two", 2 * SLOT / 8000)
    ]
    assert_documented_rules(out + tail)
    done = flux()
    done.feed(encode_speech("yes") + silence(0.5))
    assert done.close_stream() == []  # the turn already ended


def test_voice_without_words_ends_by_timeout() -> None:
    stt = flux(eot_timeout_ms="500")
    out = stt.feed(b"\x90" * 800 + silence(0.6))  # a cough: voice, no word
    assert turns(out) == [("StartOfTurn", ""), ("EndOfTurn", "")]
    assert out[-1]["trigger"] == "timeout" and out[-1]["audio_window_end"] == (800 + 4000) / 8000
    assert_documented_rules(out)


def test_configure_updates_thresholds_or_fails() -> None:
    stt = flux()
    stt.feed(encode_speech("hello") + silence(0.2))  # 200 ms: not yet an end at 0.7
    ok = stt.control({"type": "Configure", "thresholds": {"eot_threshold": 0.5}})
    assert ok[0]["type"] == "ConfigureSuccess" and ok[0]["sequence_id"] == 3  # after 3 TurnInfo
    assert ok[0]["thresholds"] == {"eot_threshold": 0.5, "eager_eot_threshold": None, "eot_timeout_ms": 5000}
    assert turns(ok[1:]) == [("EndOfTurn", "hello")]  # applied to the silence already heard
    bad = stt.control({"type": "Configure", "thresholds": {"eager_eot_threshold": 2}})
    assert bad[0]["type"] == "ConfigureFailure" and "eager_eot_threshold" in bad[0]["description"]
    assert stt.eager_eot_threshold is None and stt.control({"type": "Nonsense"}) == []


@pytest.mark.parametrize(
    "query",
    [{"model": "nova-3"}, {"model": "flux-general-en", "eot_threshold": "0.2"}, {"eot_timeout_ms": "x"}],
)
def test_bad_query_is_refused(query: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        FluxTranscriber({"model": "flux-general-en", **query})


# ---------------------------------------------------------------- the real SDK


def client(server: SandboxDeepgram, key: str = KEY) -> AsyncDeepgramClient:
    env = DeepgramClientEnvironment(
        base=server.http_url, production=server.ws_url, agent=server.ws_url, agent_rest=server.http_url
    )
    return AsyncDeepgramClient(api_key=key, environment=env)


async def test_sdk_flux_turn_with_eager_end_and_close_stream(dg: SandboxDeepgram) -> None:
    audio = encode_speech(SENTENCE) + silence(0.6)
    got: list[Any] = []
    async with client(dg).listen.v2.connect(
        model="flux-general-en",
        encoding="mulaw",
        sample_rate=8000,
        eager_eot_threshold="0.5",
        eot_threshold="0.7",
    ) as conn:
        for i in range(0, len(audio), 320):  # 40 ms frames, as fast as possible
            await conn.send_media(audio[i : i + 320])
        await conn.send_close_stream()
        async with asyncio.timeout(5):
            async for msg in conn:
                got.append(msg)
    assert got[0].type == "Connected" and got[0].sequence_id == 0
    infos = [m for m in got if m.type == "TurnInfo"]
    changes = [(m.event, m.transcript) for m in infos if m.event != "Update"]
    assert changes == [("StartOfTurn", ""), ("EagerEndOfTurn", SENTENCE), ("EndOfTurn", SENTENCE)]
    assert infos[-1].trigger == "model" and infos[-1].words[-1].word == "three."
    assert [m.sequence_id for m in got] == list(range(len(got)))
    session = dg.listens[0]
    assert session.bytes_received == len(audio) and session.closed_code == 1000
    assert session.query["eager_eot_threshold"] == "0.5" and session.text_received == [
        {"type": "CloseStream"}
    ]


async def test_sdk_force_end_turn_and_configure(dg: SandboxDeepgram) -> None:
    async with client(dg).listen.v2.connect(
        model="flux-general-en", encoding="mulaw", sample_rate=8000
    ) as conn:
        assert (await conn.recv()).type == "Connected"
        await conn.send_configure({"type": "Configure", "thresholds": {"eot_threshold": 0.9}})
        success = await conn.recv()
        assert success.type == "ConfigureSuccess" and success.thresholds.eot_threshold == 0.9
        await conn.send_media(encode_speech("wait"))
        await conn.send_force_end_turn()
        got: list[Any] = []
        async with asyncio.timeout(5):
            while not got or getattr(got[-1], "event", None) != "EndOfTurn":
                got.append(await conn.recv())
        assert (got[-1].trigger, got[-1].transcript) == ("manual", "wait")
        await conn.send_close_stream()
    assert dg.listens[0].closed_code == 1000


async def test_raw_socket_keepalive_and_400_body(dg: SandboxDeepgram) -> None:
    # The v2 SDK client has no send_keep_alive and hides the HTTP error body: plain aiohttp here.
    headers = {"Authorization": f"Token {KEY}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{dg.http_url}/v2/listen?model=nova-3") as refused:
            assert refused.status == 400
            body = await refused.json()
        assert body["err_code"] == "Bad Request" and "nova-3" in body["err_msg"]
        async with http.ws_connect(f"{dg.ws_url}/v2/listen?model=flux-general-multi") as ws:
            assert (await ws.receive_json(timeout=5))["type"] == "Connected"
            await ws.send_json({"type": "KeepAlive"})
            await ws.send_json({"type": "SomethingNew"})  # tolerated, unanswered
            await ws.send_json({"type": "CloseStream"})
            closed = await ws.receive(timeout=5)
            assert closed.type == aiohttp.WSMsgType.CLOSE and closed.data == 1000
    session = dg.listens[0]
    assert session.keepalives == 1 and [m["type"] for m in session.messages_sent] == ["Connected"]


async def test_bad_key_and_non_flux_model_are_rejected(dg: SandboxDeepgram) -> None:
    with pytest.raises(ApiError) as err:
        async with client(dg, "wrong").listen.v2.connect(model="flux-general-en"):
            pass
    assert err.value.status_code == 401
    with pytest.raises(ApiError) as err:
        async with client(dg).listen.v2.connect(model="nova-3"):
            pass
    assert err.value.status_code == 400
    assert dg.rejected == 2 and dg.listens == []
