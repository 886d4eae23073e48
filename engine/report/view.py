"""The report's view model: everything `engine report` shows, as frozen msgspec Structs.

engine/report/build.py builds a `Report` from what the loader read (a `ReportInputs`); the renderers
(markdown, html, svg) only format it (engine/report/format.py); `--format json` encodes it as is.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import UNSET, UnsetType

from engine.core.records import Item, JudgmentRecord, Message, Record
from engine.core.rundoc import RunDoc, ScoresDoc
from engine.core.subtask import Metric

Group = Literal["api", "local"]
RadarGroup = Literal["api", "local", "all"]  # "all": one radar when a group has a single model


class ModelInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str  # the [models.<name>] key
    group: Group
    adapter: str
    model_id: str  # the id sent to the server


class RankCell(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    rank: int | None
    value: float | None
    n: int | None = None
    ci: tuple[float, float] | None = None
    reason: str | None = None
    scored: bool = True  # False: the subtask (or this model) has no entry in scores.json
    # The models whose 95% interval overlaps this one's (scores.json `tied`): statistically tied,
    # whatever the paper-style rank says.
    tied: tuple[str, ...] = ()


class SubtaskRow(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    pillar: str
    subtask: str
    headline: str | None
    direction: str | None
    scored: bool
    cells: tuple[RankCell, ...]  # in RankTable.models order


class PillarCell(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    rank: int | None
    mean_subtask_rank: float | None


class PillarBlock(msgspec.Struct, frozen=True, kw_only=True):
    pillar: str
    rows: tuple[SubtaskRow, ...]
    cells: tuple[PillarCell, ...]  # the pillar rank, in RankTable.models order; empty if unranked


class RankTable(msgspec.Struct, frozen=True, kw_only=True):
    models: tuple[ModelInfo, ...]  # API models first, then local ones (config order within)
    blocks: tuple[PillarBlock, ...]


class RadarSeries(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    ranks: tuple[int | None, ...]  # one per axis


class Radar(msgspec.Struct, frozen=True, kw_only=True):
    group: RadarGroup
    axes: tuple[str, ...]  # pillar ids
    n_models: int  # ranks run 1..n_models (across every model of the run)
    series: tuple[RadarSeries, ...]


class ModelMetric(Metric, frozen=True, kw_only=True):
    """One model's metric of a subtask as scores.json holds it (the one `Metric` shape), with the
    model and its rank."""

    model: str
    rank: int | None
    value: float | None = None
    n: int = 0
    n_scored: int = 0
    n_unparseable: int = 0
    n_failed: int = 0
    # The breakdown is shown as tables (SubtaskDetail.breakdown), not repeated per metric.
    breakdown: dict[str, object] | UnsetType = UNSET  # type: ignore[assignment]  # absent here, a dict in Metric


class BreakdownRow(msgspec.Struct, frozen=True, kw_only=True):
    label: str  # the path below the table's key ("" when the table is per model only)
    model: str
    cells: dict[str, object]  # column -> value; an absent column is absent here


class BreakdownTable(msgspec.Struct, frozen=True, kw_only=True):
    title: str
    columns: tuple[str, ...]
    rows: tuple[BreakdownRow, ...]


class SubtaskDetail(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    headline: str
    direction: str
    version: str | None
    judge: str | None
    metrics: tuple[ModelMetric, ...]
    breakdown: tuple[BreakdownTable, ...]
    unparseable: str | None = None  # "exclude" | "zero" ([pillars."<key>"] unparseable) | "wrong" (ethics' unreadable)
    tie_break: str | None = None  # breakdown key that orders equal values (higher first)
    prompts: str | None = None  # "official" | "own", for the subtasks that have the authors' templates
    constrained: bool | None = None  # target held to a JSON schema (None: the subtask offers none)
    judge_constrained: bool | None = None  # None: not judged
    judge_hardened: bool | None = None  # False: the authors' judge template, reply inserted raw


class JudgeCounts(msgspec.Struct, frozen=True, kw_only=True):
    subtask: str
    judge: str
    judged: int
    unparseable: int
    not_judged: int
    retried: int


class JudgeAgreement(msgspec.Struct, frozen=True, kw_only=True):
    subtask: str
    judge_a: str  # the ranked judge
    judge_b: str
    n: int  # responses both judges scored with a numeric label (> 0)
    share_agree: float
    kappa: float | None  # Cohen's kappa; None when undefined (both judges used one and the same label)


class KeywordAgreement(msgspec.Struct, frozen=True, kw_only=True):
    subtask: str
    model: str
    n: int
    share_agree: float | None = None
    kappa: float | None = None
    keyword_rta: float | None = None
    judge_rta: float | None = None


class LanePerf(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    state: str | None
    planned: int | None
    done: int | None
    judged: int | None
    requests_per_s: float | None
    output_tokens_per_s: float | None
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    retries: int | None
    rate_limited: int | None
    errors: dict[str, int]
    wait_s: float | None
    busy_s: float | None
    wall_s: float | None
    tokens: dict[str, int]
    cost: float | None = None
    invocations: int | None = None  # merged over this many invocations (None: a run.json from before)
    started_at: float | None = None  # the first invocation's start (wall clock)
    ended_at: float | None = None  # the last one's end


class TokenUse(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    responses: int
    prompt_tokens: int
    completion_tokens: int
    judgments: int
    judge_prompt_tokens: int
    judge_completion_tokens: int
    cost: float | None = None  # from config [prices.<model>] when set (a batch lane: its batch price)
    batch_saved: float | None = None  # a batch lane: the listed price minus what it paid


class JudgeText(msgspec.Struct, frozen=True, kw_only=True):
    judge: str
    try_: int = msgspec.field(name="try")
    text: str | None = None
    error: str | None = None


class DrillResponse(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    status: str  # scored | unparseable | failed | missing | unknown (not scorable here)
    score: float | None = None
    label: str | None = None
    text: str | None = None
    finish_reason: str | None = None
    error: str | None = None
    judgments: tuple[JudgeText, ...] = ()


class DrillItem(msgspec.Struct, frozen=True, kw_only=True):
    item_id: str
    sample: int
    prompt: tuple[Message, ...] | None  # None when the items could not be rebuilt
    reference: object = None
    responses: tuple[DrillResponse, ...] = ()


class Drill(msgspec.Struct, frozen=True, kw_only=True):
    subtask: str
    total: int  # (item, sample) units with at least one record
    items: tuple[DrillItem, ...]
    order: str  # how the sample was chosen


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    directory: str
    status: str | None
    config_source: str | None
    started_at: float | None
    ended_at: float | None
    data: str | None
    limit: int | None
    samples: int | None
    judges: tuple[str, ...]


class ResponseCell(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    text: str | None = None  # clipped; None: failed or missing
    status: str = "ok"  # ok | failed | missing


class ResponseRow(msgspec.Struct, frozen=True, kw_only=True):
    """One custom item of an --items run: its prompt (the last message) and each model's answer."""

    item_id: str
    sample: int = 0
    prompt: str | None = None
    cells: tuple[ResponseCell, ...] = ()


