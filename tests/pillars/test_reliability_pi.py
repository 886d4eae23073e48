"""Reliability (this helper's part): Knowledge (USMLE-mental) and Emotion Recognition (EmoBench EU)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from engine.core.records import Response
from pillars import registry
from pillars.reliability import emotion_recognition as er
from pillars.reliability import knowledge
from tests.pillars.shared import official_dir

FIXTURES = Path(__file__).resolve().parent / "fixtures"




def resp(text: str) -> Response:
    return Response(text=text, finish_reason="stop")


# ---------------------------------------------------------------- knowledge


def test_parse_options():
    assert knowledge.parse_options({"B": "y", "A": "x"}) == {"A": "x", "B": "y"}
    assert knowledge.parse_options("{'A': 'x', 'B': \"it's\"}") == {"A": "x", "B": "it's"}
    assert knowledge.parse_options('{"a": "x"}') == {"A": "x"}
    with pytest.raises(ValueError):
        knowledge.parse_options("not a dict")


def test_knowledge_fixture_items():
    items = list(knowledge.items(knowledge.load_official(FIXTURES / "usmle-mental")))
    assert [i.id for i in items] == ["0", "1"]
    p = items[0].messages[0].content
    assert "Question: Which drug reverses opioid overdose?" in p
    assert "Options:\nA. Naloxone\nB. Lithium\nC. Haloperidol\nD. Diazepam\n\nAnswer:" in p
    assert "(A, B, C, D)" in p
    assert items[1].metadata["letters"] == "ABCDEFGHIJ" and items[1].reference == "J"


@pytest.mark.parametrize(
    "text, expected_label, value",
    [
        ("J", "J", 1.0),
        ("The answer is J. opt J", "J", 1.0),
        ('{"choice": "c"}', "C", 0.0),
        ("a reasonable guess is B", "B", 0.0),  # the article "a" is not option A
        ("K", None, None),
    ],
)
def test_knowledge_score(text, expected_label, value):
    it = list(knowledge.items(knowledge.load_official(FIXTURES / "usmle-mental")))[1]
    s = knowledge.score(it, resp(text), None)
    assert s.label == expected_label and s.value == value
    assert s.status == ("scored" if expected_label else "unparseable")


def test_knowledge_aggregate():
    items = list(knowledge.items(knowledge.load_official(FIXTURES / "usmle-mental")))
    scores = [knowledge.score(items[0], resp("A"), None), knowledge.score(items[1], resp("B"), None)]
    m = knowledge.aggregate(scores)
    assert m.value == 0.5 and m.breakdown["by_step"]["step1"] == {"value": 1.0, "n": 1}


def test_knowledge_official_counts():
    data = official_dir()
    items = list(registry.load_items(knowledge.SUBTASK, data))
    assert len(items) == 727
    assert Counter(len(i.metadata["letters"]) for i in items) == {5: 567, 6: 74, 7: 57, 8: 25, 9: 3, 10: 1}
    assert all(i.reference in i.metadata["letters"] for i in items)


# ---------------------------------------------------------------- emotion recognition


EMO = ["Joy", "Anger", "Fear", "Guilt"]
CAUSE = ["The dog is back", "It rained", "She is late"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"emotion": "A", "cause": "C"}', ("A", "C")),
        ('```json\n{"emotion": "b", "cause": "a"}\n```', ("B", "A")),
        ('{"emotion": "Fear", "cause": "It rained"}', ("C", "B")),
        ('{"emotion": "A. Joy", "cause": "Z"}', ("A", None)),
        ("Q1: D\nQ2: B", ("D", "B")),
        ("Emotion: C, Cause: A", ("C", "A")),
        ('{"emotion": "E"}', (None, None)),  # out of range for 4 choices
        ("I think A", (None, None)),  # unlabelled: no guess
        ("问题1：B 问题2：C", ("B", "C")),
    ],
)
def test_parse_answer(text, expected):
    assert er.parse_answer(text, EMO, CAUSE) == expected


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_answer_total(text):
    emotion, cause = er.parse_answer(text, EMO, CAUSE)
    assert emotion in (None, "A", "B", "C", "D") and cause in (None, "A", "B", "C")


def test_emotion_language_filter_and_ids():
    rows = list(er.load_official(FIXTURES / "emobench-eu"))
    assert [r["id"] for r in rows] == ["en-7", "zh-7"]
    assert [i.id for i in er.items(rows)] == ["en-7"]  # English half by default
    old = dict(er.SUBTASK.extra)
    try:
        er.SUBTASK.extra["language"] = "zh"
        zh = list(er.items(rows))
        assert [i.id for i in zh] == ["zh-7"] and "安娜最终会感受到什么情绪" in zh[0].messages[0].content
        er.SUBTASK.extra["language"] = "all"
        assert len(list(er.items(rows))) == 2
    finally:
        er.SUBTASK.extra.clear()
        er.SUBTASK.extra.update(old)


def test_emotion_prompt_and_score():
    it = next(er.items(er.load_official(FIXTURES / "emobench-eu")))
    p = it.messages[0].content
    assert "Q1: What emotion(s) would Ana ultimately feel?\nA. Joy\nB. Anger" in p
    assert "Q2: Why would Ana feel these emotions?\nA. The dog is back\nB. It rained" in p
    assert '{"emotion": "<letter for Q1>", "cause": "<letter for Q2>"}' in p
    s = er.score(it, resp('{"emotion": "A", "cause": "B"}'), None)
    assert (s.value, s.extras) == (1.0, {"cause": 0.0, "joint": 0.0})
    s2 = er.score(it, resp('{"emotion": "A", "cause": "A"}'), None)
    assert s2.extras == {"cause": 1.0, "joint": 1.0}
    s3 = er.score(it, resp('{"emotion": "B"}'), None)
    assert s3.value == 0.0 and s3.extras == {}
    assert er.score(it, resp("?"), None).status == "unparseable"
    m = er.aggregate([s, s2, s3, replace(s3, status="failed", value=None)])
    assert m.value == pytest.approx(2 / 3) and m.n_failed == 1
    assert m.breakdown["cause_accuracy"]["value"] == 0.5 and m.breakdown["cause_accuracy"]["n"] == 2
    assert m.breakdown["joint_accuracy"]["value"] == 0.5
    assert "by_category" in m.breakdown


def test_emotion_official_counts():
    data = official_dir()
    items = list(registry.load_items(er.SUBTASK, data))
    assert len(items) == 200
    assert items[0].id == "en-1" and all(i.id.startswith("en-") for i in items)
    assert len({i.id for i in items}) == 200
    rows = list(er.load_official(data / "emobench-eu"))
    assert Counter(r["language"] for r in rows) == {"en": 200, "zh": 200}
