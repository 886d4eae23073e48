"""The typed run documents (engine/core/rundoc.py) encode to the JSON the dict-based writers wrote:
documents pinned from main before the change (tests/fixtures/rundoc) decode and encode back to the
same JSON; unknown keys survive a rewrite; a missing or broken file is one clear error."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import orjson
import pytest

from engine.core.errors import CheckpointError, EngineError
from engine.core.rundoc import ModelScore, RunDoc, ScoresDoc
from engine.core.subtask import JudgeStats, Metric
from engine.store.rundoc_io import load_run, read_run, read_scores, write_doc, write_run

PINNED = Path(__file__).parent / "fixtures" / "rundoc"
REPORT_RUN = Path(__file__).parent / "fixtures" / "report_run"
RUNS = sorted(PINNED.glob("*.run.json"))
SCORES = sorted(PINNED.glob("*.scores.json"))
# A first run's key order is the Struct's; a resumed run keeps the earlier run's order (its `lanes`
# came before the new `budget`) and merge builds its dict in another order: equal as JSON only.
BYTE_EQUAL = {"plain.first.run.json", "items.run.json", "shard-1-of-2.run.json",
              "plain.scores.json", "merged.scores.json"}


def _dumps(path: Path, doc: RunDoc | ScoresDoc) -> bytes:
    write_doc(path, doc)
    return path.read_bytes()


@pytest.mark.parametrize("path", RUNS + SCORES, ids=lambda p: p.name)
def test_pinned_documents_round_trip(path: Path, tmp_path: Path) -> None:
    kind = RunDoc if path.name.endswith(".run.json") else ScoresDoc
    raw = path.read_bytes()
    doc = msgspec.json.decode(raw, type=kind)
    out = _dumps(tmp_path / "doc.json", doc)
    assert orjson.loads(out) == orjson.loads(raw)
    if path.name in BYTE_EQUAL:
        assert out == raw


def _added_only(got: object, raw: object, path: str = "") -> list[str]:
    """Keys `got` has beyond `raw` (anything else that differs fails)."""
    if not isinstance(raw, dict) or not isinstance(got, dict):
        assert got == raw, path
        return []
    assert set(raw) <= set(got), (path, set(raw) - set(got))
    added = [f"{path}.{k}" for k in got if k not in raw]
    for k, v in raw.items():
        added += _added_only(got[k], v, f"{path}.{k}")
    return added


def test_report_fixture_reads_and_keeps_its_fields(tmp_path: Path) -> None:
    """A hand-edited older run.json (lanes without the newer counters, a spec without `options`, a
    lane `cost`) reads; rewriting it keeps every key it had and adds only newer fields' defaults."""
    raw = orjson.loads((REPORT_RUN / "run.json").read_bytes())
    doc = read_run(REPORT_RUN)
    assert doc.lane_map["api-a"].cost == raw["lanes"]["api-a"]["cost"]
    added = _added_only(orjson.loads(_dumps(tmp_path / "run.json", doc)), raw)
    assert {a.rsplit(".", 1)[1] for a in added} == {"limit_pushbacks", "truncated", "requeried", "options", "skipped"}
    scores = read_scores(REPORT_RUN)
    assert scores is not None
    added = _added_only(orjson.loads(_dumps(tmp_path / "scores.json", scores)),
                        orjson.loads((REPORT_RUN / "scores.json").read_bytes()))
    assert added == [".usage", ".skipped"]


def test_unknown_keys_are_kept_on_rewrite(tmp_path: Path) -> None:
    raw = orjson.loads((PINNED / "plain.run.json").read_bytes())
    raw["from_a_newer_engine"] = {"x": [1, 2]}
    (tmp_path / "run.json").write_bytes(orjson.dumps(raw))
    doc = read_run(tmp_path)
    write_run(tmp_path, msgspec.structs.replace(doc, status="complete"))
    again = orjson.loads((tmp_path / "run.json").read_bytes())
    assert again["from_a_newer_engine"] == {"x": [1, 2]} and again["status"] == "complete"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_missing_and_broken_documents_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="no run.json; is this a run output directory"):
        read_run(tmp_path)
    (tmp_path / "run.json").write_text('{"config": {}, "spec": {"output": "x"}}')
    with pytest.raises(CheckpointError) as exc:
        load_run(tmp_path)
    msg = str(exc.value)
    assert "run.json" in msg and "models" in msg and "\n" not in msg
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid run.json"):
        read_run(tmp_path)


def test_one_metric_shape() -> None:
    """scores.json stores the subtask's Metric with the scorer's two counts: `reason` only when the
    metric has one or is undefined, `judge` only for a judged subtask."""
    m = Metric(value=0.5, n=2, n_scored=2, n_unparseable=0, n_failed=0, ci=(0.1, 0.9), breakdown={"x": 1})
    plain = orjson.loads(msgspec.json.encode(ModelScore.of(m, 0, None)))
    assert list(plain) == ["value", "n", "n_scored", "n_unparseable", "n_failed", "n_missing", "ci", "breakdown"]
    undefined = ModelScore.of(msgspec.structs.replace(m, value=None), 1, JudgeStats(judged=2))
    d = orjson.loads(msgspec.json.encode(undefined))
    assert d["reason"] == "undefined" and d["judge"] == {"judged": 2, "unparseable": 0, "not_judged": 0, "retried": 0}
    assert undefined.why == "undefined" and ModelScore.of(m, 0, None).why is None


def test_merge_sums_lanes_as_the_dict_code_did() -> None:
    """The typed lane sum (engine/merge.py) gives the `lanes` the dict-based merge wrote for the
    pinned two-shard run, from the shard states it kept under `shards.runs`."""
    from engine.merge import sum_lanes

    raw = orjson.loads((PINNED / "merged.run.json").read_bytes())
    doc = msgspec.json.decode((PINNED / "merged.run.json").read_bytes(), type=RunDoc)
    assert not isinstance(doc.shards, msgspec.UnsetType)
    runs = [r.lanes for _, r in sorted(doc.shards.runs.items(), key=lambda t: int(t[0]))
            if not isinstance(r.lanes, msgspec.UnsetType)]
    assert len(runs) == 2
    assert msgspec.to_builtins(sum_lanes(runs)) == raw["lanes"]