class ResponseTally(msgspec.Struct, frozen=True, kw_only=True):
    """One model's records of an --items run, counted over every item while the loader streams them."""

    model: str
    ok: int = 0
    failed: int = 0  # a record without a response
    missing: int | None = None  # (item, sample) units without a record; None: the items file is not here
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ResponsesShown(msgspec.Struct, frozen=True, kw_only=True):
    """How much of an --items run the Responses table shows: a bounded head in file order (a 1M-item
    table is of no use to a reader and would hold every record); the tallies cover every item."""

    shown: int  # items in the table
    total: int | None  # items in the items file (None: the file is not here)
    truncated: bool
    folder: str  # where every response is (DIR/responses)
    models: tuple[ResponseTally, ...] = ()


class Answer(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    model: str
    outcome: str  # one of engine.report.explore.OUTCOMES
    text: str | None = None  # the raw response
    parsed: str | None = None  # the parsed answer (the scorer's label)
    score: float | None = None  # the per-item value the metric aggregates
    judge: str | None = None  # the ranked judge whose verdict this is
    verdict: dict[str, object] | None = None  # its parsed judgment
    judge_score: float | None = None  # one number of the verdict (build.judgment_label), for the score filter
    rationale: str | None = None  # the verdict's own explanation field, else the judge's raw output
    error: str | None = None
    finish: str | None = None


class ItemView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    subtask: str  # pillar/subtask key
    id: str
    sample: int = 0
    prompt: tuple[Message, ...] | None = None  # None: the items could not be rebuilt
    reference: object = None
    answers: tuple[Answer, ...] = ()  # one per model, in the report's model order


class BoardCell(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    rank: int | None = None
    value: float | None = None  # the metric (subtask) or the mean subtask rank (pillar)
    ci: tuple[float, float] | None = None
    scored: int | None = None  # coverage: items scored / planned, and what was not scored
    planned: int | None = None
    unparseable: int | None = None
    refused: int | None = None
    failed: int | None = None
    reason: str | None = None
    tied: tuple[str, ...] = ()  # scores.json `tied`: the models whose 95% interval overlaps this one's
    absent: bool = False  # the model has no entry for this subtask in scores.json


class BoardRow(msgspec.Struct, frozen=True, kw_only=True):
    key: str  # pillar id, or pillar/subtask
    headline: str | None = None
    direction: str | None = None
    cells: tuple[BoardCell, ...]  # in Board.models order
    subtasks: tuple[BoardRow, ...] = ()


class Board(msgspec.Struct, frozen=True, kw_only=True):
    models: tuple[str, ...]
    pillars: tuple[BoardRow, ...]
class UnitsDone(msgspec.Struct, frozen=True, kw_only=True):
    """Generation units (item x sample) with a record (a response or a final error), of those planned."""

    key: str  # "pillar/subtask", or a model's name
    done: int
    planned: int


class Progress(msgspec.Struct, frozen=True, kw_only=True):
    """How far the run is: filled when run.json says "running". `live`: a process holds the
    directory's lock now (the report shows what is there so far); else the run stopped without
    finishing (killed) and rerunning the same command resumes it."""

    live: bool
    done: int
    planned: int
    subtasks: tuple[UnitsDone, ...]  # summed over models, in plan order
    models: tuple[UnitsDone, ...]  # summed over subtasks
    # Judgments written (every judge) and expected (each planned unit of a judged subtask, once per
    # judge of its rubrics, as the run's start line estimates): judging goes on after generation.
    judgments_done: int = 0
    judgments_planned: int = 0


class Report(msgspec.Struct, frozen=True, kw_only=True):
    format: int = 1
    title: str
    run: RunInfo
    models: tuple[ModelInfo, ...]
    rank_table: RankTable | None
    radars: tuple[Radar, ...]
    subtasks: tuple[SubtaskDetail, ...]
    judge_counts: tuple[JudgeCounts, ...]
    judge_agreement: tuple[JudgeAgreement, ...]
    keyword_agreement: tuple[KeywordAgreement, ...]
    lanes: tuple[LanePerf, ...]
    tokens: tuple[TokenUse, ...]
    drilldown: tuple[Drill, ...]
    notes: tuple[str, ...]
    responses: tuple[ResponseRow, ...] = ()  # a custom --items run: prompt x model
    responses_shown: ResponsesShown | None = None  # a custom --items run: the table's bound and the totals
    board: Board | None = None  # the leaderboard (pillar rows expanding to subtasks, coverage per cell)
    items: tuple[ItemView, ...] = ()  # every item with every model's answer (the item browser)
    progress: Progress | None = None  # run.json says "running": done / planned so far (None: the run ended)


class ReportInputs(msgspec.Struct, frozen=True, kw_only=True):
    """What the loader read from a run directory. `items` is None when they could not be rebuilt
    (data dir absent on this machine, a custom --items run); `notes` carries why."""

    directory: str
    run: RunDoc
    scores: ScoresDoc | None
    records: dict[str, list[Record]]  # model -> responses
    judgments: dict[str, list[JudgmentRecord]]  # judge -> judge outputs
    items: dict[tuple[str, str, str], Item] | None
    notes: tuple[str, ...] = ()
    # A custom --items run: `records` and `items` hold only the items the Responses table shows;
    # the counts over every item are here.
    responses_shown: ResponsesShown | None = None
    progress: Progress | None = None
