"""engine/items.plan_counts: unit counts and duplicate ids, with the id hashes packed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.core.errors import EngineError
from engine.core.records import Item, Message
from engine.items import ItemFactory, WorkItem, plan_counts


def _factory(ids: list[tuple[str, str]]) -> ItemFactory:
    def factory() -> Iterator[WorkItem]:
        for sub, i in ids:
            yield WorkItem(Item(id=i, pillar="p", subtask=sub, messages=(Message(role="user", content="x"),)), None)
    return factory


def test_counts_and_same_id_in_two_subtasks() -> None:
    ids = [("a", str(i)) for i in range(5000)] + [("b", str(i)) for i in range(10)]
    assert plan_counts(_factory(ids), 2) == {"p/a": 10000, "p/b": 20}


@pytest.mark.parametrize("where", [0, 2500, 4999])
def test_duplicate_id_named(where: int) -> None:
    ids = [("a", str(i)) for i in range(5000)] + [("a", str(where))]
    with pytest.raises(EngineError, match=f"item id '{where}' appears more than once in p/a"):
        plan_counts(_factory(ids), 1)
