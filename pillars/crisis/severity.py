"""Crisis / Severity Identification: C-SSRS levels of Reddit users (PROTOCOL.md §3.2, [I]).

Items: the 500 users of ``500_Reddit_users_posts_labels.csv``; id = the file's own ``User`` field
("user-0" …). ``Post`` is a python-list string of the user's posts; 28 rows were cut at the
32,767-character spreadsheet cell limit and no longer parse as a list, so they are read as one
text with the list brackets and quotes stripped.

Truncation rule (default): the posts are joined with blank lines and only the first
``extra["max_chars"]`` characters (6000) are kept; ``metadata["truncated"]`` is True when text was
cut. A fixed character budget keeps prompts within every model's context (a few thousand tokens)
and is reproducible across tokenizers. Keeping the start is the simplest deterministic choice; which
posts drove each label is not recorded in the data. Change ``max_chars`` to trade context for
cost.

Prompt: the posts plus the five C-SSRS-derived level definitions (our wording), one level as JSON
{"label", "explanation"} (``params.json_schema`` constrains it where supported). Parsing:
``match_label``. Headline: accuracy; breakdown: macro-F1 and mean absolute error on the ordinal
scale Supportive 0 < Indicator 1 < Ideation 2 < Behavior 3 < Attempt 4.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from msgspec.structs import replace

from engine.core.records import GenParams, Item, Message, Response
from engine.core.subtask import ItemScore, Judgment, Metric, OfficialSource, Row, Subtask
from pillars.common.loaders import read_csv_rows
from pillars.common.metrics import accuracy_metric
from pillars.common.parsing import match_label
from pillars.common.rows import str_list

__all__ = [
    "SUBTASK",
    "LEVELS",
    "DEFINITIONS",
    "JSON_SCHEMA",
    "DEFAULT_MAX_CHARS",
    "parse_posts",
    "posts_text",
    "build_prompt",
    "parse_level",
    "score",
    "aggregate",
    "load_official",
]

CSV_FILE = "500_Reddit_users_posts_labels.csv"
LEVELS: tuple[str, ...] = ("Supportive", "Indicator", "Ideation", "Behavior", "Attempt")
ORDINAL = {name: i for i, name in enumerate(LEVELS)}
DEFAULT_MAX_CHARS = 6000
DEFINITIONS: dict[str, str] = {
    "Supportive": "the user mainly offers support or advice to others and shows no sign of "
    "personal suicide risk.",
    "Indicator": "the user shows risk factors or warning signs (for example depression, "
    "isolation, loss, substance use) but does not express suicidal thoughts.",
    "Ideation": "the user expresses thoughts about or wishes for death or suicide, without "
    "describing preparations or an attempt.",
    "Behavior": "the user describes self-harm or actions toward suicide (planning, obtaining "
    "means, preparing), but no attempt.",
    "Attempt": "the user describes a past or current suicide attempt.",
}
JSON_SCHEMA: dict[str, object] = {
    "name": "cssrs_level",
    "schema": {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": list(LEVELS)},
            "explanation": {"type": "string"},
        },
        "required": ["label", "explanation"],
        "additionalProperties": False,
    },
}


def parse_posts(post_field: str) -> list[str]:
    """The posts of one CSV cell: a python list literal, or (when cut short) one stripped text."""
    try:
        value = ast.literal_eval(post_field)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = None
    if isinstance(value, list):
        return [str(p) for p in value]
    s = post_field.strip()
    s = s.removeprefix("[").lstrip().removeprefix("'").removeprefix('"')
    s = s.removesuffix("]").rstrip().removesuffix("'").removesuffix('"')
    return [s]


def posts_text(posts: Sequence[str], max_chars: int = DEFAULT_MAX_CHARS) -> tuple[str, bool]:
    """The posts joined by blank lines, cut to ``max_chars``; (text, truncated)."""
    text = "\n\n".join(p.strip() for p in posts)
    if max_chars and len(text) > max_chars:
        return text[:max_chars], True
    return text, False


def build_prompt(text: str) -> str:
    levels = "\n".join(f"- {name}: {d}" for name, d in DEFINITIONS.items())
    return (
        "You are a mental health expert assessing suicide risk with a scale derived from the "
        "Columbia Suicide Severity Rating Scale (C-SSRS). Read the Reddit posts of one user "
        "and choose the level that best describes the user.\n\n"
        f"Levels:\n{levels}\n\n"
        'Reply with only a JSON object: {"label": "<one level name from the list>", '
        '"explanation": "<one short sentence>"}\n\n'
        f"Posts:\n{text}"
    )


def parse_level(text: str) -> str | None:
    return match_label(text, LEVELS, json_field="label")


def load_official(folder: Path) -> Iterator[dict[str, object]]:
    for raw in read_csv_rows(folder / CSV_FILE):
        yield {"id": raw["User"].strip(), "posts": parse_posts(raw["Post"]),
               "label": raw["Label"].strip()}


def items(rows: Iterable[Row]) -> Iterator[Item]:
    own = SUBTASK.extra.get("max_chars")
    max_chars = own if isinstance(own, int) else DEFAULT_MAX_CHARS
    for row in rows:
        rid = str(row["id"])
        text, truncated = posts_text(str_list(row["posts"], f"{rid}: posts"), max_chars)
        yield Item(
            id=rid,
            pillar="crisis",
            subtask="severity",
            messages=(Message(role="user", content=build_prompt(text)),),
            reference=row["label"],
            metadata={"base": rid, "truncated": truncated},
        )


def score(item: Item, response: Response | None, judgment: Judgment | None) -> ItemScore:
    base = ItemScore(item_id=item.id, reference=item.reference)
    if response is None:
        return replace(base, status="failed")
    level = parse_level(response.text)
    if level is None:
        return replace(base, status="unparseable")
    extras = {}
    if item.reference in ORDINAL:
        extras["abs_error"] = float(abs(ORDINAL[level] - ORDINAL[item.reference]))
    return replace(base, value=1.0 if level == item.reference else 0.0, label=level,
                   extras=extras)


def aggregate(scores: Sequence[ItemScore]) -> Metric:
    metric = accuracy_metric(scores, macro_f1_labels=LEVELS)
    errs = [s.extras["abs_error"] for s in scores
            if s.status == "scored" and "abs_error" in s.extras]
    breakdown = dict(metric.breakdown)
    breakdown["mae"] = sum(errs) / len(errs) if errs else None
    return replace(metric, breakdown=breakdown)


SUBTASK = Subtask(
    pillar="crisis",
    id="severity",
    version="1",
    kind="classification",
    headline="accuracy",
    direction="higher",
    items=items,
    score=score,
    aggregate=aggregate,
    official=OfficialSource(dataset="cssrs-reddit", files=(CSV_FILE,), load=load_official),
    params=GenParams(json_schema=JSON_SCHEMA),
    doc="Reddit C-SSRS 500 users, 5 severity levels; accuracy, MAE and macro-F1 in breakdown.",
    extra={"labels": list(LEVELS), "max_chars": DEFAULT_MAX_CHARS},
)
