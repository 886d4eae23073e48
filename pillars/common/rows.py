"""Reading fields of normalized rows (``engine.core.subtask.Row``, a Mapping[str, object]).

Rows come from JSON, CSV and JSONL files, so a field's type is known only once it is checked.
These narrow a field to what the pillar expects, or raise ValueError naming the field, which the
engine reports as one line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["as_float", "as_list", "as_mapping", "str_list"]


def as_list(value: object, what: str) -> Sequence[object]:
    """A JSON array (list or tuple) as it is; anything else is an error."""
    if isinstance(value, list | tuple):
        return value
    raise ValueError(f"{what}: expected a list, got {type(value).__name__}")


def as_mapping(value: object, what: str) -> Mapping[str, object]:
    """A JSON object as it is; anything else is an error."""
    if isinstance(value, Mapping):
        return value
    raise ValueError(f"{what}: expected an object, got {type(value).__name__}")


def str_list(value: object, what: str) -> list[str]:
    """A list of values as strings."""
    return [str(v) for v in as_list(value, what)]


def as_float(value: object, what: str) -> float:
    """A number (or a numeric string) as a float."""
    if isinstance(value, int | float | str):
        return float(value)
    raise ValueError(f"{what}: expected a number, got {type(value).__name__}")
