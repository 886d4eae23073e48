"""`verify DIR`'s check of judgments/: the judgments a run owes, and which of them are missing,
duplicated or failed, as engine/verify.py checks responses/.

A run owes a try-0 judgment, by every judge of every rubric its subtasks have, for each response
on disk (not for a failed request, nor an item that opts out of judging, nor one a replay judge
has no recording for), and a try-1 judgment for each try-0 output its rubric cannot read, where
the rubric retries. Keys are the judge stage's (engine.run.judge.judge_key), so what is owed is
exactly what a rerun of `run` would send.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import msgspec

from adapters.registry import make_adapter
from engine.config import Config
from engine.core.adapter import Adapter, ReplaysItems
from engine.core.records import JudgmentRecord, judgment_decoder
from engine.core.rundoc import RunSpec
from engine.run.judge import judge_key
from engine.run.units import Unit
from engine.shards import Found
from engine.spec import judges_for, rubrics_by_source, subtasks
from engine.store.checkpoint import iter_records

SHOWN = 10  # detail lines per kind of problem


class JudgedTotals(msgspec.Struct, kw_only=True):
    missing: int = 0
    duplicated: int = 0
    failed: int = 0


class JudgmentCheck:
    """Fed each planned unit (`plan`) and each response on disk (`answered`) while verify reads
    responses/, then `check` reads judgments/."""

    def __init__(self, cfg: Config, spec: RunSpec, directory: Path) -> None:
        self.cfg = cfg
        self.by_source = rubrics_by_source(subtasks(spec))
        self.rubrics = {r.name: r for pairs in self.by_source.values() for _, r in pairs}
        self.judges: dict[str, Adapter] = {}
        for pairs in self.by_source.values():
            for _, rubric in pairs:
                for judge in judges_for(cfg, rubric):
                    if judge in cfg.models and judge not in self.judges:
                        self.judges[judge] = make_adapter(judge, cfg.models[judge], directory / "logs",
                                                          with_secrets=False)[0]
        # response key -> (judge, try-0 judgment key, what it judges)
        self.owed: dict[str, list[tuple[str, str, str]]] = {}
        self.answered: set[str] = set()

    def plan(self, unit: Unit) -> None:
        item = unit.item
        pairs = self.by_source.get(f"{item.pillar}/{item.subtask}")
        if not pairs or item.metadata.get("judge") is False:
            return
        what = f"{item.pillar}/{item.subtask} {item.id} #{unit.sample}"
        for _, rubric in pairs:
            for judge in judges_for(self.cfg, rubric):
                adapter = self.judges.get(judge)
                if adapter is None:
                    continue
                if isinstance(adapter, ReplaysItems) and adapter.body_for(item, unit.sample, rubric.name) is None:
                    continue
                key = judge_key(unit.key, judge, rubric.name, rubric.version, 0)
                self.owed.setdefault(unit.key, []).append((judge, key, f"{what} {rubric.name}"))

    def check(self, directory: Path, found: dict[int, Found]) -> tuple[list[str], JudgedTotals]:
        lines: list[str] = []
        totals = JudgedTotals()
        for judge in self.judges:
            files = [directory / "judgments" / f"{judge}.jsonl"]
            for f in found.values():
                files += [p for _, p in sorted(f.files.get(("judgments", judge), {}).items())]
            owed = {key: what for rk in self.answered for j, key, what in self.owed.get(rk, ()) if j == judge}
            lines += self._check_judge(judge, files, owed, totals)
        return lines, totals

    def _check_judge(self, judge: str, files: list[Path], owed: dict[str, str], totals: JudgedTotals) -> list[str]:
        seen = Counter[str]()
        dupes: dict[str, None] = {}
        failed: list[str] = []
        for path in files:
            local: set[str] = set()
            for j in iter_records(path, judgment_decoder):
                if j.key in local:
                    dupes[j.key] = None
                local.add(j.key)
                seen[j.key] += 1
                if j.error is not None:
                    failed.append(f"{j.pillar}/{j.subtask} {j.item_id} #{j.sample} {j.rubric} try {j.try_}: "
                                  f"{j.error.kind} {j.error.message[:80]}")
                elif (retry := self._retry_due(judge, j)) is not None:
                    owed[retry] = f"{j.pillar}/{j.subtask} {j.item_id} #{j.sample} {j.rubric} (retry)"
        missing = [k for k in owed if k not in seen]
        extra = sum(1 for k in seen if k not in owed)
        totals.missing += len(missing)
        totals.duplicated += len(dupes)
        totals.failed += len(failed)
        state = "complete" if not (missing or dupes or failed) else "NOT clean"
        lines = [f"{judge}: judgments {state}: expected {len(owed)}, present {len(seen)}, missing {len(missing)}, "
                 f"duplicated {len(dupes)}, failed {len(failed)}, not in plan {extra}"]
        lines += [f"  missing judgment {owed[k]}" for k in missing[:SHOWN]]
        if len(missing) > SHOWN:
            lines.append(f"  ... and {len(missing) - SHOWN} more missing (rerun `run` to judge them)")
        lines += [f"  duplicated judgment key {k} ({seen[k]} lines)" for k in list(dupes)[:SHOWN]]
        lines += [f"  failed judgment {f}" for f in failed[:SHOWN]]
        if len(failed) > SHOWN:
            lines.append(f"  ... and {len(failed) - SHOWN} more failed judgments")
        return lines

    def _retry_due(self, judge: str, j: JudgmentRecord) -> str | None:
        """The try-1 key a try-0 output its rubric cannot read owes (None: none owed)."""
        rubric = self.rubrics.get(j.rubric)
        if (j.try_ != 0 or j.response is None or rubric is None or not rubric.retry
                or j.rubric_version != rubric.version or rubric.read(j.response.text) is not None):
            return None
        return judge_key(j.response_key, judge, j.rubric, j.rubric_version, 1)
