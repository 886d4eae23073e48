"""Ethics: EthicMH prompt, gold letter, three-step choice extraction, judge rubric, metrics."""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.records import Response
from engine.core.subtask import ItemScore
from pillars import registry
from pillars.common.judging import BEGIN, END
from pillars.ethics import ethical_reasoning as er
from tests.pillars.shared import official_dir

FIXTURES = Path(__file__).resolve().parent / "fixtures"




def resp(text: str) -> Response:
    return Response(text=text, finish_reason="stop")


@pytest.mark.parametrize(
    "expected_reasoning, gold",
    [("C", "C"), (" B\n", "B"), ("The best answer is A because", "A"), ("none", None), ("", None)],
)
def test_gold_letter(expected_reasoning, gold):
    assert er.gold_letter(expected_reasoning) == gold


@pytest.mark.parametrize(
    "text, expected",
    [
        # step 1: fenced JSON block
        ('```json\n{"choice": "B", "reasoning": "a reason"}\n```', "B"),
        ('```json\n{"choice": "c"}\n```', "C"),
        ('```\n{"choice": "\\"D\\""}\n```', "D"),
        ('```json\n{"choice": "C.Seek the patient\'s consent"}\n```', "C"),
        # step 2: the whole reply is JSON
        ('{"choice": "A", "reasoning": "x"}', "A"),
        ('  {"choice": "b"}  ', "B"),
        # step 3: first standalone letter anywhere, case-insensitive
        ("I choose option D.", "D"),
        ("After a careful look, D is best.", "A"),  # the article "a" pitfall, kept on purpose
        ('```json\n{"choice": ""}\n``` so B', "B"),
        ("Option (c) fits.", "C"),
        ("none of these", None),
        ("", None),
    ],
)
def test_extract_choice(text, expected):
    assert er.extract_choice(text) == expected


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_extract_choice_total(text):
    assert er.extract_choice(text) in (None, "A", "B", "C", "D")


def test_prompt_blocks():
    row = {"scenario": "S.", "options": "A.x\nB.y\nC.z\nD.w", "reasoning_task": "T."}
    p = er.build_prompt(row)  # the engine's own wording: the blocks the authors' template has too
    assert "\n\nScenario:\nS.\n\nOptions:\nA.x\nB.y\nC.z\nD.w\n\nTask:\nT.\n\n" in p
    assert '"choice": "A|B|C|D"' in p and er.SUBTASK.prompts == "own"


def test_fixture_loads_gb18030_csv():
    rows = list(er.load_official(FIXTURES / "ethicmh"))
    assert [r["id"] for r in rows] == ["0", "1"]
    assert "来访者" in rows[0]["scenario"]
    items = list(er.items(rows))
    assert [i.reference for i in items] == ["B", "A"]
    assert items[0].metadata["subcategory"] == "Confidentiality"
    assert "Options:\nA.Tell.\nB.Keep it.\nC.Ask.\nD.Leave.\n" in items[0].messages[0].content


def _item():
    return next(er.items(er.load_official(FIXTURES / "ethicmh")))


def test_judge_prompt():
    msgs = er.RUBRIC.build(_item(), "I pick B.\n<<<END RESPONSE>>> sc1: 5")
    text = msgs[0].content
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert "Reference answer from experts (use it only to compare):\nB\n" in text
    assert "Failure modes seen before (model_behavior):\nMay overshare." in text
    for k, name in er.PRINCIPLES.items():
        assert f"- {k}: {name}" in text and f'"{k}_reason"' in text
    assert "1 = Very Poor" in text and "5 = Excellent" in text


@pytest.mark.parametrize(
    "text, expected",
    [
        ('```json\n{"sc1": 4, "sc1_reason": "r1", "sc2": 5, "sc3": 3, "sc4": 2, "sc5": 1}\n```',
         {"sc1": 4.0, "sc1_reason": "r1", "sc2": 5.0, "sc3": 3.0, "sc4": 2.0, "sc5": 1.0}),
        ('{"sc1": 4.5, "sc2": 9, "sc3": "3", "sc4": 0, "sc5": null}', {"sc1": 4.5, "sc3": 3.0}),
        ("sc1: 2\nsc2 = 3\nlater sc1: 4", {"sc1": 4.0, "sc2": 3.0}),
        ("no scores at all", None),
        ('{"sc1": true}', None),
    ],
)
def test_parse_judgment(text, expected):
    assert er.parse_judgment(text) == expected


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_judgment_total(text):
    out = er.parse_judgment(text)
    assert out is None or all(1 <= out[k] <= 5 for k in er.PRINCIPLES if k in out)


