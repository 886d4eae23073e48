"""run.json as one invocation writes it: the document at the start (what runs, over which data, with
which settings) and at the end (how it ended, per lane, the budget, the servers started).

This is the one place that composes run.json (a shard's state file has the same shape); everything
that reads it goes through engine.runstate. Earlier invocations' lanes, history and planned counts
are kept: a directory extended by several runs describes all of them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

from adapters.servers.gpus import GpuPool
from engine.config import Config
from engine.costs import Budget
from engine.runstate import config_doc, model_fingerprint, packages
from engine.shards import Partition, Shard
from engine.spec import RunSpec, merged_spec

RunDoc = dict[str, Any]  # run.json as JSON gives it (typed Structs come later)


def started(prev: RunDoc | None, cfg: Config, spec: RunSpec, *, config_source: str, data_fp: str,
            planned_units: Mapping[str, int], shard: Shard | None = None,
            partition: Partition | None = None) -> RunDoc:
    """run.json while the run goes on: the previous document (a resumed or extended run) updated
    with this invocation's config, spec, fingerprints and planned counts."""
    planned = dict(prev.get("planned", {})) if prev else {}
    fingerprints = dict(prev.get("fingerprint", {}).get("models", {})) if prev else {}
    for name in spec.models:
        planned[name] = {**planned.get(name, {}), **planned_units}
        fingerprints[name] = model_fingerprint(cfg.models[name])
    doc: RunDoc = dict(prev or {})
    prev_spec = dict(prev.get("spec", {})) if prev else {}
    doc.update({
        "format": 1,
        "config_source": config_source,
        "config": config_doc(cfg),
        "spec": merged_spec(prev_spec, spec),
        "fingerprint": {"data": data_fp, "models": fingerprints},
        "planned": planned,
        "packages": packages(),
        "started_at": time.time(),
        "ended_at": None,
        "status": "running",
    })
    doc.setdefault("history", [])
    if shard is not None and partition is not None:
        doc["shard"] = {"index": shard.index, "count": shard.count, "partition": partition.to_dict()}
    return doc


def servers_doc(pool: GpuPool | None, launched: Mapping[str, Mapping[str, object]]) -> dict[str, Any] | None:
    """This invocation's placement: servers started, on which GPUs, when (None: no local server)."""
    if pool is None and not launched:
        return None
    return {"gpus": pool.gpus if pool else None, "models": dict(launched),
            "events": [list(e[:2]) + [list(e[2])] for e in pool.events] if pool else []}


def finished(doc: RunDoc, *, status: str, lanes: Mapping[str, Mapping[str, object]], budget: Budget | None,
             ray_address: str | None, backend: str, servers: dict[str, Any] | None) -> RunDoc:
    """run.json at the end: how the run ended, each lane's counters (merged over earlier
    invocations' lanes), the budget and the servers; one more history entry."""
    if backend == "ray":
        doc["backend"] = {"kind": "ray", "address": ray_address}
    if budget is not None:
        doc["budget"] = {"limit_usd": budget.limit, "spent_usd": round(budget.spent, 6),
                         "exhausted": budget.exhausted}
    doc["lanes"] = {**doc.get("lanes", {}), **lanes}
    if servers is not None:
        doc["servers"] = servers
    doc["ended_at"] = time.time()
    doc["status"] = status
    doc["history"].append({"started_at": doc["started_at"], "ended_at": doc["ended_at"], "status": status,
                           "argv": sys.argv[1:]})
    return doc
