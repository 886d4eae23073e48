"""The run documents as types: run.json (`RunDoc`), a shard's state file (the same `RunDoc`, with
`shard` set), the lane statistics inside them (`LaneSummary`) and scores.json (`ScoresDoc`).

Every reader and writer of these files goes through these Structs (engine/store/rundoc_io.py reads
and writes them), so a field is named once, here, and never looked up by string.

Schema rules, as for the records (engine/core/records.py):
- fields are only ever added, each with a default, so an older file still decodes;
- the JSON is the one the dict-building code wrote before these types existed: the same names,
  nesting and field order, and the same presence of keys. That is why the Structs do not use
  `omit_defaults` (a `null` or `0` the old writer always wrote must stay), and a key the old
  writer wrote only sometimes (`lanes` once a run has finished, `budget` with --budget, a metric's
  `reason` when it has one) is `UNSET` when absent, which msgspec never encodes;
- keys this code does not know are kept when a file is rewritten (the I/O layer copies them from
  the file it replaces), so an older engine rewriting a newer run.json loses nothing.

`config` stays the mapping engine/config.py validates (`parse_config`): this layer imports nothing
of the engine's, and the config has its own Struct there.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import UNSET, UnsetType

from engine.core.subtask import JudgeStats, Metric

__all__ = [
    "UNSET", "BackendDoc", "BudgetDoc", "Completion", "FileId", "Fingerprint", "HistoryEntry", "IntervalsDoc", "JudgeStats", "LaneSummary", "Latency",
    "Metric", "ModelScore", "PartitionDoc", "PillarRanks", "RayNode", "RunDoc", "RunSpec", "ScoresDoc", "ServersDoc", "ShardRun",
    "ShardState", "ShardsDoc", "SubtaskProtocol", "SubtaskScores", "TokenCounts", "UnsetType", "UsageCost",
]

Options = dict[str, dict[str, object]]  # [pillars."<key>"] sections, as TOML gives them
# The least finished first: merging shards keeps the least finished state of a lane.
LANE_STATES = ("failed", "stopped", "interrupted", "incomplete", "starting", "running", "pending", "complete")


class RunSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What to run, resolved from config + command line; stored in run.json as `spec`."""

    output: str
    models: tuple[str, ...]
    items: str | None = None  # custom items file, or None for pillar subtasks
    data_dir: str | None = None
    subtasks: tuple[str, ...] = ()
    limit: int = 0
    samples: int = 1
    options: Options = {}  # [pillars."<key>"] sections
    skipped: dict[str, str] = {}  # selected subtasks left out, with the reason (missing data)


# --------------------------------------------------------------------------- lane statistics


class Latency(msgspec.Struct, frozen=True, kw_only=True):
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


class TokenCounts(msgspec.Struct, frozen=True, kw_only=True):
    prompt: int = 0
    completion: int = 0
    reasoning: int = 0
    cached: int = 0


class LaneSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One lane's statistics in run.json `lanes.<model>` (engine/run/stats.py `LaneStats.summary`)."""

    state: str = "pending"
    message: str | None = None
    planned: int = 0
    skipped: int = 0  # already complete in the checkpoint
    done: int = 0  # final outcomes written this run
    judged: int = 0  # judgments written this run (as a judge lane)
    ok: int = 0
    fatal: int = 0
    exhausted: int = 0  # retries or deadline ran out: retried next run
    sent: int = 0
    retries: int = 0
    rate_limited: int = 0
    limit_pushbacks: int = 0
    truncated: int = 0
    requeried: int = 0
    errors: dict[str, int] = {}
    wait_s: float = 0.0
    busy_s: float = 0.0
    wall_s: float | None = None
    requests_per_s: float | None = None
    output_tokens_per_s: float | None = None
    latency_s: Latency = Latency()
    tokens: TokenCounts = TokenCounts()
    # --backend ray: where the lane's actor ran (engine/run/ray.py)
    node: str | UnsetType = UNSET
    node_id: str | UnsetType = UNSET
    host: str | UnsetType = UNSET
    pid: int | UnsetType = UNSET
    actor_restarts: int | UnsetType = UNSET  # every loss of the lane's actor (a replacement that died too counts)
    restart_causes: dict[str, int] | UnsetType = UNSET  # Ray's error name -> how many restarts it caused
    cost: float | UnsetType = UNSET  # not written by the engine; shown by the report when present
    # Across invocations (engine/run/stats.py `merge_invocations`); absent in run.json written before
    # lanes were merged, whose `lanes` hold the last invocation only. In `lanes` the counters are
    # summed over every invocation and wall_s is their summed running time; in a `history` entry
    # they are that invocation's.
    started_at: float | UnsetType = UNSET  # wall clock: the first invocation's start
    ended_at: float | UnsetType = UNSET  # the last invocation's end
    invocations: int | UnsetType = UNSET
    latency_hist: dict[int, int] | UnsetType = UNSET  # log bucket (5% wide, stats.py) -> requests
    # With a response cache (run --cache): units answered from it, and units it did not hold.
    cache_hits: int | UnsetType = UNSET
    cache_misses: int | UnsetType = UNSET


