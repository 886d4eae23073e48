"""The item browser's view model: every item of a run with every model's answer, built one subtask
at a time from the scorer's per-item scores (engine.scoring.item_scores), plus the leaderboard's
rows with coverage per cell. Pure: the caller passes what was read.

Outcome classes of one answer (the browser's filter):
- correct / incorrect: a binary per-item value (1 or 0), the better one or not;
- scored: a per-item rating or quality score (neither 0 nor 1: a judge score, a toxicity);
- refused: the scorer labelled it a refusal (jailbreak label "refused", antitoxic group refused=yes);
- unparseable: the answer or its judgment could not be parsed; error: no response (failed call);
- missing: no record for this (item, sample); answered: an --items run's answer (nothing to score).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from engine.core.errors import EngineError
from engine.core.records import ErrorInfo, Item, JudgmentRecord, Record
from engine.core.rundoc import ModelScore, ScoresDoc
from engine.core.subtask import ItemScore, Judgment
from engine.report.build import Parsed, _pillar_order, _rubric_owners, _subtask_order, item_direction, judgment_label, parsed_judgments
from engine.report.view import Answer, Board, BoardCell, BoardRow, ItemView, ReportInputs
from engine.scoring import SubtaskItems

OUTCOMES = ("correct", "incorrect", "scored", "refused", "unparseable", "error", "missing", "answered")
RATIONALE_FIELDS = ("rationale", "explanation", "reason", "reasoning", "justification")


# --------------------------------------------------------------------------- leaderboard


def _refused(headline: str, d: ModelScore) -> int | None:
    """Refused answers where scores.json tells: a breakdown's n_refused, or an RtA (refused / scored)."""
    v = d.breakdown.get("n_refused")
    if isinstance(v, int):
        return v
    return round(d.value * d.n_scored) if headline == "refuse_to_answer_rate" and d.value is not None else None


def board(scores: ScoresDoc, models: Sequence[str]) -> Board:
    """Pillar rows (rank, mean subtask rank) with their subtask rows (rank, value, interval and the
    coverage scores.json gives: n_scored of n + n_missing, unparseable, refused, failed)."""
    keys = _subtask_order((), scores.subtasks)
    pillars = []
    for pillar in _pillar_order(keys):
        rows = []
        for key in (k for k in keys if k.split("/")[0] == pillar):
            s = scores.subtasks[key]
            cells = []
            tied = s.tied if isinstance(s.tied, dict) else {}
            for m in models:
                d = s.models.get(m)
                cells.append(BoardCell(absent=True) if d is None else BoardCell(
                    rank=s.ranks.get(m), value=d.value, ci=d.ci, scored=d.n_scored, planned=d.n + d.n_missing,
                    unparseable=d.n_unparseable, refused=_refused(s.headline, d), failed=d.n_failed, reason=d.why,
                    tied=tuple(tied.get(m, ()))))
            rows.append(BoardRow(key=key, headline=s.headline, direction=s.direction, cells=tuple(cells)))
        p = scores.pillars.get(pillar)
        pcells = tuple(BoardCell(rank=p.ranks.get(m), value=p.mean_subtask_rank.get(m)) if p else BoardCell(absent=True)
                       for m in models)
        pillars.append(BoardRow(key=pillar, cells=pcells, subtasks=tuple(rows)))
    return Board(models=tuple(models), pillars=tuple(pillars))


# --------------------------------------------------------------------------- items


def _error(e: ErrorInfo | None) -> str | None:
    return f"{e.kind} {e.status or ''} {e.message}".replace("  ", " ").strip() if e is not None else None


def outcome(sc: ItemScore | None, rec: Record | None, direction: str) -> str:
    if rec is None:
        return "missing"
    if rec.response is None or sc is None or sc.status == "failed":
        return "error"
    if sc.status == "unparseable":
        return "unparseable"
    if sc.label == "refused" or sc.group.get("refused") == "yes":
        return "refused"
    if sc.value in (0.0, 1.0):
        return "correct" if sc.value == (1.0 if direction == "higher" else 0.0) else "incorrect"
    return "scored"


JudgeTexts = Mapping[tuple[str, str, str], str]  # (judge, response key, rubric) -> first output's text


def judge_texts(judgments: Mapping[str, Iterable[JudgmentRecord]]) -> dict[tuple[str, str, str], str]:
    """Each judge's raw output per (response, rubric): the earliest try that has one."""
    out: dict[tuple[str, str, str], tuple[int, str]] = {}
    for judge, rows in judgments.items():
        for j in rows:
            k = (judge, j.response_key, j.rubric)
            if j.response is not None and (k not in out or out[k][0] > j.try_):
                out[k] = (j.try_, j.response.text)
    return {k: v[1] for k, v in out.items()}


def _rationale(verdict: Judgment | None, raw: str | None) -> str | None:
    if verdict:
        own = [str(verdict[f]) for f in RATIONALE_FIELDS if isinstance(verdict.get(f), str)]
        if own:
            return "\n".join(own)
    return raw


def _verdict(verdict: Judgment | None) -> dict[str, object] | None:
    """The verdict's fields without its explanation (shown once, as the rationale)."""
    if not verdict:
        return None
    return {k: v for k, v in verdict.items()
            if k not in RATIONALE_FIELDS and (isinstance(v, (str, int, float, bool)) or v is None)}


