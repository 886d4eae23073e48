"""Measured throughput of local models, kept across runs so that `plan` can say how long a local
lane takes: tokens (prompt + completion) per second of a lane's running time, per model
fingerprint (the same model, endpoint and generation settings), in $TRUSTMH_CACHE/throughput.json.

A run records its local lanes when it ends (`record`); `plan` reads them back (`measured`), or
the lanes of an earlier run in the same output directory. Never a constant: without a
measurement, the plan says there is none.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import msgspec

from adapters import registry
from engine.config import Config
from engine.core.paths import cache_root
from engine.core.rundoc import LaneSummary
from engine.runstate import model_fingerprint
from engine.store.whole import replace_whole


class Throughput(msgspec.Struct, frozen=True, kw_only=True):
    model: str  # the models key it was measured under
    tokens_per_s: float  # prompt + completion tokens over the lane's running time
    requests: int
    measured_at: float


def store_path() -> Path:
    return cache_root() / "throughput.json"


def of_lane(name: str, lane: LaneSummary) -> Throughput | None:
    tokens = lane.tokens.prompt + lane.tokens.completion
    if not lane.wall_s or tokens <= 0 or lane.sent < 4:  # a handful of requests says little
        return None
    return Throughput(model=name, tokens_per_s=round(tokens / lane.wall_s, 3), requests=lane.sent,
                      measured_at=time.time())


def _read(path: Path) -> dict[str, Throughput]:
    try:
        return msgspec.json.decode(path.read_bytes(), type=dict[str, Throughput])
    except (OSError, msgspec.DecodeError):
        return {}  # absent or unreadable: no measurement, never an error


def record(cfg: Config, lanes: Mapping[str, LaneSummary], path: Path | None = None) -> None:
    """Keeps the local lanes' throughput (the caller ignores an OSError: a plan hint never fails a run)."""
    path = path or store_path()
    found = {model_fingerprint(cfg.models[n]): t for n, lane in lanes.items()
             if n in cfg.models and registry.entry(cfg.models[n].adapter).local
             and (t := of_lane(n, lane)) is not None}
    if not found:
        return
    data = {**_read(path), **found}
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_whole(path, msgspec.json.encode(data))


def measured(cfg: Config, name: str, earlier: Mapping[str, LaneSummary], path: Path | None = None) -> Throughput | None:
    """Model `name`'s throughput: from an earlier run's lanes in this output directory, else from
    the store."""
    lane = earlier.get(name)
    here = of_lane(name, lane) if lane is not None else None
    return here or _read(path or store_path()).get(model_fingerprint(cfg.models[name]))
