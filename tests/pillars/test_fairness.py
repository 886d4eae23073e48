"""Fairness / overall: identity injection, variant ids, std-across-groups metric."""

from __future__ import annotations

import math
import re

import pytest

from engine.core.records import Message
from engine.core.subtask import ItemScore
from pillars import registry
from pillars.common.loaders import builtin_rows
from pillars.fairness import SUBTASKS
from pillars.fairness import overall as fair
from pillars.reliability import emotional_support as es
from tests.pillars.shared import official_dir

N_VALUES = sum(len(spec["values"]) for spec in fair.DEFAULT_ATTRIBUTES.values())


def test_defaults_documented():
    assert set(fair.DEFAULT_ATTRIBUTES) == {"race", "gender", "age", "religion"}
    assert N_VALUES == 16
    sub = fair.SUBTASK
    assert (sub.key, sub.direction, sub.rubric) == ("fairness/overall", "lower", es.SUPPORT_RUBRIC)
    assert sub.extra["std"] == "population" and sub.extra["attributes"]["age"]["template"] == "I am {value} years old. "
    assert SUBTASKS == (sub,)


def test_inject_identity_first_user_message_only():
    msgs = (Message(role="system", content="S"), Message(role="user", content="hello"),
            Message(role="assistant", content="hi"), Message(role="user", content="again"))
    out = fair.inject_identity(msgs, "I am 70 years old. ")
    assert [m.content for m in out] == ["S", "I am 70 years old. hello", "hi", "again"]
    with pytest.raises(ValueError):
        fair.inject_identity((Message(role="system", content="S"),), "x")


def test_variants_from_builtin_rows():
    rows = list(builtin_rows("fairness", "overall"))
    clean = {it.id: it for it in es.dialogue_items(rows, es.DialogueOptions(), pillar="fairness",
                                                    subtask="overall")}
    items = list(registry.load_items(fair.SUBTASK, None))
    assert len(items) == len(rows) * N_VALUES
    for it in items:
        m = re.fullmatch(r"(b-fair-\d+#\d+)~(\w+)=([\w-]+)", it.id)
        assert m, it.id
        base = clean[m.group(1)]
        assert it.metadata["group"] == {"attribute": m.group(2), "value": m.group(3)}
        assert it.metadata["base"] == base.metadata["base"]
        spec = fair.DEFAULT_ATTRIBUTES[m.group(2)]
        statement = spec["template"].format(value=spec["values"][m.group(3)])
        diffs = [(a, b) for a, b in zip(base.messages, it.messages) if a != b]
        assert len(diffs) == 1 and diffs[0][0].role == "user"
        assert diffs[0][1].content == statement + diffs[0][0].content
        assert next(x for x in it.messages if x.role == "user") is diffs[0][1]


def test_builtin_dialogues_have_no_demographic_cues():
    cues = r"\b(man|woman|men|women|boy|girl|husband|wife|boyfriend|girlfriend|he|she|his|her|" \
           r"black|white|asian|hispanic|latino|christian|muslim|jewish|hindu|buddhist|atheist|" \
           r"church|mosque|temple|god|years old|retired|retirement|college|school|teen)\b"
    for row in builtin_rows("fairness", "overall"):
        for turn in row["dialog"]:
            if turn["role"] == "seeker":
                assert not re.search(cues, turn["text"], re.IGNORECASE), (row["id"], turn["text"])


def test_official_counts():
    rows = list(fair.load_esconv_fair(official_dir() / "esconv-fair"))
    assert len(rows) == 11
    assert [len(r["dialog"]) for r in rows] == [27, 24, 30, 24, 23, 23, 25, 20, 19, 25, 34]
    items = list(registry.load_items(fair.SUBTASK, official_dir()))
    assert len(items) == 11 * N_VALUES
    assert items[0].id.startswith("0#") and items[0].id.endswith("~race=black")
    assert all(not m.content.endswith("\n") for it in items for m in it.messages)


def test_custom_attributes_and_validation():
    attrs = {"age": {"template": "I'm {value}. ", "values": {"30": "thirty"}}}
    sub = fair.make_subtask(attributes=attrs, turns="all")
    rows = [{"id": "d", "dialog": [{"role": "seeker", "text": "a"}, {"role": "supporter", "text": "b"},
                                   {"role": "seeker", "text": "c"}]}]
    assert [i.id for i in sub.items(rows)] == ["d#1~age=30", "d#3~age=30"]
    with pytest.raises(ValueError):
        fair.make_subtask(attributes={"x": {"template": "no placeholder", "values": {"a": "a"}}})
    with pytest.raises(ValueError):
        fair.make_subtask(attributes={"x": {"template": "{value}", "values": {"a=b": "a"}}})
    with pytest.raises(ValueError):
        fair.make_subtask(std="range")


def _scores(spec: dict[str, dict[str, list[float]]]) -> list[ItemScore]:
    out = []
    for attr, groups in spec.items():
        for value, vals in groups.items():
            for i, v in enumerate(vals):
                out.append(ItemScore(item_id=f"{i}~{attr}={value}", value=v,
                                     group={"attribute": attr, "value": value}))
    return out


ATTRS = {"a": {"template": "{value}", "values": {"x": "x", "y": "y"}},
         "b": {"template": "{value}", "values": {"p": "p", "q": "q", "r": "r"}}}


def test_population_std_metric():
    scores = _scores({"a": {"x": [4.0, 4.0], "y": [2.0, 3.0]}, "b": {"p": [3.0], "q": [3.0], "r": [3.0]}})
    m = fair.make_aggregate(ATTRS)(scores)
    # a: group means 4.0 and 2.5 -> population std 0.75; b: identical means -> 0.
    assert m.breakdown["by_attribute"]["a"]["value"] == pytest.approx(0.75)
    assert m.breakdown["by_attribute"]["a"]["range"] == pytest.approx(1.5)
    assert m.breakdown["by_attribute"]["b"]["value"] == 0.0
    assert m.value == pytest.approx(0.375) and m.reason is None
    sample = fair.make_aggregate(ATTRS, ddof=1)(scores)
    assert sample.breakdown["by_attribute"]["a"]["value"] == pytest.approx(0.75 * math.sqrt(2))
    assert fair.population_std([1.0, 3.0]) == 1.0 and fair.population_std([]) is None
    assert fair.population_std([2.0], ddof=1) is None


def test_empty_group_nulls_attribute_and_headline():
    scores = _scores({"a": {"x": [4.0], "y": [2.0]}, "b": {"p": [3.0], "q": [3.0]}})
    scores.append(ItemScore(item_id="0~b=r", status="unparseable", group={"attribute": "b", "value": "r"}))
    m = fair.make_aggregate(ATTRS)(scores)
    assert m.breakdown["by_attribute"]["b"]["value"] is None
    assert "r" in m.breakdown["by_attribute"]["b"]["reason"]
    assert m.breakdown["by_attribute"]["a"]["value"] == pytest.approx(1.0)
    assert m.value is None and "b" in m.reason
    none = fair.make_aggregate(ATTRS)([ItemScore(item_id="z", status="failed")])
    assert none.value is None and none.reason == "no scored items"


def test_fairness_scores_carry_group():
    item = next(iter(registry.load_items(fair.SUBTASK, None)))
    from engine.core.records import Response

    s = fair.SUBTASK.score(item, Response(text="ok", finish_reason="stop"),
                           {"empathy": 3, "helpfulness": 3, "supportiveness": 3})
    assert s.group == {"attribute": "race", "value": "black"} and s.value == 3.0
