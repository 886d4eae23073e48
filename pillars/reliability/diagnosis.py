"""Reliability / Psychological Diagnosis: classify a post (SWMH) or a consultation (D4).

Neither dataset can be shipped (SWMH: HF-gated, no redistribution; D4: signed DUA; PROTOCOL.md
§3.1 and §5), so the official loaders read them from a data dir the user provides, and the
default run uses built-in items (``bench_data/reliability/diagnosis.jsonl``: own synthetic posts
covering the five SWMH labels).

SWMH (published format): ``swmh/{train,val,test}.csv`` with columns ``text,label``; labels are
subreddit names (``self.depression``, ``self.Anxiety``, ``self.bipolar``, ``self.SuicideWatch``,
``self.offmychest``), normalized to ``SWMH_LABELS``. Item id = 0-based row index of the split.

D4 (ASSUMED layout, not verified against the DUA release; adjust ``parse_d4`` if it differs):
``d4/D4.json``, a JSON list of dialogues, each an object with
  - ``id`` (optional; else the 0-based list index is the id),
  - the dialogue under ``log`` (or ``dialog`` / ``dialogue``): a list of ``{"speaker": "doctor" |
    "patient", "text"}`` (``content``/``utterance`` also accepted),
  - the labels under ``portrait`` (or at top level): depression severity 0-3 as ``drisk`` (or
    ``depression_risk`` / ``depression_severity``) and suicide risk 0-3 as ``srisk`` (or
    ``suicide_risk``).
Severity 0-3 maps to none/mild/moderate/severe, suicide risk 0-3 to none/low/medium/high. One
item per dialogue; ``d4_target`` chooses which label it asks for ("depression", the default
[I], as PsyEval's main D4 task, or "suicide").

Prompt [I, PsyEval-style]: one user message with the text, the label definitions and a request
for ``{"label": ...}``; ``params.json_schema`` constrains it where the provider supports that.
Only the post/dialogue text is user data; robustness/diagnosis perturbs it before
``build_prompt`` is applied, so instructions and options are never perturbed.

Scoring: ``match_label`` (JSON ``label`` field first, then the first label mentioned), with a few
spellings mapped back to their label (``LABEL_ALIASES``: "suicide watch"/"suicidal" ->
suicidewatch, "off my chest" -> offmychest); no label -> unparseable.
Headline: accuracy; macro-F1 and per-gold-label accuracy in the breakdown.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import msgspec

from engine.core.records import GenParams, Item, Message, Response
from engine.core.subtask import Aggregator, ItemScore, Judgment, Metric, OfficialSource, Row, Subtask
from pillars.common.loaders import read_csv_rows, read_json
from pillars.common.metrics import accuracy_metric
from pillars.common.parsing import match_label
from pillars.common.rows import as_list, as_mapping

__all__ = [
    "SWMH_LABELS",
    "D4_DEPRESSION_LABELS",
    "D4_SUICIDE_LABELS",
    "LABEL_DESCRIPTIONS",
    "TASK_LABELS",
    "LABEL_ALIASES",
    "DiagnosisOptions",
    "official_source",
    "normalize_swmh_label",
    "swmh_rows",
    "load_swmh",
    "parse_d4",
    "load_d4",
    "build_prompt",
    "label_schema",
    "diagnosis_item",
    "diagnosis_items",
    "score_diagnosis",
    "make_aggregate",
    "make_subtask",
    "SUBTASK",
]

SWMH_LABELS: tuple[str, ...] = ("depression", "anxiety", "bipolar", "suicidewatch", "offmychest")
D4_DEPRESSION_LABELS: tuple[str, ...] = ("none", "mild", "moderate", "severe")
D4_SUICIDE_LABELS: tuple[str, ...] = ("none", "low", "medium", "high")

LABEL_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "swmh": {
        "depression": "persistent low mood, hopelessness or loss of interest",
        "anxiety": "excessive worry, fear, panic or nervousness",
        "bipolar": "mood swings between depressive and manic or hypomanic episodes",
        "suicidewatch": "thoughts of suicide or wanting to end one's life",
        "offmychest": "venting about life events without a specific mental-health condition",
    },
    "d4-depression": {
        "none": "no depressive symptoms",
        "mild": "mild depression",
        "moderate": "moderate depression",
        "severe": "severe depression",
    },
    "d4-suicide": {
        "none": "no suicide risk",
        "low": "low suicide risk",
        "medium": "medium suicide risk",
        "high": "high suicide risk",
    },
}
# Spellings a model may use for a label it was shown; mapped back to the label before scoring.
LABEL_ALIASES: dict[str, dict[str, str]] = {
    "swmh": {
        "suicide watch": "suicidewatch",
        "suicidal": "suicidewatch",
        "off my chest": "offmychest",
    },
}
TASK_LABELS = {
    "swmh": SWMH_LABELS,
    "d4-depression": D4_DEPRESSION_LABELS,
    "d4-suicide": D4_SUICIDE_LABELS,
}


# --------------------------------------------------------------------------- loaders


def normalize_swmh_label(raw: str) -> str | None:
    """``self.SuicideWatch`` / ``SuicideWatch`` / ``suicide watch`` -> ``suicidewatch``; else None."""
    if not isinstance(raw, str):
        return None
    key = raw.strip().lower()
    key = key.removeprefix("self.").removeprefix("r/")
    key = re.sub(r"[\s_\-]+", "", key)
    return key if key in SWMH_LABELS else None


def swmh_rows(rows: Iterable[Mapping[str, str]]) -> Iterator[dict[str, str]]:
    """Normalized rows from SWMH CSV rows (``text,label``); an unknown label raises ValueError."""
    for i, raw in enumerate(rows):
        label = normalize_swmh_label(raw.get("label", ""))
        if label is None:
            raise ValueError(f"SWMH row {i}: unknown label {raw.get('label')!r}")
        yield {"id": str(i), "text": raw.get("text", ""), "label": label, "task": "swmh"}


def load_swmh(folder: Path, split: str = "test") -> Iterator[dict[str, str]]:
    yield from swmh_rows(read_csv_rows(Path(folder) / f"{split}.csv"))


def _first(obj: Mapping[str, object], keys: Sequence[str]) -> object:
    for k in keys:
        if k in obj and obj[k] is not None:
            return obj[k]
    return None


_D4_SPEAKERS = {"doctor": "医生", "patient": "患者", "医生": "医生", "患者": "患者"}


def parse_d4(data: object, target: str = "depression") -> Iterator[dict[str, str]]:
    """Normalized rows from the (assumed) D4 JSON list; see the module docstring for the layout."""
    if target not in ("depression", "suicide"):
        raise ValueError(f"d4 target must be 'depression' or 'suicide', got {target!r}")
    if not isinstance(data, list):
        raise ValueError("D4: expected a JSON list of dialogues")
    labels = D4_DEPRESSION_LABELS if target == "depression" else D4_SUICIDE_LABELS
    keys = (
        ("drisk", "depression_risk", "depression_severity", "depression")
        if target == "depression"
        else ("srisk", "suicide_risk", "suicide")
    )
    for i, entry in enumerate(data):
        if not isinstance(entry, Mapping):
            raise ValueError(f"D4 entry {i}: expected an object")
        turns = _first(entry, ("log", "dialog", "dialogue")) or []
        lines = []
        for t in as_list(turns, f"D4 entry {i}: dialogue"):
            t = as_mapping(t, f"D4 entry {i}: turn")
            speaker = str(t.get("speaker", t.get("role", ""))).strip().lower()
            text = str(_first(t, ("text", "content", "utterance")) or "").strip()
            lines.append(f"{_D4_SPEAKERS.get(speaker, speaker)}：{text}")
        portrait = entry.get("portrait")
        raw = _first(portrait, keys) if isinstance(portrait, Mapping) else None
        if raw is None:
            raw = _first(entry, keys)
        try:
            level = int(raw) if isinstance(raw, int | float | str) else int("")
        except ValueError:
            raise ValueError(f"D4 entry {i}: no {target} level (looked for {keys})") from None
        if not 0 <= level < len(labels):
            raise ValueError(f"D4 entry {i}: {target} level {level} outside 0-{len(labels) - 1}")
        yield {
            "id": str(entry["id"]) if "id" in entry else str(i),
            "text": "\n".join(lines),
            "label": labels[level],
            "task": f"d4-{target}",
        }


def load_d4(folder: Path, target: str = "depression") -> Iterator[dict[str, str]]:
    yield from parse_d4(read_json(Path(folder) / "D4.json"), target)


# --------------------------------------------------------------------------- prompt


def _task(row: Row) -> str:
    task = str(row.get("task", "swmh"))
    if task not in TASK_LABELS:
        raise ValueError(f"unknown diagnosis task {task!r}")
    return task


def build_prompt(row: Row) -> tuple[Message, ...]:
    """The classification prompt for a normalized row (the text goes in verbatim)."""
    task = _task(row)
    labels = TASK_LABELS[task]
    options = "\n".join(f"- {lab}: {LABEL_DESCRIPTIONS[task][lab]}" for lab in labels)
    if task == "swmh":
        head = (
            "Read the following social-media post and decide which mental-health category it "
            "fits best."
        )
        kind = "Post"
    else:
        what = "depression severity" if task == "d4-depression" else "suicide risk"
        head = (
            "Read the following doctor-patient consultation (in Chinese) and rate the patient's "
            f"{what}."
        )
        kind = "Consultation"
    content = (
        f"{head}\nCategories:\n{options}\n\n{kind}:\n\"\"\"\n{row['text']}\n\"\"\"\n\n"
        'Answer with one category name only, as JSON: {"label": "<category>"}'
    )
    return (Message(role="user", content=content),)


def label_schema(labels: Sequence[str]) -> dict[str, object]:
    """``GenParams.json_schema`` for ``{"label": <one of labels>}``."""
    return {
        "name": "diagnosis_label",
        "schema": {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": list(labels)}},
            "required": ["label"],
            "additionalProperties": False,
        },
    }


def diagnosis_item(
    row: Row, *, item_id: str | None = None, pillar: str = "reliability",
    subtask: str = "diagnosis", extra_meta: Mapping[str, object] | None = None,
) -> Item:
    task = _task(row)
    meta: dict[str, object] = {"base": str(row["id"]), "labels": list(TASK_LABELS[task]), "task": task}
    meta.update(extra_meta or {})
    return Item(
        id=item_id or str(row["id"]),
        pillar=pillar,
        subtask=subtask,
        messages=build_prompt(row),
        reference=row["label"],
        metadata=meta,
    )


def diagnosis_items(rows: Iterable[Row]) -> Iterator[Item]:
    for row in rows:
        yield diagnosis_item(row)


# --------------------------------------------------------------------------- scoring


def score_diagnosis(
    item: Item, response: Response | None, judgment: Judgment | None = None
) -> ItemScore:
    """1.0 when the parsed label equals the gold label, 0.0 otherwise; unparseable when no label."""
    group = {"gold": str(item.reference)}
    group.update(item.metadata.get("group", {}))
    if response is None:
        return ItemScore(item_id=item.id, reference=item.reference, status="failed", group=group)
    labels = list(item.metadata.get("labels") or SWMH_LABELS)
    aliases = LABEL_ALIASES.get(str(item.metadata.get("task", "swmh")), {})
    found = match_label(response.text, labels + list(aliases), json_field="label")
    label = aliases.get(found, found) if found is not None else None
    if label is None:
        return ItemScore(item_id=item.id, reference=item.reference, status="unparseable",
                         group=group)
    return ItemScore(
        item_id=item.id,
        value=1.0 if label == item.reference else 0.0,
        label=label,
        reference=item.reference,
        group=group,
    )


def make_aggregate(labels: Sequence[str]) -> Aggregator:
    def aggregate(scores: Sequence[ItemScore]) -> Metric:
        """Accuracy (Wilson CI); macro-F1 over ``labels`` and per-gold-label accuracy."""
        return accuracy_metric(scores, macro_f1_labels=labels, group_by="gold")

    return aggregate


class DiagnosisOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    dataset: str = "swmh"  # "swmh" | "d4"
    split: str = "test"  # SWMH split file
    d4_target: str = "depression"  # "depression" | "suicide"

    def __post_init__(self) -> None:
        if self.dataset not in ("swmh", "d4"):
            raise ValueError(f"dataset must be 'swmh' or 'd4', got {self.dataset!r}")
        if self.d4_target not in ("depression", "suicide"):
            raise ValueError(f"d4_target must be 'depression' or 'suicide', got {self.d4_target!r}")

    @property
    def task(self) -> str:
        return "swmh" if self.dataset == "swmh" else f"d4-{self.d4_target}"


def official_source(opts: DiagnosisOptions) -> OfficialSource:
    if opts.dataset == "swmh":
        return OfficialSource(dataset="swmh", files=(f"{opts.split}.csv",),
                              load=functools.partial(load_swmh, split=opts.split))
    return OfficialSource(dataset="d4", files=("D4.json",),
                          load=functools.partial(load_d4, target=opts.d4_target))


def make_subtask(**options: object) -> Subtask:
    opts = msgspec.convert(options, DiagnosisOptions)
    labels = TASK_LABELS[opts.task]
    return Subtask(
        make=make_subtask,
        pillar="reliability",
        id="diagnosis",
        version="1",
        kind="classification",
        headline="accuracy",
        direction="higher",
        items=diagnosis_items,
        score=score_diagnosis,
        aggregate=make_aggregate(labels),
        official=official_source(opts),
        params=GenParams(temperature=0.0, json_schema=label_schema(labels)),
        doc="Classify a post (SWMH, 5 subreddit labels) or a D4 consultation (severity); "
        "headline accuracy, macro-F1 in the breakdown. Official data is not shipped.",
        extra={
            "dataset": opts.dataset, "split": opts.split, "d4_target": opts.d4_target,
            "labels": list(labels),
        },
    )


SUBTASK = make_subtask()