# --------------------------------------------------------------------------- run.json


class SubtaskProtocol(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """How one subtask asks: what its request bodies (and so its record keys) depend on beyond the
    items and the model. `prompts`: "own" or "official:<digest of the template bytes>";
    `constrained`: the target's JSON schema is sent; `judge_constrained`: its rubric's verdict is
    asked with one (None: not judged); `judge_hardened`: the judged reply goes fenced with a
    nonce; the generation values the subtask sets (None: the model's)."""

    prompts: str = "own"
    constrained: bool = False
    judge_constrained: bool | None = None
    # The judged reply between nonce delimiters (None: not judged, or recorded before this was:
    # read as false, the fixed delimiters of then; engine.spec.protocol_change).
    judge_hardened: bool | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None


# The options that state the protocol of a run.json written before `fingerprint.protocol` was
# recorded: every target's and judge's JSON schema was sent then (constrained output is opt-in
# since), and the judged reply went between fixed delimiters (nonce delimiters came later).
OLD_PROTOCOL: dict[str, object] = {"constrained": True, "judge_constrained": True, "judge_hardened": False}


class Fingerprint(msgspec.Struct, frozen=True, kw_only=True):
    """What a resume must match: the data, each model's request settings and each subtask's
    protocol (absent in run.json written before it was recorded: read as the protocol of then)."""

    data: str | None = None
    models: dict[str, str] = {}
    protocol: dict[str, SubtaskProtocol] | UnsetType = UNSET


class HistoryEntry(msgspec.Struct, frozen=True, kw_only=True):
    started_at: float | None = None
    ended_at: float | None = None
    status: str | None = None
    argv: list[str] = []
    merged_shards: int | UnsetType = UNSET  # a `merge`, not a run
    lanes: dict[str, LaneSummary] | UnsetType = UNSET  # this invocation's lane statistics


class PartitionDoc(msgspec.Struct, frozen=True, kw_only=True):
    """How shards split the work (engine/shards.py `Partition`)."""

    count: int
    local_models: dict[str, int] = {}
    api: str = "int(key[:8], 16) % N + 1"


class ShardState(msgspec.Struct, frozen=True, kw_only=True):
    """`shard` in a shard's own state file, run.shard-I-of-N.json."""

    index: int
    count: int
    partition: PartitionDoc


class RayNode(msgspec.Struct, frozen=True, kw_only=True):
    id: str  # Ray's node id (hex): nodes on one host share an IP
    ip: str


class BackendDoc(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    address: str | None = None
    # --backend ray (absent in run.json written before they were recorded): the driver's Ray
    # version and the nodes alive when it connected
    version: str | UnsetType = UNSET
    nodes: list[RayNode] | UnsetType = UNSET


class BudgetDoc(msgspec.Struct, frozen=True, kw_only=True):
    limit_usd: float
    spent_usd: float
    exhausted: bool


class ServersDoc(msgspec.Struct, frozen=True, kw_only=True):
    """This invocation's local servers: which GPUs, what each server reported, and when."""

    gpus: list[str] | None = None
    models: dict[str, dict[str, object]] = {}
    events: list[tuple[str, str, list[str]]] = []  # (acquire | release, model, gpus) in order


class ShardRun(msgspec.Struct, frozen=True, kw_only=True):
    """What merge keeps of one shard's state file, in run.json `shards.runs.<I>`."""

    status: str | None | UnsetType = UNSET
    started_at: float | None | UnsetType = UNSET
    ended_at: float | None | UnsetType = UNSET
    lanes: dict[str, LaneSummary] | UnsetType = UNSET
    history: list[HistoryEntry] | UnsetType = UNSET
    nodes: object = UNSET


class ShardsDoc(msgspec.Struct, frozen=True, kw_only=True):
    """run.json `shards` after a merge."""

    count: int
    partition: PartitionDoc
    merged_at: float
    runs: dict[str, ShardRun] = {}


class FileId(msgspec.Struct, frozen=True, kw_only=True):
    """A file's identity as the file system reports it: any append, truncation, rewrite or
    replacement changes at least one field (ctime cannot be set back by hand, as mtime can).
    Defaults, as Completion's: a record that lacks a field (another engine's) decodes and matches
    no file (no file has inode 0), instead of making run.json unreadable."""

    dev: int = 0
    ino: int = 0
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    """run.json `completion.<model>`: a target lane that ended with nothing left to do for a rerun of
    the same command (engine/run/completion.py). A rerun whose fingerprint and checkpoint identity
    both match skips the items walk, the resume scan and the item count for that lane, and
    reports these counts instead; any mismatch takes the full path. Every field has a default so
    that a record of another shape still decodes (and matches nothing)."""

    plan: str = ""  # everything the units, their bodies and keys are a function of (run-wide)
    fingerprint: str = ""  # `plan` with this lane's name and model config
    planned: dict[str, int] = {}  # units per "pillar/subtask" (engine.items.plan_counts)
    data: str = ""  # the run's `fingerprint.data` (a function of the plan)
    units: int = 0  # units the lane walks: each already in the checkpoint
    truncated: int = 0  # of them, prompts cut to fit the context (LaneSummary.truncated)
    records: int = 0  # records in the checkpoint
    fatal: int = 0  # of them, fatal-error records
    checkpoint: FileId | None = None  # responses/<model>.jsonl when the lane ended


class RunDoc(msgspec.Struct, frozen=True, kw_only=True):
    """run.json: what a run was asked to do and how it went; resume, verify, score and report need
    nothing else. A shard's run.shard-I-of-N.json is the same document with `shard` set."""

    format: int = 1
    config_source: str = ""
    config: dict[str, object]  # engine/config.py `config_to_builtins`; parsed back with `parse_config`
    spec: RunSpec
    fingerprint: Fingerprint = Fingerprint()
    planned: dict[str, dict[str, int]] = {}  # model -> subtask key -> units
    packages: dict[str, str] = {}
    started_at: float | None = None
    ended_at: float | None = None
    status: str = "running"
    # Why the run stopped when it could not write its files (status "storage_failed"): the line it
    # printed. Cleared by the next run.
    failure: str | UnsetType = UNSET
    history: list[HistoryEntry] = []
    shard: ShardState | UnsetType = UNSET
    backend: BackendDoc | UnsetType = UNSET
    budget: BudgetDoc | UnsetType = UNSET
    lanes: dict[str, LaneSummary] | UnsetType = UNSET  # set when a run finishes
    servers: ServersDoc | UnsetType = UNSET
    shards: ShardsDoc | UnsetType = UNSET  # set by `merge`
    # Lanes a rerun need not walk (set when a run ends; a run that starts drops it).
    completion: dict[str, Completion] | UnsetType = UNSET

    @property
    def lane_map(self) -> dict[str, LaneSummary]:
        return self.lanes if not isinstance(self.lanes, UnsetType) else {}


# --------------------------------------------------------------------------- scores.json


class PillarRanks(msgspec.Struct, frozen=True, kw_only=True):
    """PROTOCOL.md §2: the mean of a model's subtask ranks within the pillar, re-ranked. Every model
    is ranked over the same subtasks: one where it has no value counts as the worst rank. A subtask
    with no value for any model (no data, not run) is left out, and `partial` says "k of n
    subtasks"; `coverage` is each model's scored / planned items over the pillar's subtasks."""

    mean_subtask_rank: dict[str, float | None]
    ranks: dict[str, int | None]
    partial: str | UnsetType = UNSET
    coverage: dict[str, dict[str, int]] | UnsetType = UNSET


class ModelScore(Metric, frozen=True, kw_only=True):
    """scores.json `subtasks.<key>.models.<model>`: the subtask's `Metric` as stored. `judge` is
    there for a judged subtask only, and `reason` when the metric has one or is undefined."""

    judge: JudgeStats | UnsetType = UNSET  # type: ignore[assignment]  # absent, not null, when unjudged
    reason: str | UnsetType = UNSET  # type: ignore[assignment]  # absent, not null, without a reason
    ci_reason: str | UnsetType = UNSET  # type: ignore[assignment]  # absent, not null, when ci is set or value null

    @classmethod
    def of(cls, m: Metric, n_missing: int, judge: JudgeStats | None) -> ModelScore:
        reason: str | UnsetType = UNSET
        if m.reason is not None or m.value is None:
            reason = m.reason or "undefined"
        return cls(value=m.value, n=m.n, n_scored=m.n_scored, n_unparseable=m.n_unparseable, n_failed=m.n_failed,
                   n_missing=n_missing, ci=m.ci, breakdown=m.breakdown,
                   judge=judge if judge is not None else UNSET, reason=reason,
                   ci_reason=m.ci_reason if m.ci_reason is not None and m.value is not None else UNSET)

    @property
    def why(self) -> str | None:
        return self.reason if isinstance(self.reason, str) else None

    @property
    def judge_stats(self) -> JudgeStats | None:
        return self.judge if isinstance(self.judge, JudgeStats) else None


class SubtaskScores(msgspec.Struct, frozen=True, kw_only=True):
    headline: str
    direction: Literal["higher", "lower"]
    version: str | None = None
    judge: str | None = None  # the ranked judge
    unparseable: str = "exclude"  # [pillars."<key>"] unparseable: "exclude" | "zero"
    tie_break: str | None = None
    models: dict[str, ModelScore] = {}
    ranks: dict[str, int | None] = {}
    # Only for subtasks that have the authors' templates (ethics, privacy): "official" when they
    # ran with them, "own" (engine wording, not comparable to the paper) when not.
    prompts: Literal["official", "own"] | UnsetType = UNSET
    # Only for the subtasks whose target can be held to a JSON schema: whether it was (opt-in).
    constrained: bool | UnsetType = UNSET
    # Only for judged subtasks: whether the verdict was asked with a JSON schema; and `false` for a
    # rubric sent in the authors' template, reply inserted raw (no injection hardening).
    judge_constrained: bool | UnsetType = UNSET
    judge_hardened: bool | UnsetType = UNSET
    # Statistically tied: model -> the other models whose 95% interval overlaps its own (a model
    # without an interval is absent). `ranks` stays the paper's competition rank beside it.
    tied: dict[str, list[str]] | UnsetType = UNSET


class UsageCost(msgspec.Struct, frozen=True, kw_only=True):
    """Requests and tokens of one (model, role, pillar) in scores.json `usage`, priced."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float | None = None  # None: no [prices.<model>]
    # A batch lane's total only (README "Batch lanes"): the listed price minus the batch price paid.
    batch_saved_usd: float | UnsetType = UNSET


class IntervalsDoc(msgspec.Struct, frozen=True, kw_only=True):
    """scores.json `intervals`: how the `ci` fields were made (`score --seed`, README "Uncertainty")."""

    level: float = 0.95
    bootstrap_seed: int = 0
    bootstrap_resamples: int = 1000  # fewer (>= 200) for large subtasks: engine/intervals.py `resamples_for`
    tied: str = "95% intervals overlap"


class ScoresDoc(msgspec.Struct, frozen=True, kw_only=True):
    format: int = 1
    models: list[str]
    unparseable: str = "exclude"
    data: str = "builtin"
    limit: int = 0
    subtasks: dict[str, SubtaskScores] = {}
    pillars: dict[str, PillarRanks] = {}
    # engine/costs.py `UsageTable.usage`: model -> role -> pillar -> UsageCost, and model -> "total"
    # -> UsageCost (a role and "total" share one level, so that level has no Struct)
    usage: dict[str, dict[str, object]] = {}
    skipped: dict[str, str] = {}
    intervals: IntervalsDoc | UnsetType = UNSET  # absent in scores made before intervals
