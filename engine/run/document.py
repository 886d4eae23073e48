"""run.json as one invocation writes it: the document at the start (what runs, over which data, with
which settings) and at the end (how it ended, per lane, the budget, the servers started).

This is the one place that composes run.json (a shard's state file has the same shape), as the
typed `RunDoc` (engine/core/rundoc.py); engine/store/rundoc_io.py reads and writes it. Earlier
invocations' lanes, history and planned counts are kept: a directory extended by several runs
describes all of them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping

import msgspec

from adapters.servers.gpus import GpuPool
from engine.config import Config
from engine.core.rundoc import (
    UNSET,
    BackendDoc,
    BudgetDoc,
    Completion,
    Fingerprint,
    HistoryEntry,
    LaneSummary,
    RunDoc,
    RunSpec,
    ServersDoc,
    ShardState,
    SubtaskProtocol,
    UnsetType,
)
from engine.costs import Budget
from engine.run.stats import merge_invocations
from engine.runstate import config_doc, model_fingerprint, packages
from engine.shards import Partition, Shard
from engine.spec import merged_spec


def started(prev: RunDoc | None, cfg: Config, spec: RunSpec, *, config_source: str, data_fp: str,
            protocol: Mapping[str, SubtaskProtocol] | None = None,
            planned_units: Mapping[str, int], shard: Shard | None = None,
            partition: Partition | None = None) -> RunDoc:
    """run.json while the run goes on: the previous document (a resumed or extended run) updated
    with this invocation's config, spec, fingerprints and planned counts."""
    planned = dict(prev.planned) if prev else {}
    fingerprints = dict(prev.fingerprint.models) if prev else {}
    for name in spec.models:
        planned[name] = {**planned.get(name, {}), **planned_units}
        fingerprints[name] = model_fingerprint(cfg.models[name])
    base = prev if prev is not None else RunDoc(config={}, spec=spec)
    doc = msgspec.structs.replace(
        base, format=1, config_source=config_source, config=config_doc(cfg),
        spec=merged_spec(prev.spec if prev else None, spec), fingerprint=Fingerprint(
            data=data_fp, models=fingerprints, protocol={**_recorded(prev), **(protocol or {})}),
        planned=planned, packages=packages(), started_at=time.time(), ended_at=None, status="running",
        failure=UNSET, completion=UNSET)  # what this run writes may end any lane's completion
    if shard is not None and partition is not None:
        doc = msgspec.structs.replace(doc, shard=ShardState(index=shard.index, count=shard.count,
                                                            partition=partition.doc()))
    return doc


def _recorded(prev: RunDoc | None) -> dict[str, SubtaskProtocol]:
    p = prev.fingerprint.protocol if prev is not None else UNSET
    return dict(p) if not isinstance(p, UnsetType) else {}


def servers_doc(pool: GpuPool | None, launched: Mapping[str, Mapping[str, object]]) -> ServersDoc | None:
    """This invocation's placement: servers started, on which GPUs, when (None: no local server)."""
    if pool is None and not launched:
        return None
    return ServersDoc(gpus=list(pool.gpus) if pool else None, models={n: dict(v) for n, v in launched.items()},
                      events=[(e[0], e[1], list(e[2])) for e in pool.events] if pool else [])


def finished(doc: RunDoc, *, status: str, lanes: Mapping[str, LaneSummary], budget: Budget | None,
             backend: BackendDoc | None, servers: ServersDoc | None, failure: str | None = None,
             completion: Mapping[str, Completion] | None = None) -> RunDoc:
    """run.json at the end: how the run ended, each lane's counters (this invocation's in its history
    entry; in `lanes` merged with the earlier invocations', `stats.merge_invocations`), the budget,
    the backend (None: local), the servers, when the disk failed, the line saying so, and the lanes a
    rerun need not walk (engine/run/completion.py); one more history entry."""
    ended = time.time()
    before = doc.lane_map
    return msgspec.structs.replace(
        doc,
        backend=backend if backend is not None else doc.backend,
        packages={**doc.packages, "ray": backend.version} if backend is not None and isinstance(backend.version, str)
        else doc.packages,
        budget=BudgetDoc(limit_usd=budget.limit, spent_usd=round(budget.spent, 6), exhausted=budget.exhausted)
        if budget is not None else doc.budget,
        lanes={**before, **{name: merge_invocations(before.get(name), lane) for name, lane in lanes.items()}},
        servers=servers if servers is not None else doc.servers,
        ended_at=ended, status=status, failure=failure if failure is not None else UNSET,
        completion=dict(completion) if completion else UNSET,
        history=[*doc.history, HistoryEntry(started_at=doc.started_at, ended_at=ended, status=status,
                                            argv=sys.argv[1:], lanes=dict(lanes))])
