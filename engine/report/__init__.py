"""`python -m engine report DIR`: a run directory as Markdown, one self-contained HTML file, or JSON.

Public API:
- `load_inputs(directory)` reads run.json, scores.json (computed in memory when absent), the
  response and judgment records and, where they can be rebuilt, the items (the only I/O here); of a
  custom --items run it keeps only the first `response_rows` items and their records, streaming the
  rest into per-model counts, so a 1M-item run's report holds ~500 records, not 1M (and with
  `keep`, as `write_reports` asks, keeps those in the directory for the next report while the
  files they come from stay as they are: reuse.py);
- `build.build_report(inputs, per_subtask=5)` builds the typed `Report` (view.py; pure);
- `render(report, fmt)` gives the text ("md", "html" or "json"), with any API key value that the
  environment holds for the run's `api_key_env` names blanked out as a last line of defence;
- `write_reports(directory)` writes report.md and report.html into the run directory (what `run`,
  `score` and `judge` do at the end), each atomically (`write_text`), and returns their paths;
- `write_figures(report, folder)` the paper figures (figures.py; matplotlib, the `figures` extra);
- a run that is still going (run.json "running", `is_live`: its lock held) is reported as far as
  it is: `Report.progress` (done / planned per subtask and model; live.py) and a banner line.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import msgspec

from engine.core.errors import EngineError
from engine.core.records import Item, JudgmentRecord, Record, Usage, judgment_decoder
from engine.core.rundoc import RunDoc, RunSpec, ScoresDoc
from engine.core.secrets import redact, remember_env
from engine.items import custom_head
from engine.report import reuse
from engine.report.build import build_report
from engine.report.explore import board, item_views, verdicts_of
from engine.report.figures import MISSING as FIGURES_MISSING
from engine.report.figures import write_figures
from engine.report.html import render_html
from engine.report.live import progress
from engine.report.markdown import render_markdown
from engine.report.view import Report, ReportInputs, ResponsesShown, ResponseTally
from engine.scoring import item_scores, score_run
from engine.spec import item_factory, judges_for, rubrics_by_source, subtasks
from engine.store.checkpoint import iter_heads, iter_records
from engine.store.lock import held as lock_held
from engine.store.rundoc_io import read_run, read_scores, run_config

__all__ = ["FIGURES_MISSING", "FORMATS", "RESPONSE_ROWS", "Report", "ReportInputs", "build_report", "is_live", "load_inputs",
           "render", "render_chunks", "report_for", "write_figures", "write_reports", "write_text"]

FORMATS = ("md", "html", "json")
FILES = {"md": "report.md", "html": "report.html"}
RESPONSE_ROWS = 500  # items (file order) an --items run's Responses table shows; the rest are only counted


def is_live(directory: Path) -> bool:
    """run.json says "running" and a live process holds the directory's lock: the run is going now."""
    return read_run(Path(directory)).status == "running" and lock_held(Path(directory))


def load_inputs(directory: Path, response_rows: int = RESPONSE_ROWS, *, keep: bool = False) -> ReportInputs:
    """`keep`: an --items run's inputs, when read, are kept in the directory for the next report
    (reuse.py); only where the report is written into the directory too, never by a command that
    only reads it (`report --output`, `compare`)."""
    directory = Path(directory)
    run = read_run(directory)
    live = run.status == "running" and lock_held(directory)
    notes: list[str] = []
    scores = _read_scores(directory, run, notes, live)
    spec = run.spec
    models = list(spec.models or _models_of(run.config))
    judgments = {p.stem: list(iter_records(p, judgment_decoder, live=live))
                 for p in sorted((directory / "judgments").glob("*.jsonl"))}
    if spec.items is not None:
        items, total, records, shown = _items_run(directory, run, models, notes, response_rows, live, keep)
        done = {t.model: {k: t.ok + t.failed for k in list(run.planned.get(t.model, {}))[:1] or ["custom/custom"]}
                for t in shown.models}
        return ReportInputs(directory=str(directory), run=run, scores=scores, records=records, judgments=judgments,
                            items=items, notes=tuple(notes), responses_shown=shown,
                            progress=progress(run, done, live) if run.status == "running" else None)
    records = {m: list(iter_records(directory / "responses" / f"{m}.jsonl", live=live)) for m in models}
    items, _ = _load_items(spec, notes)
    return ReportInputs(directory=str(directory), run=run, scores=scores, records=records, judgments=judgments,
                        items=items, notes=tuple(notes),
                        progress=progress(run, _done(records), live, _judged(run, judgments))
                        if run.status == "running" else None)


def _items_run(directory: Path, run: RunDoc, models: list[str], notes: list[str], rows: int, live: bool,
               keep: bool) -> tuple[dict[tuple[str, str, str], Item] | None, int | None, dict[str, list[Record]], ResponsesShown]:
    """An --items run's shown items and records and its tallies: kept from an earlier report when
    nothing they are made of changed (reuse.py), else read, and kept for the next one."""
    digest = None if live else reuse.key(directory, run.spec, models, rows)
    held = reuse.load(directory, digest) if digest is not None else None
    if held is not None:
        return {(i.pillar, i.subtask, i.id): i for i in held.items}, held.total, held.records, held.shown
    items, total = _load_items(run.spec, notes, keep=rows)
    records, shown = _stream_responses(directory, run, models, items, total, rows, live)
    if keep and digest is not None and items is not None and total is not None \
            and reuse.key(directory, run.spec, models, rows) == digest:  # nothing changed while read
        reuse.save(directory, reuse.Kept(key=digest, items=list(items.values()), total=total, records=records, shown=shown))
    return items, total, records, shown


