"""Scoring reads one subtask x model at a time (engine/scoring.py): the filtered reader picks
exactly the chosen records in file order and names a bad line by its number in the file, verdicts
count in try order as before, and a record stream scores as the records would have from a dict."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from engine.core.errors import CheckpointError
from engine.core.records import (
    ErrorInfo,
    Item,
    JudgmentRecord,
    Record,
    Response,
    judgment_decoder,
    record_decoder,
    record_encoder,
)
from engine.core.subtask import ItemScore, JudgeStats
from engine.requery import requery_samples
from engine.scoring import Judged, outcomes_of, read_judgments, scores_from
from engine.store.checkpoint import iter_records, iter_records_of
from engine.store.index import LineIndex
from pillars import registry

SUBTASKS = [("crisis", "escalation"), ("crisis", "severity"), ("fairness", "overall")]


def _rec(i: int, model: str = "m", pillar: str = "crisis", subtask: str = "escalation",
         sample: int = 0, text: str = "ok") -> Record:
    return Record(key=f"{i:032x}", model=model, pillar=pillar, subtask=subtask, item_id=f"i{i % 7}", sample=sample,
                  attempts=1, response=Response(text=text, finish_reason="stop"))


def _write(path: Path, recs: list[Record] | list[JudgmentRecord]) -> Path:
    path.write_bytes(b"".join(record_encoder.encode(r) + b"\n" for r in recs))
    return path


def _pillar_subtask(pillar: str, subtask: str) -> Callable[[str, str, str], bool]:
    return lambda m, p, s: (p, s) == (pillar, subtask)


def test_filtered_read_is_the_chosen_records_in_file_order(tmp_path: Path) -> None:
    # ~5k records spread over three subtasks and two models: chunks (256 KiB) mix all of them, and
    # some chunks hold only chosen lines, some none (long runs of one subtask).
    recs = []
    for i in range(5000):
        p, s = SUBTASKS[(i // 700) % 3] if i < 2100 else SUBTASKS[i % 3]
        recs.append(_rec(i, model="ab"[i % 2], pillar=p, subtask=s, text="x" * (i % 300)))
    path = _write(tmp_path / "r.jsonl", recs)
    for want in [("crisis", "escalation"), ("fairness", "overall")]:
        got = list(iter_records_of(path, _pillar_subtask(*want)))
        assert got == [r for r in recs if (r.pillar, r.subtask) == want]
    got = list(iter_records_of(path, lambda m, p, s: m == "b" and s == "severity"))
    assert got == [r for r in recs if r.model == "b" and r.subtask == "severity"]
    assert list(iter_records_of(path, lambda m, p, s: False)) == []
    assert list(iter_records_of(path, lambda m, p, s: True)) == list(iter_records(path))
    assert list(iter_records_of(tmp_path / "absent.jsonl", lambda m, p, s: True)) == []


def test_filtered_read_names_a_bad_line_by_its_number(tmp_path: Path) -> None:
    """A line that is JSON with the three fields but not a record (attempts is text) fails the read
    of its own subtask with its line number; a read of another subtask passes over it, which is why
    score's usage pass decodes every line in full once (engine/scoring.py `_usage`)."""
    lines = [record_encoder.encode(_rec(i, subtask="escalation" if i % 2 else "severity")) for i in range(40)]
    lines[17] = lines[17].replace(b'"attempts":1', b'"attempts":"one"')  # line 18, an escalation record
    path = tmp_path / "r.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(CheckpointError, match=r"r\.jsonl:18: not a valid record"):
        list(iter_records_of(path, lambda m, p, s: s == "escalation"))
    assert len(list(iter_records_of(path, lambda m, p, s: s == "severity"))) == 20
    with pytest.raises(CheckpointError, match=r"r\.jsonl:18: not a valid record"):
        list(iter_records(path))
    # Not JSON at all: every filtered read names it.
    lines[17] = b'{"key":"00000000000000000000000000000011","model":"m","pillar":"crisis"'
    path.write_bytes(b"\n".join(lines) + b"\n")
    for want in ("escalation", "severity"):
        with pytest.raises(CheckpointError, match=r"r\.jsonl:18: not a valid record"):
            list(iter_records_of(path, _pillar_subtask("crisis", want)))


