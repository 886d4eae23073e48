"""The registry of pillars and subtasks, in PROTOCOL.md §6 report order, and item loading.

Pillar packages are imported lazily and a pillar package that does not exist yet is skipped, so
the engine works while pillars are added one by one. A package that exists but fails to import is
an error and is not hidden.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from engine.core.records import Item
from engine.core.subtask import Subtask
from pillars.common.loaders import builtin_rows

__all__ = ["PILLARS", "all_subtasks", "builtin_source", "get", "select", "load_items"]

PILLARS: tuple[str, ...] = (
    "reliability",
    "crisis",
    "safety",
    "fairness",
    "privacy",
    "robustness",
    "anti_sycophancy",
    "ethics",
)


def _pillar_subtasks(pillar: str) -> tuple[Subtask, ...]:
    name = f"pillars.{pillar}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            return ()
        raise
    return tuple(getattr(module, "SUBTASKS", ()))


def all_subtasks() -> tuple[Subtask, ...]:
    """Every registered subtask, pillar by pillar in report order."""
    return tuple(sub for pillar in PILLARS for sub in _pillar_subtasks(pillar))


def get(key: str) -> Subtask:
    """The subtask with key "pillar/subtask"."""
    subs = all_subtasks()
    for sub in subs:
        if sub.key == key:
            return sub
    valid = ", ".join(s.key for s in subs)
    raise KeyError(f"unknown subtask {key!r}; valid keys: {valid}")


def select(pillars: Sequence[str]) -> tuple[Subtask, ...]:
    """The subtasks of the named pillars (report order); "all" selects everything."""
    if isinstance(pillars, str):
        pillars = [pillars]
    wanted = set(pillars)
    if "all" in wanted:
        return all_subtasks()
    unknown = sorted(wanted - set(PILLARS))
    if unknown:
        raise ValueError(
            f"unknown pillar(s) {', '.join(unknown)}; valid ids: all, {', '.join(PILLARS)}"
        )
    return tuple(sub for sub in all_subtasks() if sub.pillar in wanted)


def builtin_source(sub: Subtask) -> tuple[str, str]:
    """(pillar, subtask) whose bench_data file holds this subtask's built-in rows."""
    if sub.builtin_source:
        pillar, _, subtask = sub.builtin_source.partition("/")
        return pillar, subtask
    return sub.pillar, sub.id


def load_items(sub: Subtask, data_dir: Path | None) -> Iterator[Item]:
    """Items of a subtask: built-in rows when data_dir is None, else the official dataset.

    A subtask that reuses another subtask's built-in rows names it in
    ``Subtask.builtin_source`` ("pillar/subtask"; robustness reuses reliability's items).
    """
    if data_dir is None:
        return sub.items(builtin_rows(*builtin_source(sub)))
    if sub.official is None:
        raise FileNotFoundError(
            f"{sub.key} has no official dataset; run it without a data dir (built-in items)"
        )
    folder = Path(data_dir) / sub.official.dataset
    missing = [folder / f for f in sub.official.files if not (folder / f).is_file()]
    if not folder.is_dir() or missing:
        path = missing[0] if folder.is_dir() else folder
        raise FileNotFoundError(
            f"{sub.key}: official data not found at {path}; run `python -m engine data fetch`"
        )
    return sub.items(sub.official.load(folder))