def _judged(run: RunDoc, judgments: Mapping[str, list[JudgmentRecord]]) -> tuple[int, int]:
    """Judgments written and expected (0 when the run's config cannot be read back): each planned
    unit of a judged subtask once per judge of each rubric that scores it."""
    try:
        cfg = run_config(run, "run.json")
    except EngineError:
        return sum(map(len, judgments.values())), 0
    by_source = rubrics_by_source(subtasks(run.spec))
    planned = sum(units * len(judges_for(cfg, rubric)) for per in run.planned.values() for key, units in per.items()
                  for _, rubric in by_source.get(key, ()))
    return sum(map(len, judgments.values())), planned


def _done(records: Mapping[str, list[Record]]) -> dict[str, dict[str, int]]:
    return {m: dict(Counter(f"{r.pillar}/{r.subtask}" for r in rs)) for m, rs in records.items()}


def _stream_responses(directory: Path, run: RunDoc, models: list[str], items: Mapping[tuple[str, str, str], Item] | None,
                      total: int | None, rows: int, live: bool = False) -> tuple[dict[str, list[Record]], ResponsesShown]:
    """An --items run's records, one at a time: those of the shown items are kept (of the first `rows`
    item ids met when the items file is not here), every one is counted. A checkpoint never holds a
    key twice, so counting needs no set of the keys seen."""
    shown = {k[2] for k in items} if items is not None else set()
    units = None if total is None else total * max(run.spec.samples, 1)
    records: dict[str, list[Record]] = {}
    tallies = []
    dropped = False
    def choose(h: _Tally) -> bool:
        if items is None and len(shown) < rows:
            shown.add(h.item_id)
        return h.item_id in shown

    for m in models:
        kept = records[m] = []
        ok = failed = prompt = completion = 0
        # Only the shown items' records are decoded in full: the others are counted from their
        # item id and usage (20k records: 50 -> 25 ms).
        for heads, chosen in iter_heads(directory / "responses" / f"{m}.jsonl", _tally_decoder, choose, live=live):
            kept += chosen
            dropped = dropped or len(chosen) < len(heads)
            usage = [h.response.usage for h in heads if h.response is not None]
            ok += len(usage)
            failed += len(heads) - len(usage)
            prompt += sum(u.prompt_tokens for u in usage)
            completion += sum(u.completion_tokens for u in usage)
        tallies.append(ResponseTally(model=m, ok=ok, failed=failed, prompt_tokens=prompt, completion_tokens=completion,
                                     missing=None if units is None else max(units - ok - failed, 0)))
    n = len(items) if items is not None else len(shown)
    return records, ResponsesShown(shown=n, total=total, truncated=dropped or (total is not None and total > n),
                                   folder=str(directory / "responses"), models=tuple(tallies))


class _Usage(msgspec.Struct):
    usage: Usage = Usage()


class _Tally(msgspec.Struct):
    """What the Responses tallies read of a record."""

    item_id: str
    response: _Usage | None = None


_tally_decoder = msgspec.json.Decoder(_Tally)


def _models_of(config: Mapping[str, object]) -> Mapping[str, object]:
    models = config.get("models")
    return models if isinstance(models, Mapping) else {}


def _read_scores(directory: Path, run: RunDoc, notes: list[str], live: bool = False) -> ScoresDoc | None:
    """scores.json, else computed in memory; while the run is going, always computed (a scores.json
    there is an earlier invocation's)."""
    scores = None if live else read_scores(directory)
    if scores is not None:
        return scores
    if run.spec.items is not None:
        return None
    try:
        scores = score_run(directory)
    except (EngineError, OSError, ValueError, KeyError) as exc:
        notes.append(f"no scores.json and scoring failed ({exc}); ranks and metrics are not shown")
        return None
    notes.append("the run is still going: metrics computed from the records so far for this report (not saved)" if live
                 else "no scores.json: metrics computed from the records for this report (not saved)")
    return scores


def _load_items(spec: RunSpec, notes: list[str],
                keep: int | None = None) -> tuple[dict[tuple[str, str, str], Item] | None, int | None]:
    """The items (the first `keep` of them when given; the others are only counted) and how many
    there are; (None, None) when they cannot be rebuilt."""
    if spec.items is not None and not Path(spec.items).is_file():
        notes.append(f"a custom --items run whose items file {spec.items} is not here: responses without prompts")
        return None, None
    items: dict[tuple[str, str, str], Item] = {}
    total = 0
    try:
        if spec.items is not None and keep is not None:  # only the shown ones decoded
            head, total = custom_head(Path(spec.items), spec.limit, keep)
            items = {(i.pillar, i.subtask, i.id): i for i in head}
        else:
            for w in item_factory(spec)():
                total += 1
                if keep is None or total <= keep:
                    items[(w.item.pillar, w.item.subtask, w.item.id)] = w.item
    except (EngineError, OSError, ValueError, KeyError, msgspec.ValidationError) as exc:
        reason = exc.args[0] if exc.args else exc
        notes.append(f"items could not be rebuilt ({reason}); the drill-down shows item ids and is not re-scored")
        return None, None
    return items, total