def test_line_index_reads_what_the_filtered_pass_reads(tmp_path: Path) -> None:
    """The scorer's index (engine/store/index.py): any pick of groups gives exactly the filtered
    pass's records in file order (adjacent lines merged into one read, batches across chunks), and
    a damaged chosen line is named by its line number as the filtered pass names it."""
    rng = random.Random(7)
    recs = []
    for i in range(4000):  # long runs of one subtask first (adjacent lines), then mixed
        p, s = SUBTASKS[i // 300 if i < 900 else rng.randrange(3)]
        recs.append(_rec(i, model="ab"[rng.randrange(2)], pillar=p, subtask=s, text="y" * rng.randrange(2000)))
    path = _write(tmp_path / "r.jsonl", recs)
    with path.open("ab") as f:
        f.write(b"\n  \n")  # blank lines count as no record in either reader
        f.write(record_encoder.encode(_rec(9999, subtask="severity")) + b"\n")
    index = LineIndex(path, record_decoder)
    picks: list[Callable[[str, str, str], bool]] = [
        _pillar_subtask("crisis", "escalation"), _pillar_subtask("fairness", "overall"),
        lambda m, p, s: m == "b" and s == "severity", lambda m, p, s: True, lambda m, p, s: False]
    for where in picks:
        assert list(index.read(where)) == list(iter_records_of(path, where))
    assert list(LineIndex(tmp_path / "absent.jsonl", record_decoder).read(lambda m, p, s: True)) == []
    lines = [record_encoder.encode(_rec(i, subtask="escalation" if i % 2 else "severity")) for i in range(40)]
    lines[17] = lines[17].replace(b'"attempts":1', b'"attempts":"one"')
    path.write_bytes(b"\n".join(lines) + b"\n")
    index = LineIndex(path, record_decoder)
    with pytest.raises(CheckpointError, match=r"r\.jsonl:18: not a valid record"):
        list(index.read(lambda m, p, s: s == "escalation"))
    assert len(list(index.read(lambda m, p, s: s == "severity"))) == 20
    lines[17] = b'{"key":"00000000000000000000000000000011","model":"m","pillar":"crisis"'
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(CheckpointError, match=r"r\.jsonl:18: not a valid record"):
        LineIndex(path, record_decoder)


def _judgment(i: int, try_: int, text: str | None, model: str = "m", subtask: str = "escalation") -> JudgmentRecord:
    return JudgmentRecord(key=f"{i:031x}{try_}", response_key=f"{i:032x}", judge="j", rubric=RUBRIC.name,
                          rubric_version=RUBRIC.version, model=model, pillar="crisis", subtask=subtask,
                          item_id=f"i{i % 7}", sample=0, try_=try_,
                          response=Response(text=text, finish_reason="stop") if text is not None else None,
                          error=None if text is not None else ErrorInfo(kind="fatal", message="boom"))


SUB = registry.get("crisis/escalation")
assert SUB.rubric is not None
RUBRIC = SUB.rubric


def test_verdicts_count_in_try_order_whatever_the_file_order(tmp_path: Path) -> None:
    good = '{"appropriateness": 4, "explanation": "fine"}'
    rows = [
        _judgment(1, 1, good),        # the retry reached the file before its try 0
        _judgment(1, 0, "no json"),
        _judgment(2, 0, good),
        _judgment(3, 0, None),        # the judge call failed
        _judgment(3, 1, "still no json"),
        _judgment(4, 0, good, model="other"),
        _judgment(5, 0, good, subtask="severity"),
    ]
    d = tmp_path
    (d / "judgments").mkdir()
    _write(d / "judgments" / "j.jsonl", rows)
    rubrics = {RUBRIC.name: RUBRIC}
    all_ = read_judgments(d, "j", rubrics)
    one = read_judgments(d, "j", rubrics, lambda m, p, s: (m, s) == ("m", "escalation"))
    assert set(all_) - set(one) == {(f"{4:032x}", RUBRIC.name), (f"{5:032x}", RUBRIC.name)}
    assert all(one[k] == all_[k] for k in one)
    v1 = one[(f"{1:032x}", RUBRIC.name)]
    assert (v1.tries, v1.outputs, v1.parsed is not None) == (2, 2, True)  # try 0 unparseable, then try 1
    v3 = one[(f"{3:032x}", RUBRIC.name)]
    assert (v3.tries, v3.outputs, v3.parsed) == (2, 1, None)
    index = LineIndex(d / "judgments" / "j.jsonl", judgment_decoder)
    assert read_judgments(d, "j", rubrics, lambda m, p, s: (m, s) == ("m", "escalation"), index) == one
    assert list(iter_records(d / "judgments" / "j.jsonl", judgment_decoder)) == rows  # read, not rewritten


def _reference(items: list[Item], samples: int, records: dict[tuple[str, str, str, int], Record],
               judged: dict[tuple[str, str], Judged], requery: int) -> tuple[list[ItemScore], int, JudgeStats]:
    """Scoring as it was before streaming (every record in a dict, looked up per item and sample)."""
    scores: list[ItemScore] = []
    missing = 0
    jstats = {"judged": 0, "unparseable": 0, "not_judged": 0, "retried": 0}
    for item in items:
        for s in range(samples):
            sc = rec = None
            reasks = 0
            for k, idx in enumerate(requery_samples(s, samples, requery)):
                r = records.get((item.pillar, item.subtask, item.id, idx))
                if r is None:
                    break
                rec, reasks = r, k
                judgment = None
                if r.response is not None and item.metadata.get("judge") is not False:
                    j = judged.get((r.key, RUBRIC.name))
                    if j is None:
                        jstats["not_judged"] += 1
                    elif j.parsed is None:
                        jstats["unparseable"] += 1
                    else:
                        jstats["judged"] += 1
                        judgment = j.parsed
                    if j is not None and j.tries > 1:
                        jstats["retried"] += 1
                sc = SUB.score(item, r.response, judgment)
                if sc.status != "unparseable":
                    break
            if rec is None or sc is None:
                missing += 1
                continue
            if reasks:
                sc = msgspec.structs.replace(sc, extras={**sc.extras, "reasks": float(reasks)})
            scores.append(msgspec.structs.replace(sc, sample=s) if sc.sample != s else sc)
    return scores, missing, JudgeStats(**jstats)


@pytest.mark.parametrize("seed", range(6))
def test_a_record_stream_scores_like_the_records_dict(seed: int) -> None:
    """Random records (some for items not scored, some failed, some written twice) and verdicts
    (parseable, unparseable, retried, absent): the streamed outcomes give exactly the scores, missing
    counts and judge counts that looking records up in a dict gave."""
    rng = random.Random(seed)
    items = list(registry.load_items(SUB, None))
    scored_items = items[: len(items) - 3]  # records of the last three items pass by unscored
    samples, requery = rng.choice([(1, 0), (2, 1), (3, 2)])
    stream: list[Record] = []
    judged: dict[tuple[str, str], Judged] = {}
    for n in range(40 * samples):  # fewer records than units: some units are missing
        item = rng.choice(items)
        key = f"{n:032x}"
        sample = rng.randrange(samples * (requery + 1) + 1)
        failed = rng.random() < 0.1
        stream.append(Record(key=key, model="m", pillar=item.pillar, subtask=item.subtask, item_id=item.id,
                             sample=sample, attempts=1,
                             response=None if failed else Response(text=f"answer {n}", finish_reason="stop"),
                             error=ErrorInfo(kind="fatal", message="404") if failed else None))
        verdict = rng.choice(["good", "bad", "none"])
        if verdict != "none":
            text = f'{{"appropriateness": {rng.randint(1, 5)}, "explanation": "x"}}' if verdict == "good" else "no"
            judged[(key, RUBRIC.name)] = Judged(parsed=RUBRIC.read(text), outputs=1, tries=rng.choice([1, 2]))
    records = {(r.pillar, r.subtask, r.item_id, r.sample): r for r in stream}
    outcomes = outcomes_of(SUB, scored_items, iter(stream), judged)
    got = scores_from(scored_items, samples, outcomes, requery)
    assert got == _reference(scored_items, samples, records, judged, requery)
    assert got[1] > 0 and got[0]  # the mix has missing and scored units