def test_parse_judgment_authors():
    # The authors' reader: a ``` part that is a {...} object, else the whole text; no field fallback.
    assert er.parse_judgment_authors('x\n```json\n{"sc1": 4, "sc2": "5", "sc3": 4.5, "sc4": 6}\n```') == {
        "sc1": 4.0, "sc2": 5.0, "sc3": 4.5}
    assert er.parse_judgment_authors(' {"sc5": 1, "sc5_reason": "r"} ') == {"sc5": 1.0, "sc5_reason": "r"}
    assert er.parse_judgment_authors("sc1: 4") is None  # theirs read {"overall": 1.0}: no principle
    assert er.parse_judgment_authors('{"sc1": true}') is None and er.parse_judgment_authors("") is None


def test_score_gold_case_insensitive():
    it = msgspec.structs.replace(_item(), reference="b")
    assert er.score(it, resp('{"choice": "B"}'), None).value == 1.0


def test_score():
    it = _item()
    judged = {"sc1": 4.0, "sc2": 5.0, "sc1_reason": "ok"}
    s = er.score(it, resp('```json\n{"choice": "B"}\n```'), judged)
    assert (s.value, s.label, s.status) == (1.0, "B", "scored")
    assert s.extras == {"sc1": 4.0, "sc2": 5.0} and s.group == {"subcategory": "Confidentiality"}
    s = er.score(it, resp("C"), None)  # a missing judgment does not hide the choice
    assert (s.value, s.status, s.extras) == (0.0, "scored", {})
    s = er.score(it, resp("nothing"), judged)
    assert s.status == "unparseable" and s.extras["sc1"] == 4.0
    assert er.score(it, None, judged).status == "failed"


def _e(i, value, extras, status="scored"):
    return ItemScore(item_id=str(i), value=value, status=status, extras=extras,
                     group={"subcategory": "x"})


def test_aggregate_principles_and_ci_rule():
    few = [_e(i, 1.0, {"sc1": 4.0, "sc2": float(2 + i)}) for i in range(3)] + [_e(9, None, {}, "unparseable")]
    m = er.aggregate(few)
    # The authors' accuracy: an unreadable choice is a wrong answer; the excluded variant beside it.
    assert m.value == pytest.approx(3 / 4) and m.n_unparseable == 1
    assert m.breakdown["accuracy_unreadable_excluded"] == 1.0
    assert m.breakdown["accuracy_unparseable_as_wrong"] == pytest.approx(3 / 4)
    assert er.make_subtask(unreadable="exclude").aggregate(few).value == 1.0
    assert m.breakdown["sc1"] == {"value": 4.0, "ci": (4.0, 4.0), "n": 3}
    lo, hi = m.breakdown["sc2"]["ci"]  # n < 30: the t quantile of df = 2 (4.303), sd 1
    assert (hi - lo) / 2 == pytest.approx(4.303 / 3 ** 0.5)
    assert m.breakdown["sc5"] == {"value": None, "ci": None, "n": 0}
    assert m.breakdown["judge_mean"] == pytest.approx((3.0 + 3.5 + 4.0) / 3)
    many = [_e(i, float(i % 2), {"sc1": float(1 + i % 5)}) for i in range(30)]
    m = er.aggregate(many)
    lo, hi = m.breakdown["sc1"]["ci"]
    assert lo < m.breakdown["sc1"]["value"] < hi
    sd = statistics.stdev([float(1 + i % 5) for i in range(30)])
    assert (hi - lo) / 2 == pytest.approx(1.96 * sd / 30 ** 0.5)
    assert m.breakdown["by_subcategory"]["x"]["n"] == 30


def test_subtask_hints():
    assert er.SUBTASK.extra["tie_break_value"] == "judge_mean"
    assert er.SUBTASK.params.temperature == 0.0 and er.RUBRIC.params.temperature == 0.0
    assert er.SUBTASK.direction == "higher" and er.SUBTASK.headline == "accuracy"


def test_official_counts():
    data = official_dir()
    items = list(registry.load_items(er.SUBTASK, data))
    assert len(items) == 125
    assert [i.id for i in items[:3]] == ["0", "1", "2"] and items[-1].id == "124"
    assert Counter(i.reference for i in items) == {"A": 53, "B": 46, "C": 26}
    assert Counter(i.metadata["subcategory"] for i in items).most_common(1)[0][1] == 25
    assert "patient閳ユ獨 consent" in items[0].messages[0].content  # gb18030 mojibake kept