def subtask_views(chunk: SubtaskItems, models: Sequence[str], verdicts: Mapping[str, Judgment | None],
                  texts: JudgeTexts) -> list[ItemView]:
    """Every (item, sample) of one subtask with each model's answer, score, outcome and verdict.
    `verdicts`: response key -> the ranked judge's parsed judgment for this subtask's rubric."""
    sub = chunk.subtask
    direction = item_direction(sub)
    pillar, name = sub.generates_from.split("/", 1)
    rubric = sub.rubric.name if sub.rubric is not None else (sub.source or "").split("/")[-1]
    by_unit = {m: {(s.item_id, s.sample): s for s in chunk.scores.get(m, ())} for m in models}
    samples = max([s.sample for per in chunk.scores.values() for s in per] or [0]) + 1
    out = []
    for item in chunk.items:
        for sample in range(samples):
            answers = []
            for m in models:
                rec = chunk.records.get(m, {}).get((pillar, name, item.id, sample))
                sc = by_unit[m].get((item.id, sample))
                answers.append(_answer(m, rec, sc, outcome(sc, rec, direction), chunk.judge, verdicts, texts, rubric))
            if sample and all(a.outcome == "missing" for a in answers):
                continue
            out.append(ItemView(subtask=chunk.key, id=item.id, sample=sample, prompt=item.messages,
                                reference=item.reference, answers=tuple(answers)))
    return out


def _answer(model: str, rec: Record | None, sc: ItemScore | None, kind: str, judge: str | None,
            verdicts: Mapping[str, Judgment | None], texts: JudgeTexts, rubric: str) -> Answer:
    if rec is None:
        return Answer(model=model, outcome=kind)
    verdict = verdicts.get(rec.key) if judge else None
    raw = texts.get((judge, rec.key, rubric)) if judge else None
    return Answer(model=model, outcome=kind, text=rec.response.text if rec.response else None,
                  parsed=sc.label if sc else None, score=sc.value if sc else None,
                  judge=judge if (verdict is not None or raw is not None) else None, verdict=_verdict(verdict),
                  judge_score=judgment_label(verdict), rationale=_rationale(verdict, raw), error=_error(rec.error),
                  finish=rec.response.finish_reason if rec.response else None)


def record_views(records: Mapping[str, Sequence[Record]], items: Mapping[tuple[str, str, str], Item] | None,
                 models: Sequence[str]) -> list[ItemView]:
    """Items without scores (an --items run, or a run whose items cannot be scored here): every
    (item, sample) with a record, in items file order (then the others), each model's answer or error."""
    by_unit: dict[tuple[str, str, str, int], dict[str, Record]] = {}
    for m in models:
        for r in records.get(m, ()):
            by_unit.setdefault((r.pillar, r.subtask, r.item_id, r.sample), {})[m] = r
    place = {k: i for i, k in enumerate(items or ())}  # file order; records come in completion order
    out = []
    for (pillar, name, item_id, sample), got in sorted(by_unit.items(), key=lambda kv: (
            place.get(kv[0][:3], len(place)), kv[0][3])):
        item = items.get((pillar, name, item_id)) if items is not None else None
        answers = tuple(
            Answer(model=m, outcome="missing") if (rec := got.get(m)) is None else
            Answer(model=m, outcome="answered" if rec.response is not None else "error",
                   text=rec.response.text if rec.response else None, error=_error(rec.error),
                   finish=rec.response.finish_reason if rec.response else None)
            for m in models)
        out.append(ItemView(subtask=f"{pillar}/{name}", id=item_id, sample=sample,
                            prompt=item.messages if item else None, reference=item.reference if item else None,
                            answers=answers))
    return out


def verdicts_of(inputs: ReportInputs) -> Parsed:
    """Every judge's parsed judgments, as build_report reads them (rubric owner -> response key)."""
    spec = inputs.run.spec
    keys = list(dict.fromkeys([*spec.subtasks, *(inputs.scores.subtasks if inputs.scores else ())]))
    return parsed_judgments(inputs.judgments, _rubric_owners(keys, spec.options, spec.data_dir))


def item_views(inputs: ReportInputs, models: Sequence[str], scored: Callable[[], Iterable[SubtaskItems]] | None,
               parsed: Parsed | None = None) -> tuple[tuple[ItemView, ...], str | None]:
    """Every item of the run, one subtask at a time from `scored` (engine.scoring.item_scores of the
    directory); the records alone (outcome answered / error) for an --items run, or with a note
    when the items cannot be scored here. `parsed`: verdicts_of(inputs), when the caller has it."""
    if scored is None:
        return tuple(record_views(inputs.records, inputs.items, models)), None
    parsed, texts = parsed if parsed is not None else verdicts_of(inputs), judge_texts(inputs.judgments)
    out: list[ItemView] = []
    try:
        for chunk in scored():
            sub = chunk.subtask
            owner = sub.key if sub.rubric is not None else (sub.source or sub.key)
            out.extend(subtask_views(chunk, models, parsed.get(chunk.judge or "", {}).get(owner, {}), texts))
    except (EngineError, OSError, ValueError, KeyError) as exc:
        reason = exc.args[0] if exc.args else exc
        return (tuple(record_views(inputs.records, inputs.items, models)),
                f"items could not be scored for the item browser ({reason}); it shows the records unscored")
    return tuple(out), None
