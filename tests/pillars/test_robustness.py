"""Robustness: perturbed variants of the reliability items and the relative-drop metric."""

from __future__ import annotations

import hashlib
import re

import msgspec
import pytest

from engine.core.records import Message, Response
from engine.core.subtask import ItemScore
from pillars import registry
from pillars.common.loaders import builtin_rows
from pillars.perturb import Variant, default_variants, perturb
from pillars.reliability import diagnosis as dx
from pillars.reliability import emotional_support as es
from pillars.robustness import SUBTASKS
from pillars.robustness import diagnosis as rdx
from pillars.robustness import emotional_support as res
from pillars.robustness.common import clean_id_of, relative_drop_metric
from tests.pillars.shared import official_dir

VARIANT_RE = re.compile(r"~(char|word|sent)@(0\.05|0\.1|0\.2)$")


def test_wiring():
    assert [s.key for s in SUBTASKS] == ["robustness/emotional_support", "robustness/diagnosis"]
    assert res.SUBTASK.clean_source == "reliability/emotional_support"
    assert rdx.SUBTASK.clean_source == "reliability/diagnosis"
    assert all(s.direction == "lower" for s in SUBTASKS)
    assert registry.builtin_source(res.SUBTASK) == ("reliability", "emotional_support")
    assert res.SUBTASK.rubric is es.SUPPORT_RUBRIC and rdx.SUBTASK.rubric is None
    assert rdx.SUBTASK.params == dx.SUBTASK.params


def test_support_variants_only_touch_seeker_text():
    rows = list(builtin_rows("reliability", "emotional_support"))
    clean = {it.id: it for it in es.SUBTASK.items(rows)}
    items = list(registry.load_items(res.SUBTASK, None))
    assert len(items) == len(clean) * 9
    assert len({i.id for i in items}) == len(items)
    for it in items:
        m = VARIANT_RE.search(it.id)
        assert m, it.id
        base = clean[clean_id_of(it.id)]
        assert it.metadata["group"] == {"level": m.group(1), "intensity": m.group(2)}
        assert it.metadata["base"] == base.metadata["base"] and it.metadata["clean_id"] == base.id
        assert [x.role for x in it.messages] == [x.role for x in base.messages]
        for a, b in zip(base.messages, it.messages):
            if a.role != "user":
                assert a == b  # system prompt and supporter turns untouched
    # Every variant changes at least one seeker message on these multi-sentence dialogues.
    changed = sum(1 for it in items if it.messages != clean[clean_id_of(it.id)].messages)
    assert changed == len(items)


def test_support_distractor_only_on_last_seeker_message():
    msgs = (Message(role="system", content="S"), Message(role="user", content="first message here"),
            Message(role="assistant", content="ok"), Message(role="user", content="second message here"))
    out = res.perturb_messages(msgs, Variant("sent", 0.0), seed=0, key="d")
    assert out[1].content == "first message here"
    assert out[3].content.endswith(" second message here") and out[3].content != "second message here"
    last_only = res.perturb_messages(msgs, Variant("char", 1.0), seed=0, key="d", turns="last")
    assert last_only[1] == msgs[1] and last_only[3] != msgs[3]
    with pytest.raises(ValueError):
        res.make_subtask(perturb_turns="some")


def test_support_variants_deterministic_and_seeded():
    rows = list(builtin_rows("reliability", "emotional_support"))
    a = list(res.SUBTASK.items(rows))
    assert a == list(res.make_subtask().items(rows))
    b = list(res.make_subtask(seed=1).items(rows))
    assert [i.id for i in a] == [i.id for i in b] and a != b


def test_diagnosis_variants_never_perturb_instructions():
    rows = list(builtin_rows("reliability", "diagnosis"))
    items = list(registry.load_items(rdx.SUBTASK, None))
    assert len(items) == len(rows) * 9
    by_id = {r["id"]: r for r in rows}
    for it in items:
        row = by_id[clean_id_of(it.id)]
        clean = dx.build_prompt(row)[0].content
        noisy = it.messages[0].content
        head, tail = clean.split(row["text"])
        assert noisy.startswith(head) and noisy.endswith(tail)
        post = noisy[len(head): len(noisy) - len(tail)]
        level, p = VARIANT_RE.search(it.id).groups()
        assert post == perturb(row["text"], level, float(p), seed=0, key=row["id"])
        assert it.reference == row["label"] and it.metadata["labels"] == list(dx.SWMH_LABELS)
        assert it.metadata["group"] == {"level": level, "intensity": p}


def test_custom_grid():
    sub = rdx.make_subtask(levels=["char"], intensities=[0.3])
    rows = [{"id": "1", "text": "some post text", "label": "anxiety"}]
    assert [i.id for i in sub.items(rows)] == ["1~char@0.3"]
    assert sub.extra["variants"] == ["char@0.3"]


