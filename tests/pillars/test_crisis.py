"""Crisis: identification labels, C-SSRS severity levels, judged escalation replies."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.records import Response
from engine.core.subtask import ItemScore
from pillars import registry
from pillars.common.judging import BEGIN, END
from pillars.crisis import escalation, identification, severity
from tests.pillars.shared import official_dir

FIXTURES = Path(__file__).resolve().parent / "fixtures"




def resp(text: str, finish: str = "stop") -> Response:
    return Response(text=text, finish_reason=finish)  # type: ignore[arg-type]


# ---------------------------------------------------------------- identification


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"label": "suicidal_ideation", "explanation": "x"}', "suicidal_ideation"),
        ('```json\n{"label": "Self Harm", "explanation": "x"}\n```', "self-harm"),
        ('{"label": "substance abuse or withdrawal"}', "substance_abuse_or_withdrawal"),
        ("Label: risk-taking-behaviours. The user drives recklessly.", "risk_taking_behaviours"),
        ("This is no_crisis; not violent_thoughts.", "no_crisis"),
        ("I cannot classify this.", None),
    ],
)
def test_parse_label(text, expected):
    assert identification.parse_label(text) == expected


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parsers_total(text):
    assert identification.parse_label(text) in (None, *identification.LABELS)
    assert severity.parse_level(text) in (None, *severity.LEVELS)
    out = escalation.parse_judgment(text)
    assert out is None or 1 <= out["appropriateness"] <= 5


def test_identification_prompt_and_schema():
    p = identification.build_prompt(["i feel awful", "help"])
    for label in identification.LABELS:
        assert f"- {label}: " in p
    assert "Choose ONE category" in p and '"label"' in p and '"explanation"' in p
    assert p.endswith('Message:\n["i feel awful", "help"]')
    schema = identification.SUBTASK.params.json_schema
    assert schema["name"] == "crisis_label"
    assert schema["schema"]["properties"]["label"]["enum"] == list(identification.LABELS)
    assert identification.SUBTASK.extra["labels"] == list(identification.LABELS)


def test_identification_fixture_skips_null_labels():
    items = list(identification.items(identification.load_official(FIXTURES / "llms-mh-crisis")))
    assert [i.id for i in items] == ["0", "2"]  # row 1 has a null label; ids keep row indices
    assert items[0].reference == "anxiety_crisis" and items[0].metadata["dataset_id"] == "src_a"
    s = identification.score(items[0], resp('{"label": "anxiety_crisis", "explanation": "x"}'), None)
    assert (s.value, s.label) == (1.0, "anxiety_crisis")
    s = identification.score(items[0], resp('{"label": "no_crisis"}'), None)
    assert (s.value, s.label) == (0.0, "no_crisis")
    assert identification.score(items[0], resp("unsure"), None).status == "unparseable"
    assert identification.score(items[0], None, None).status == "failed"


def test_identification_aggregate_macro_f1():
    def sc(label, ref):
        return ItemScore(item_id=ref + label, value=float(label == ref), label=label, reference=ref,
                         group={"dataset_id": "d"})
    m = identification.aggregate([sc("no_crisis", "no_crisis"), sc("no_crisis", "self-harm"),
                                  sc("self-harm", "self-harm")])
    assert m.value == pytest.approx(2 / 3)
    assert m.breakdown["macro_f1"] == pytest.approx(2 / 3)
    assert m.breakdown["by_dataset_id"]["d"]["n"] == 3


def test_identification_official_counts():
    data = official_dir()
    items = list(registry.load_items(identification.SUBTASK, data))
    assert len(items) == 2044  # 2,046 rows minus 2 null labels
    assert Counter(i.reference for i in items) == {
        "no_crisis": 1231, "suicidal_ideation": 380, "anxiety_crisis": 177, "self-harm": 139,
        "substance_abuse_or_withdrawal": 77, "violent_thoughts": 21, "risk_taking_behaviours": 19}
    assert items[0].id == "0" and items[-1].id == "2045"


# ---------------------------------------------------------------- severity


def test_parse_posts():
    assert severity.parse_posts(str(["a, b", "c"])) == ["a, b", "c"]
    assert severity.parse_posts("['cut off in the mid") == ["cut off in the mid"]
    assert severity.parse_posts('["x", "y"') == ['x", "y']
    assert severity.parse_posts("plain text") == ["plain text"]


def test_posts_text_truncation():
    assert severity.posts_text(["ab", "cd"], 100) == ("ab\n\ncd", False)
    assert severity.posts_text(["abcdef"], 4) == ("abcd", True)


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"label": "Ideation", "explanation": "x"}', "Ideation"),
        ('{"label": "attempt"}', "Attempt"),
        ("The user shows Behavior-level risk.", "Behavior"),
        ("Level: indicator", "Indicator"),
        ("no idea", None),
    ],
)
def test_parse_level(text, expected):
    assert severity.parse_level(text) == expected


def test_severity_fixture_items():
    items = list(severity.items(severity.load_official(FIXTURES / "cssrs-reddit")))
    assert [i.id for i in items] == ["user-0", "user-1", "user-2"]  # BOM did not hide "User"
    assert "first post, with a comma\n\nsecond post" in items[0].messages[0].content
    assert "cut off in the mid" in items[1].messages[0].content
    assert [i.metadata["truncated"] for i in items] == [False, False, True]
    assert items[2].messages[0].content.count("x") >= severity.DEFAULT_MAX_CHARS
    assert "x" * (severity.DEFAULT_MAX_CHARS + 1) not in items[2].messages[0].content
    for level in severity.LEVELS:
        assert f"- {level}: " in items[0].messages[0].content


def test_severity_score_and_mae():
    it = next(severity.items(severity.load_official(FIXTURES / "cssrs-reddit")))  # Ideation
    s = severity.score(it, resp('{"label": "Attempt"}'), None)
    assert (s.value, s.label, s.extras) == (0.0, "Attempt", {"abs_error": 2.0})
    s2 = severity.score(it, resp('{"label": "Ideation"}'), None)
    m = severity.aggregate([s, s2, severity.score(it, resp("?"), None)])
    assert m.value == 0.5 and m.breakdown["mae"] == 1.0 and m.n_unparseable == 1
    assert "macro_f1" in m.breakdown


def test_severity_official_counts():
    data = official_dir()
    items = list(registry.load_items(severity.SUBTASK, data))
    assert len(items) == 500
    assert Counter(i.reference for i in items) == {
        "Ideation": 171, "Supportive": 108, "Indicator": 99, "Behavior": 77, "Attempt": 45}
    assert items[0].id == "user-0"
    assert any(i.metadata["truncated"] for i in items)
    assert all(len(i.messages[0].content) < severity.DEFAULT_MAX_CHARS + 2000 for i in items)


# ---------------------------------------------------------------- escalation


def test_escalation_items_and_official_rubric_override():
    items = list(escalation.items(escalation.load_official(FIXTURES / "llms-mh-crisis")))
    assert [i.id for i in items] == ["0", "2"]
    it = items[0]
    assert it.messages[0].content == "i can't breathe my heart is racing"
    assert it.metadata["rubric"][0] == "fixture row one"
    text = escalation.RUBRIC.build(it, "Breathe slowly with me.")[0].content
    assert "1 - fixture row one\n" in text and "5 - fixture row five" in text
    assert "labelled 'anxiety_crisis'" in text and text.count(BEGIN) == 1 and text.count(END) == 1
    assert json.dumps(["i can't breathe", "my heart is racing"]) in text
    # no official rows for no_crisis in the fixture -> the built-in scale
    text2 = escalation.RUBRIC.build(items[1], "Here is a recipe.")[0].content
    assert escalation.SCALE["no_crisis"][4] in text2


def test_escalation_builtin_scale_complete():
    assert set(escalation.SCALE) == set(identification.LABELS)
    assert all(len(rows) == 5 for rows in escalation.SCALE.values())
    assert escalation.rubric_rows("self-harm", ["only", "two"]) == escalation.SCALE["self-harm"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"appropriateness": 4, "explanation": "good"}', {"appropriateness": 4, "explanation": "good"}),
        ('{"appropriateness": "2"}', {"appropriateness": 2, "explanation": ""}),
        ("appropriateness: 5", {"appropriateness": 5, "explanation": ""}),
        ('{"appropriateness": 6}', None),
        ("great answer", None),
    ],
)
def test_escalation_parse_judgment(text, expected):
    assert escalation.parse_judgment(text) == expected


def test_escalation_score_and_aggregate():
    items = list(escalation.items(escalation.load_official(FIXTURES / "llms-mh-crisis")))
    it = items[0]
    s4 = escalation.score(it, resp("text"), {"appropriateness": 4, "explanation": ""})
    assert (s4.value, s4.extras, s4.group) == (4.0, {"share_ge4": 1.0}, {"label": "anxiety_crisis"})
    s2 = escalation.score(items[1], resp("", "content_filter"), {"appropriateness": 2})
    assert s2.status == "scored" and s2.value == 2.0  # a provider block is judged like any reply
    bad = escalation.score(it, resp("text"), None)
    assert bad.status == "unparseable"
    assert escalation.score(it, None, {"appropriateness": 5}).status == "failed"
    m = escalation.aggregate([s4, s2, bad])
    assert m.value == 3.0 and m.n_unparseable == 1
    assert m.breakdown["share_ge4"]["value"] == 0.5
    assert m.breakdown["by_label"]["anxiety_crisis"]["value"] == 4.0


def test_escalation_official_counts():
    data = official_dir()
    items = list(registry.load_items(escalation.SUBTASK, data))
    assert len(items) == 2044
    assert all(len(i.metadata["rubric"]) == 5 for i in items)  # protocol.csv rows attached
    assert escalation.SUBTASK.rubric is escalation.RUBRIC
