"""How a subtask is declared: the contract between pillar packages and the engine.

A pillar package (`pillars/<pillar>/`) declares each subtask once as a `Subtask`. Everything a
subtask owns is pure: building items (and their prompts) from data rows, parsing answers,
scoring one item, aggregating a metric, building and parsing a judge prompt. The engine owns all
I/O: reading files, sending requests, writing records, calling judges.

Flow for one subtask:
  rows (official loader or bench_data/<pillar>/<subtask>.jsonl)
    -> Subtask.items(rows)           Items with prompts built, ids per PROTOCOL.md §6
    -> engine generates a Response per (item, sample)
    -> Subtask.rubric (if judged): judge messages -> judge text -> parse_judgment -> dict
    -> Subtask.score(item, response, judgment) -> ItemScore
    -> Subtask.aggregate([ItemScore...]) -> Metric
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol

import msgspec

from engine.core.fence import strip_quoted
from engine.core.prompts import PromptSet
from engine.core.records import GenParams, Item, Message, Response

Direction = Literal["higher", "lower"]
# One normalized data row, as an official loader or a built-in JSONL line gives it to `items`.
Row = Mapping[str, object]
# A judge output as `Rubric.parse` read it (field -> value); `score` receives it again.
Judgment = Mapping[str, object]


class ItemScore(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The score of one (item, sample).

    value: the per-item number the metric aggregates (1.0/0.0 for correct/incorrect, a judge score,
      a parsed rating); None when unparseable or failed.
    label: the parsed answer (a letter, a class label, a rating), for confusion tables and F1.
    status: "scored" | "unparseable" (answer or judgment could not be parsed) | "failed" (no response,
      fatal error or judge error). Nothing unparseable is silently turned into a 0.
    group: breakdown keys (e.g. {"tier": "2a"}, {"method": "cot"}) used by aggregate and reports.
    extras: further per-item numbers (e.g. per-principle judge scores sc1..sc5).
    """

    item_id: str
    sample: int = 0
    value: float | None = None
    label: str | None = None
    reference: object = None
    status: Literal["scored", "unparseable", "failed"] = "scored"
    group: dict[str, str] = {}
    extras: dict[str, float] = {}


class JudgeStats(msgspec.Struct, frozen=True, kw_only=True):
    """How the ranked judge's outputs went for one model's responses to a judged subtask."""

    judged: int = 0
    unparseable: int = 0
    not_judged: int = 0
    retried: int = 0


class Metric(msgspec.Struct, frozen=True, kw_only=True):
    """A subtask's metric for one model. value None means undefined, and then `reason` says why.
    `ci` is its 95% interval: the analytic one an aggregate knows (Wilson for a rate, Fisher z for a
    Pearson r, the normal interval of a mean), else the engine's seeded bootstrap over items
    (engine/intervals.py); null with `ci_reason` where undefined.

    The one metric shape: `aggregate` fills what it sees, the scorer adds `n_missing` (no record)
    and `judge`; scores.json stores it (engine/core/rundoc.py `ModelScore`, the same fields) and
    the report shows it."""

    value: float | None
    n: int
    n_scored: int
    n_unparseable: int
    n_failed: int
    n_missing: int = 0
    ci: tuple[float, float] | None = None
    breakdown: dict[str, object] = {}
    judge: JudgeStats | None = None
    reason: str | None = None
    # Why `ci` is null although `value` is not (e.g. one item: no spread to resample).
    ci_reason: str | None = None


# (item, response or None when generation failed, parsed judgment or None) -> ItemScore
Scorer = Callable[[Item, Response | None, Judgment | None], ItemScore]
Aggregator = Callable[[Sequence[ItemScore]], Metric]


class JudgeBuild(Protocol):
    """(item, response_text, nonce) -> judge messages. With a nonce (the engine passes one when
    the rubric is hardened) the response goes between nonce marker lines (engine.core.fence.fence,
    via pillars.common.judging.wrap_response); without one, as the rubric sent it before nonces:
    fixed delimiters (own wording) or raw (an official template)."""

    def __call__(self, item: Item, response_text: str, /, nonce: str | None = None) -> tuple[Message, ...]: ...


