"""How one invocation runs: the command line's run options, and what the runner resolves from
them before it builds the lanes (the invocation: config, spec, directory, shard, item source)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Literal

import msgspec

from engine.config import Config
from engine.core.rundoc import FileId, RunSpec, SubtaskProtocol
from engine.items import ItemFactory
from engine.shards import Partition, Shard

Log = Callable[[str], None]


class RunOptions(msgspec.Struct, frozen=True, kw_only=True):
    """`run` / `judge` flags that are not part of the spec (they change how, not what)."""

    fresh: bool = False  # move earlier results aside and start over
    retry_errors: bool = False  # send final errors again
    allow_failures: bool = False  # exit 0 although some items ended without a response
    judge_only: bool = False  # `judge DIR`: no target lanes, only the judges
    budget_usd: float | None = None
    shard: Shard | None = None  # this invocation runs that part of the work, in its own files
    backend: Literal["local", "ray"] = "local"  # ray: each lane's requests run in a Ray actor
    ray_address: str | None = None
    ray_connect_s: int = 6  # --ray-connect-timeout: the cluster's answer is awaited this long (3 waits)
    progress: bool = False  # tqdm bars; without them, status lines (status_every)
    status_every: float = 30.0  # seconds between status lines when bars are off; 0 = none
    config_source: str = ""  # the config file's path as given, for run.json


class Early(msgspec.Struct, frozen=True):
    """What the run knows before the output directory is locked (engine/run/completion.py): the plan
    fingerprint and the items file's identity when it was hashed; and from a completion record of
    the same plan (None: none), the planned counts (which `plan_counts` walks every item for) and
    the data fingerprint (which hashes the items file again)."""

    plan: str
    items: FileId | None
    planned: dict[str, int] | None = None
    data: str | None = None


class Invocation(msgspec.Struct, frozen=True, dict=True):  # dict: for cached_property
    """One run's resolved inputs, shared by the parts that build and run its lanes."""

    cfg: Config
    spec: RunSpec
    opts: RunOptions
    factory: ItemFactory
    planned_units: Mapping[str, int]  # units per "pillar/subtask" of one target lane
    data_fp: str
    log: Log
    protocol: Mapping[str, SubtaskProtocol] = msgspec.field(default_factory=dict)  # engine.spec.protocols
    early: Early | None = None  # the plan fingerprint (engine/run/completion.py); None: nothing recorded

    @property
    def out(self) -> Path:
        return Path(self.spec.output)

    @property
    def shard(self) -> Shard | None:
        return self.opts.shard

    @property
    def suffix(self) -> str:
        return self.shard.suffix if self.shard is not None else ""

    @property
    def log_dir(self) -> Path:
        return self.out / "logs" if self.shard is None else self.out / "logs" / self.shard.tag

    @cached_property
    def partition(self) -> Partition | None:
        return Partition.of(self.cfg, self.shard.count) if self.shard is not None else None

    @property
    def targets(self) -> tuple[str, ...]:
        """The models this invocation generates for: a shard runs only its own local models (and its
        part of the others); `judge` none."""
        names = () if self.opts.judge_only else self.spec.models
        part, shard = self.partition, self.shard
        if part is not None and shard is not None:
            names = tuple(n for n in names if part.has_model(n, shard.index))
        return names
