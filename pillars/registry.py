"""The registry of pillars and subtasks, in PROTOCOL.md §6 report order, and item loading.

The pillar packages (pillars/builtin.py) are imported on the first lookup, once: a package that fails
to import is an error, never hidden, and a command that names no subtask (a run of custom items,
validate) does not pay for them. Errors are the engine's: an unknown pillar or subtask is a
ConfigError (`UnknownSubtask` for a subtask key), official data that is not there is DataUnavailable.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path

from engine.core.errors import ConfigError, DataUnavailable
from engine.core.records import Item
from engine.core.subtask import Subtask
from pillars.common.loaders import builtin_rows
from pillars.common.prompts import load_prompts

__all__ = ["PILLARS", "UnknownSubtask", "all_subtasks", "bind_prompts", "builtin_source", "get", "select",
           "load_items"]

# The pillar ids in report order, known without importing the packages (pillars/builtin.py holds the
# same keys; tests/pillars/test_common.py checks they agree).
PILLARS: tuple[str, ...] = ("reliability", "crisis", "safety", "fairness", "privacy", "robustness", "anti_sycophancy",
                            "ethics")


@cache
def _packages() -> dict[str, tuple[Subtask, ...]]:
    # Lazy for start-up time: the eight pillar packages take about 100 ms to import, which a run of
    # custom items, validate and the other commands that name no subtask do not need.
    from pillars import builtin

    return builtin.PACKAGES


class UnknownSubtask(ConfigError):
    """A "pillar/subtask" key this code base does not have (an old run's key, a typo)."""


def all_subtasks() -> tuple[Subtask, ...]:
    """Every registered subtask, pillar by pillar in report order."""
    return tuple(sub for subs in _packages().values() for sub in subs)


def get(key: str) -> Subtask:
    """The subtask with key "pillar/subtask"."""
    subs = all_subtasks()
    for sub in subs:
        if sub.key == key:
            return sub
    close = difflib.get_close_matches(key, [s.key for s in subs], n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    valid = ", ".join(s.key for s in subs)
    raise UnknownSubtask(f"unknown subtask {key!r}{hint}; valid keys: {valid}")


def select(pillars: Sequence[str]) -> tuple[Subtask, ...]:
    """The subtasks of the named pillars (report order); "all" selects everything."""
    if isinstance(pillars, str):
        pillars = [pillars]
    wanted = set(pillars)
    if "all" in wanted:
        return all_subtasks()
    unknown = sorted(wanted - set(PILLARS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], [*PILLARS, "all"], n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown pillar(s) {', '.join(unknown)}{hint}; valid ids: all, {', '.join(PILLARS)}"
        )
    return tuple(sub for sub in all_subtasks() if sub.pillar in wanted)


def builtin_source(sub: Subtask) -> tuple[str, str]:
    """(pillar, subtask) whose bench_data file holds this subtask's built-in rows."""
    if sub.builtin_source:
        pillar, _, subtask = sub.builtin_source.partition("/")
        return pillar, subtask
    return sub.pillar, sub.id


def bind_prompts(sub: Subtask, data_dir: Path | None) -> Subtask:
    """The subtask with the authors' templates when the data dir holds all it needs, else as is
    (its own prompts). Built-in items (no data dir) always use the engine's own wording."""
    if sub.with_prompts is None or not sub.prompt_files:
        return sub
    prompts = load_prompts(data_dir)
    if prompts is None or not prompts.has(sub.prompt_files):
        return sub
    return sub.with_prompts(sub, prompts)


def load_items(sub: Subtask, data_dir: Path | None) -> Iterator[Item]:
    """Items of a subtask: built-in rows when data_dir is None, else the official dataset.

    A subtask that reuses another subtask's built-in rows names it in
    ``Subtask.builtin_source`` ("pillar/subtask"; robustness reuses reliability's items).
    """
    if data_dir is None:
        return sub.items(builtin_rows(*builtin_source(sub)))
    if sub.official is None:
        raise DataUnavailable(
            f"{sub.key} has no official dataset; run it without a data dir (built-in items)"
        )
    folder = Path(data_dir) / sub.official.dataset
    missing = [folder / f for f in sub.official.files if not (folder / f).is_file()]
    if not folder.is_dir() or missing:
        path = missing[0] if folder.is_dir() else folder
        raise DataUnavailable(
            f"{sub.key}: official data not found at {path}; run `python -m engine data fetch`"
        )
    return sub.items(sub.official.load(folder))