def _secrets(run: RunDoc) -> tuple[str, ...]:
    """Values the environment holds for the run's api_key_env names (never written, only removed)."""
    names = [m.get("api_key_env") for m in _models_of(run.config).values() if isinstance(m, Mapping)]
    values = tuple(os.environ.get(n, "") for n in sorted({x for x in names if isinstance(x, str) and x}))
    remember_env(n for n in names if isinstance(n, str))
    return tuple(v for v in values if v)


# Public for `compare`, which writes model answers too.
secrets_for = _secrets


def render(report: Report, fmt: str, secrets: tuple[str, ...] = ()) -> str:
    if fmt == "md":
        text = render_markdown(report)
    elif fmt == "html":
        text = render_html(report, secrets)
    elif fmt == "json":
        text = _json(report)
    else:
        raise ValueError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    # Exact values only: the report quotes model answers, which key-shaped patterns must not touch.
    return redact(text, secrets, shapes=False)


def _json(value: object) -> str:
    return msgspec.json.format(msgspec.json.encode(value).decode(), indent=2) + "\n"


ITEMS_FIELD = '\n  "items": []'  # where the item list sits in the formatted document (a top-level field)
ITEMS_BATCH = 1000  # items formatted per piece


def render_chunks(report: Report, fmt: str, secrets: tuple[str, ...] = ()) -> Iterator[str]:
    """`render`'s text in pieces whose concatenation is the same text: JSON item by batch of
    items, so the full view model of a big run is never one string (a 12-model official-size run's
    is ~0.5 GB formatted, several copies of it at once when rendered whole). A key value cannot span
    two pieces: they are cut between items."""
    if fmt != "json" or not report.items:
        yield render(report, fmt, secrets)
        return
    head = _json(msgspec.structs.replace(report, items=()))
    cut = head.index(ITEMS_FIELD)
    yield redact(head[:cut] + '\n  "items": [\n', secrets, shapes=False)
    for start in range(0, len(report.items), ITEMS_BATCH):
        # A list of items formatted alone, its brackets taken off and each line indented one
        # level more: exactly those items' lines in the whole document (no JSON string holds a raw
        # newline).
        text = _json(report.items[start:start + ITEMS_BATCH])[2:-3].replace("\n", "\n  ")
        yield redact(("  " if start == 0 else ",\n  ") + text, secrets, shapes=False)
    yield redact("\n  ]" + head[cut + len(ITEMS_FIELD):], secrets, shapes=False)


def report_for(directory: Path, per_subtask: int = 5, response_rows: int = RESPONSE_ROWS, *,
               keep: bool = False) -> tuple[Report, tuple[str, ...]]:
    inputs = load_inputs(Path(directory), response_rows, keep=keep)
    parsed = verdicts_of(inputs)  # once, for the report's tables and the item browser
    report = build_report(inputs, per_subtask=per_subtask, parsed=parsed)
    models = [m.name for m in report.models]
    runnable = inputs.scores is not None and inputs.run.spec.items is None and inputs.items is not None
    known = _by_subtask(inputs.items) if runnable and inputs.items is not None else None
    items, note = item_views(inputs, models, (lambda: item_scores(Path(directory), known)) if runnable else None, parsed)
    report = msgspec.structs.replace(report, items=items, notes=(*report.notes, *([note] if note else ())),
                                     board=board(inputs.scores, models) if inputs.scores else None)
    return report, _secrets(inputs.run)


def _by_subtask(items: Mapping[tuple[str, str, str], Item]) -> dict[str, list[Item]]:
    """The loader's items by subtask key, in their order, for the scorer to take instead of building
    them again (robustness perturbation: ~25 s on a 12-model official-size run)."""
    out: dict[str, list[Item]] = {}
    for (pillar, subtask, _), item in items.items():
        out.setdefault(f"{pillar}/{subtask}", []).append(item)
    return out


def write_reports(directory: Path, per_subtask: int = 5, response_rows: int = RESPONSE_ROWS) -> list[Path]:
    directory = Path(directory)
    report, secrets = report_for(directory, per_subtask, response_rows, keep=True)
    paths = []
    for fmt, name in FILES.items():
        write_text(directory / name, render(report, fmt, secrets))
        paths.append(directory / name)
    return paths


def write_text(path: Path, text: str | Iterable[str]) -> None:
    """Atomically: a reader (a browser reloading during `report --watch`) sees the old file or the
    new one, and a Ctrl-C mid-write leaves the old one and no temporary file. `text` may come in
    pieces (`render_chunks`)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines([text] if isinstance(text, str) else text)
        os.replace(tmp, path)
    except OSError as exc:  # named by the file asked for, not the temporary one
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)
