"""The report of a run that is still going (run.json "running"): how far it is, from run.json's
planned units and the records written so far, and the one line every format shows about it."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from engine.core.rundoc import RunDoc
from engine.report.view import Progress, UnitsDone


def progress(run: RunDoc, done: Mapping[str, Mapping[str, int]], live: bool, judged: tuple[int, int] = (0, 0)) -> Progress:
    """`done`: model -> "pillar/subtask" -> units with a record. Subtasks in plan order (then any
    with records but no plan), models in run.json order."""
    keys = list(dict.fromkeys([*(k for units in run.planned.values() for k in units),
                               *(k for per in done.values() for k in per)]))
    models = list(dict.fromkeys([*run.planned, *done]))
    subtasks = tuple(UnitsDone(key=k, done=sum(done.get(m, {}).get(k, 0) for m in models),
                               planned=sum(run.planned.get(m, {}).get(k, 0) for m in models)) for k in keys)
    per_model = tuple(UnitsDone(key=m, done=sum(done.get(m, {}).values()), planned=sum(run.planned.get(m, {}).values()))
                      for m in models)
    return Progress(live=live, done=sum(s.done for s in subtasks), planned=sum(s.planned for s in subtasks),
                    subtasks=subtasks, models=per_model, judgments_done=judged[0], judgments_planned=judged[1])


def _judging(p: Progress) -> str:
    if not p.judgments_planned and not p.judgments_done:
        return ""
    if not p.judgments_planned:
        return f", {p.judgments_done} judgments written"
    share = 100 * p.judgments_done / p.judgments_planned
    return f", {p.judgments_done} of about {p.judgments_planned} judgments ({min(share, 100):.0f} %)"


def banner(p: Progress) -> str:
    """The line at the top of every format."""
    share = f" ({100 * p.done / p.planned:.0f} %)" if p.planned else ""
    if p.live:
        return (f"This run is still going: {p.done} of {p.planned} generations done{share}{_judging(p)}. The report shows what "
                "is there so far (metrics from the records so far; ranks may change); rerun `report` or use "
                "`report --watch SECONDS` to follow it.")
    return (f"This run stopped before it finished (run.json says running, but no process holds its lock): "
            f"{p.done} of {p.planned} generations done{share}{_judging(p)}; rerun the same `run` command to resume it.")


def status_words(status: str | None, p: Progress | None) -> str:
    """run.json's status as the header shows it: a "running" run that no process holds is said to
    have stopped, as the banner says."""
    if status == "running" and p is not None:
        return "running" if p.live else "stopped before it finished; run.json says running"
    return status or "unknown status"


def _rows(p: Progress) -> list[tuple[str, int, int]]:
    return [(s.key, s.done, s.planned) for s in p.subtasks]


def banner_md(p: Progress | None) -> list[str]:
    """Markdown: the line, then done / planned per subtask (what is left shows at a glance)."""
    if p is None:
        return []
    rows = [f"| {k} | {d} | {n} |" for k, d, n in _rows(p)]
    return [f"> **{'Live' if p.live else 'Unfinished'}:** {banner(p)}", "",
            "| subtask | done | planned |", "|---|---|---|", *rows, f"| **all** | **{p.done}** | **{p.planned}** |", ""]


def banner_html(p: Progress | None) -> str:
    """HTML: the line (class note, id progress) and the per-subtask counts in a closed <details>."""
    if p is None:
        return ""
    rows = "".join(f'<tr data-subtask="{escape(k)}"><td>{escape(k)}</td><td class="num">{d}</td><td class="num">{n}</td></tr>'
                   for k, d, n in _rows(p))
    return (f'<div class="note" id="progress" data-live="{str(p.live).lower()}" data-done="{p.done}" '
            f'data-planned="{p.planned}"><b>{"Live" if p.live else "Unfinished"}:</b> {escape(banner(p))}'
            f"<details><summary>done / planned per subtask</summary><table><thead><tr><th>subtask</th><th>done</th>"
            f"<th>planned</th></tr></thead><tbody>{rows}</tbody></table></details></div>")
