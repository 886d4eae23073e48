"""Numbers, times and colours as every report renderer prints them (markdown, html, svg)."""

from __future__ import annotations

import datetime as dt
import math

from engine.report.view import ResponsesShown

RESPONSES_INTRO = "Every custom item (its last message) and each model's response:"


def fmt_num(v: object, digits: int = 3) -> str:
    """Numbers as every renderer prints them: ints as is, floats with `digits` decimals."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_num(x, digits) for x in v) + "]"
    return str(v)


def responses_intro(shown: ResponsesShown | None) -> str:
    """The Responses section's first line: a bounded table says how much it shows and where the rest is."""
    if shown is None or not shown.truncated:
        return RESPONSES_INTRO
    total = "?" if shown.total is None else str(shown.total)
    return (f"Showing {shown.shown} of {total} items (the first, in file order); every response is in "
            f"{shown.folder}/*.jsonl. Each shown item (its last message) and each model's response:")


def responses_counts(shown: ResponsesShown | None) -> tuple[list[str], list[list[object]]]:
    """Per model over every item of a bounded table (head, rows); no rows when the table shows all."""
    head = ["model", "ok", "failed", "missing"]
    if shown is None or not shown.truncated:
        return head, []
    return head, [[t.model, t.ok, t.failed, "?" if t.missing is None else t.missing] for t in shown.models]


def fmt_batch_cost(cost: float | None, saved: float | None) -> str:
    """A model's cost, and what batching saved when it ran as a batch lane."""
    return fmt_cost(cost) if saved is None else f"{fmt_cost(cost)} (batch; saved {fmt_cost(saved)})"


def fmt_cost(v: float | None) -> str:
    """Costs in the price's currency: 4 decimals below 1, else 2."""
    if v is None:
        return ""
    return f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"


# The rank table's mark of a model statistically tied with another (overlapping 95% intervals).
TIED = "≈"


def fmt_ci(ci: tuple[float, float] | None, why: str | None = None) -> str:
    """"[0.610, 0.790]"; "none (why)" where the value has no interval; "" where there is no value."""
    if ci is None:
        return f"none ({why})" if why else ""
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_policy(unparseable: str | None, tie_break: str | None) -> str:
    """The subtask's scoring options in words ("" when they are the defaults or unknown)."""
    parts = []
    if unparseable == "zero":
        parts.append("unparseable answers count as 0")
    elif unparseable == "wrong":
        parts.append("unparseable answers count as wrong (divided by every item asked, as the authors)")
    elif unparseable == "exclude":
        parts.append("unparseable answers excluded")
    if tie_break:
        parts.append(f"equal values ordered by {tie_break} (higher first)")
    return "; ".join(parts)


def fmt_prompts(prompts: str | None) -> str:
    """Which prompts a subtask that has the authors' templates ran with ("" for the others)."""
    if prompts == "official":
        return "prompts: official (the authors' templates)"
    if prompts == "own":
        return "prompts: own (engine wording, not comparable to the paper)"
    return ""


def fmt_protocol(prompts: str | None, constrained: bool | None, judge_constrained: bool | None,
                 judge_hardened: bool | None) -> str:
    """How a subtask asked, where scores.json says: its prompts, whether the target and the judge
    were held to a JSON schema, and a judge sent unhardened (no nonce delimiters) ("" when none)."""
    parts = [fmt_prompts(prompts)] if prompts else []
    if constrained is not None:
        parts.append(f"constrained: {'yes' if constrained else 'no'}")
    if judge_constrained is not None:
        parts.append(f"judge constrained: {'yes' if judge_constrained else 'no'}")
    if judge_hardened is False:  # an own-worded rubric unhardened: a run made before nonce delimiters
        parts.append("judge template as the authors sent it (reply inserted raw)" if prompts == "official"
                     else "judge not hardened (no nonce delimiters)")
    return "; ".join(parts)


def fmt_span(started: float | None, ended: float | None) -> str:
    """"started X, ended Y" with whatever is known."""
    parts = [f"started {fmt_time(started)}" if started else "", f"ended {fmt_time(ended)}" if ended else ""]
    return ", ".join(p for p in parts if p)


def rank_colour(rank: int | None, n_models: int) -> str:
    """Rank 1 green, the last rank red, through yellow (a light RdYlGn, readable under black text)."""
    if rank is None:
        return "#e5e5e5"
    t = 0.0 if n_models <= 1 else min(max((rank - 1) / (n_models - 1), 0.0), 1.0)
    stops = ((0.0, (0x66, 0xBD, 0x63)), (0.5, (0xFF, 0xFF, 0xBF)), (1.0, (0xF4, 0x6D, 0x43)))
    for (t0, c0), (t1, c1) in zip(stops, stops[1:]):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            return "#" + "".join(f"{round(a + (b - a) * f):02x}" for a, b in zip(c0, c1))
    return "#f46d43"
