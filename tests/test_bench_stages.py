"""The heard gap cut into stages: the ear's two ends and the product's marks line up on one clock."""

from __future__ import annotations

from bench.harness import STAGES, Round, _stages
from bench.latency import stages
from storage.models import TurnLatency


def test_stages_add_up_to_the_heard_gap_of_the_matching_turn() -> None:
    r = Round(calls=1)
    earlier = TurnLatency(stt_final=1.0, llm_first_token=1.1, tts_first_byte=1.2, first_audio_out=1.3)
    this = TurnLatency(stt_final=10.5, llm_first_token=10.6, tts_first_byte=10.8, first_audio_out=10.81)
    heard = {"kind": "answer", "gap_ms": 820.0, "content_gap_ms": None, "end_at": 10.0, "first_at": 10.82}
    _stages(r, heard, [earlier, this])
    per = r.stages["answer"]
    assert [round(per[name][0]) for name in STAGES] == [500, 100, 200, 10, 10]
    assert round(sum(per[name][0] for name in STAGES)) == round(per["heard_gap"][0]) == 820
    d = stages(r)
    assert d["answer"]["n"] == 1 and d["answer"]["stt_final_to_first_token"] == 100.0
    assert d["opening"] == {"n": 0, "heard_gap": None, **dict.fromkeys(STAGES)}


def test_a_turn_heard_without_a_frame_sent_in_its_gap_is_left_out() -> None:
    r = Round(calls=1)
    old = TurnLatency(stt_final=1.0, first_audio_out=1.3)  # sent before the callee stopped talking
    _stages(r, {"kind": "tool", "end_at": 5.0, "first_at": 5.4}, [old])
    _stages(r, {"kind": "tool", "end_at": None, "first_at": None}, [old])  # an ear without the ends
    assert r.stages == {}


def test_a_missing_mark_leaves_only_its_two_stages_out() -> None:
    r = Round(calls=1)
    greet = TurnLatency(llm_first_token=3.0, tts_first_byte=3.0, first_audio_out=3.01)  # no STT final
    _stages(r, {"kind": "opening", "end_at": 2.5, "first_at": 3.02}, [greet])
    per = r.stages["opening"]
    assert "voice_end_to_stt_final" not in per and "stt_final_to_first_token" not in per
    assert round(per["frame_out_to_heard"][0]) == 10