class Rubric(msgspec.Struct, frozen=True):
    """An LLM-as-judge rubric.

    build: see JudgeBuild. An own-worded rubric is hardened (nonce delimiters, lookalikes folded
      and defused); an official template gets the reply inserted raw, as its authors sent it, and
      says so with `hardened = False` (`judge_hardened = true` opts it in). A run made before
      nonces is read and resumed with `hardened = False` (engine.store.rundoc_io).
    schema: JSON schema for constrained judge output.
    parse: judge output text -> dict of scores, or None when unparseable (the last JSON object of
      the schema, then a last-match fallback; an official rubric reads the verdict as its authors
      did). The engine calls it through `read`.
    retry: whether an unparseable verdict is asked again (the authors never retried theirs).
    """

    name: str
    version: str
    build: JudgeBuild
    schema: dict[str, object]
    parse: Callable[[str], Judgment | None]
    judge: str | None = None  # a models key that must judge this rubric (else [judge] models[0])
    params: GenParams = GenParams(temperature=0.0, max_tokens=256)
    hardened: bool = True
    retry: bool = True
    constrained: bool = True  # JSON-schema decoding of the verdict (off where the authors read free text)

    def read(self, output: str) -> Judgment | None:
        """The verdict in a judge output; a hardened rubric reads the judge's own words only (the
        fenced blocks it quoted back are cut first, so a verdict inside the response never counts)."""
        return self.parse(strip_quoted(output) if self.hardened else output)


class OfficialSource(msgspec.Struct, frozen=True):
    """Where the official data lives, relative to a data dir laid out like shared/trustmh."""

    dataset: str  # folder name, e.g. "ethicmh"
    files: tuple[str, ...]  # paths inside that folder that the loader reads
    load: Callable[[Path], Iterator[Row]]  # dataset folder -> normalized rows (with "id")


class Subtask(msgspec.Struct, frozen=True):
    pillar: str
    id: str  # subtask id, PROTOCOL.md §6
    version: str
    kind: Literal["classification", "generation", "derived"]
    headline: str  # the ranked metric's name, e.g. "accuracy"
    direction: Direction
    items: Callable[[Iterable[Row]], Iterator[Item]]  # normalized rows -> Items
    score: Scorer
    aggregate: Aggregator
    official: OfficialSource | None = None
    rubric: Rubric | None = None
    params: GenParams = GenParams()  # protocol generation values; override the model's
    # "derived" subtasks score another subtask's responses (safety/antitoxic reads safety/jailbreak)
    source: str | None = None
    # A subtask compared against another one's scores ("pillar/subtask": robustness against the clean
    # reliability items); the engine generates that one too and hands its scores to aggregate.
    clean_source: str | None = None
    # The "pillar/subtask" whose bench_data rows this subtask's built-in items come from (None: its own).
    builtin_source: str | None = None
    doc: str = ""
    extra: dict[str, object] = msgspec.field(default_factory=dict)
    # The factory that builds this subtask with the options of its [pillars."<key>"] section (the
    # module's make_subtask); None when the subtask takes no options of its own.
    make: Callable[..., Subtask] | None = None
    # The authors' templates (file names in the data dir's official-prompts/) this subtask can run
    # with, and how it is rebuilt with them (keeping its options); `prompts` says which it runs
    # with: "official" (the authors' bytes) or "own" (engine wording, not comparable to the paper).
    prompt_files: tuple[str, ...] = ()
    with_prompts: Callable[[Subtask, PromptSet], Subtask] | None = None
    prompts: Literal["official", "own"] = "own"

    @property
    def key(self) -> str:
        return f"{self.pillar}/{self.id}"

    @property
    def generates_from(self) -> str:
        """The key of the subtask whose responses this one scores: its source when derived, else itself."""
        return self.source if self.kind == "derived" and self.source else self.key