def test_official_support_counts():
    items = list(registry.load_items(res.SUBTASK, official_dir()))
    assert len(items) == 195 * 9
    # The perturbed texts are part of each request's key: a change to pillars/perturb.py that moves
    # one byte of them makes old runs resume as new work. The digest of every id and message here
    # pins them (computed before perturb_chars walked only the chosen characters).
    text = msgspec.json.encode([(it.id, it.messages) for it in items])
    assert hashlib.sha256(text).hexdigest() == "7c7258c4de0a32aae96b30eec9d20afed2e8711091e45bf742fdf6b99c0a80cb"


# ================================================================ metric


def _v(item_id, level, p, value, status="scored"):
    return ItemScore(item_id=f"{item_id}~{level}@{p}", value=value if status == "scored" else None,
                     status=status, group={"level": level, "intensity": p})


def _c(item_id, value, status="scored", sample=0):
    return ItemScore(item_id=item_id, sample=sample, value=value if status == "scored" else None,
                     status=status, group={"variant": "clean"})


GRID = (Variant("char", 0.1), Variant("word", 0.1))


def test_relative_drop_paired():
    scores = [
        _v("a", "char", "0.1", 3.0), _v("b", "char", "0.1", 4.0),
        _v("a", "word", "0.1", 2.0), _v("b", "word", "0.1", 2.0),
        _v("c", "word", "0.1", 1.0),  # no clean score for c: left out of the pair
        _c("a", 4.0), _c("b", 4.0),
    ]
    m = relative_drop_metric(scores, GRID)
    cells = m.breakdown["cells"]
    assert cells["char@0.1"]["value"] == pytest.approx((4.0 - 3.5) / 4.0)
    assert cells["word@0.1"]["value"] == pytest.approx(0.5) and cells["word@0.1"]["n_pairs"] == 2
    assert m.value == pytest.approx((0.125 + 0.5) / 2)
    assert m.breakdown["by_level"] == {"char": pytest.approx(0.125), "word": pytest.approx(0.5)}
    assert m.breakdown["by_intensity"] == {"0.1": pytest.approx(0.3125)}
    assert (m.n, m.n_scored) == (5, 5)  # clean scores are not counted as this subtask's items


def test_relative_drop_samples_averaged_and_unscored_skipped():
    scores = [_v("a", "char", "0.1", 1.0), _v("a", "word", "0.1", 0.0, status="unparseable"),
              _v("b", "word", "0.1", 1.0),
              _c("a", 1.0, sample=0), _c("a", 0.0, sample=1), _c("b", 1.0)]
    m = relative_drop_metric(scores, GRID)
    assert m.breakdown["cells"]["char@0.1"]["clean"] == pytest.approx(0.5)
    assert m.breakdown["cells"]["char@0.1"]["value"] == pytest.approx(-1.0)  # got better
    assert m.breakdown["cells"]["word@0.1"]["n_pairs"] == 1
    assert m.n_unparseable == 1


def test_relative_drop_clean_zero_is_null():
    scores = [_v("a", "char", "0.1", 0.0), _v("a", "word", "0.1", 0.0), _c("a", 0.0)]
    m = relative_drop_metric(scores, GRID)
    assert m.value is None and "clean score is 0" in m.reason
    assert m.breakdown["cells"]["char@0.1"]["value"] is None


def test_relative_drop_missing_cells_and_clean():
    only_char = [_v("a", "char", "0.1", 1.0), _c("a", 1.0)]
    m = relative_drop_metric(only_char, GRID)
    assert m.value is None and "word@0.1" in m.reason
    assert m.breakdown["cells"]["char@0.1"]["value"] == 0.0
    no_clean = relative_drop_metric([_v("a", "char", "0.1", 1.0), _v("a", "word", "0.1", 1.0)], GRID)
    assert no_clean.value is None and no_clean.reason == "no scored clean items to compare with"
    assert relative_drop_metric([], GRID).value is None


def test_subtask_aggregate_end_to_end():
    rows = [{"id": "1", "text": "I worry all the time about everything.", "label": "anxiety"},
            {"id": "2", "text": "I feel empty and tired every day.", "label": "depression"}]
    sub = rdx.make_subtask(levels=["char", "sent"], intensities=[0.1])
    scores = []
    for it in sub.items(rows):
        answer = it.reference if it.id.startswith("1") or "char" in it.id else "bipolar"
        scores.append(sub.score(it, Response(text=f'{{"label": "{answer}"}}', finish_reason="stop"), None))
    clean = [ItemScore(item_id=r["id"], value=1.0, label=r["label"], reference=r["label"],
                       group={"variant": "clean"}) for r in rows]
    m = sub.aggregate(scores + clean)
    assert m.breakdown["cells"]["char@0.1"]["value"] == 0.0
    assert m.breakdown["cells"]["sent@0.1"]["value"] == pytest.approx(0.5)
    assert m.value == pytest.approx(0.25)
    assert [v.name for v in default_variants()] == res.SUBTASK.extra["variants"]
