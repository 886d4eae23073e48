"""`python -m engine report DIR`: a run directory as Markdown, one self-contained HTML file, or JSON.

Public API:
- `load_inputs(directory)` reads run.json, scores.json (computed in memory when absent), the
  response and judgment records and, where they can be rebuilt, the items (the only I/O here);
- `build.build_report(inputs, per_subtask=5)` builds the typed `Report` (view.py; pure);
- `render(report, fmt)` gives the text ("md", "html" or "json"), with any API key value that the
  environment holds for the run's `api_key_env` names blanked out as a last line of defence;
- `write_reports(directory)` writes report.md and report.html into the run directory (what `run`,
  `score` and `judge` do at the end) and returns their paths.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from engine.core.errors import EngineError
from engine.core.records import Item, judgment_decoder
from engine.core.rundoc import RunDoc, RunSpec, ScoresDoc
from engine.core.secrets import redact, remember_env
from engine.report.build import build_report
from engine.report.html import render_html
from engine.report.markdown import render_markdown
from engine.report.view import Report, ReportInputs
from engine.scoring import score_run
from engine.spec import item_factory
from engine.store.checkpoint import iter_records
from engine.store.rundoc_io import read_run, read_scores

__all__ = ["FORMATS", "Report", "ReportInputs", "build_report", "load_inputs", "render", "report_for", "write_reports"]

FORMATS = ("md", "html", "json")
FILES = {"md": "report.md", "html": "report.html"}


def load_inputs(directory: Path) -> ReportInputs:
    directory = Path(directory)
    run = read_run(directory)
    notes: list[str] = []
    scores = _read_scores(directory, run, notes)
    spec = run.spec
    models = list(spec.models or _models_of(run.config))
    records = {m: list(iter_records(directory / "responses" / f"{m}.jsonl")) for m in models}
    judgments = {p.stem: list(iter_records(p, judgment_decoder))
                 for p in sorted((directory / "judgments").glob("*.jsonl"))}
    items = _load_items(spec, notes)
    return ReportInputs(directory=str(directory), run=run, scores=scores, records=records, judgments=judgments,
                        items=items, notes=tuple(notes))


def _models_of(config: Mapping[str, object]) -> Mapping[str, object]:
    models = config.get("models")
    return models if isinstance(models, Mapping) else {}


def _read_scores(directory: Path, run: RunDoc, notes: list[str]) -> ScoresDoc | None:
    scores = read_scores(directory)
    if scores is not None:
        return scores
    if run.spec.items is not None:
        return None
    try:
        scores = score_run(directory)
    except (EngineError, OSError, ValueError, KeyError) as exc:
        notes.append(f"no scores.json and scoring failed ({exc}); ranks and metrics are not shown")
        return None
    notes.append("no scores.json: metrics computed from the records for this report (not saved)")
    return scores


def _load_items(spec: RunSpec, notes: list[str]) -> dict[tuple[str, str, str], Item] | None:
    if spec.items is not None and not Path(spec.items).is_file():
        notes.append(f"a custom --items run whose items file {spec.items} is not here: responses without prompts")
        return None
    try:
        factory = item_factory(spec)
        return {(w.item.pillar, w.item.subtask, w.item.id): w.item for w in factory()}
    except (EngineError, OSError, ValueError, KeyError, msgspec.ValidationError) as exc:
        reason = exc.args[0] if exc.args else exc
        notes.append(f"items could not be rebuilt ({reason}); the drill-down shows item ids and is not re-scored")
        return None


def _secrets(run: RunDoc) -> tuple[str, ...]:
    """Values the environment holds for the run's api_key_env names (never written, only removed)."""
    names = [m.get("api_key_env") for m in _models_of(run.config).values() if isinstance(m, Mapping)]
    values = tuple(os.environ.get(n, "") for n in sorted({x for x in names if isinstance(x, str) and x}))
    remember_env(n for n in names if isinstance(n, str))
    return tuple(v for v in values if v)


def render(report: Report, fmt: str, secrets: tuple[str, ...] = ()) -> str:
    if fmt == "md":
        text = render_markdown(report)
    elif fmt == "html":
        text = render_html(report)
    elif fmt == "json":
        text = msgspec.json.format(msgspec.json.encode(report).decode(), indent=2) + "\n"
    else:
        raise ValueError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    # Exact values only: the report quotes model answers, which key-shaped patterns must not touch.
    return redact(text, secrets, shapes=False)


def report_for(directory: Path, per_subtask: int = 5) -> tuple[Report, tuple[str, ...]]:
    inputs = load_inputs(Path(directory))
    return build_report(inputs, per_subtask=per_subtask), _secrets(inputs.run)


def write_reports(directory: Path, per_subtask: int = 5) -> list[Path]:
    directory = Path(directory)
    report, secrets = report_for(directory, per_subtask)
    paths = []
    for fmt, name in FILES.items():
        path = directory / name
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        tmp.write_text(render(report, fmt, secrets), encoding="utf-8")
        os.replace(tmp, path)
        paths.append(path)
    return paths
