"""Built-in items (bench_data/) of every registered subtask, checked generically.

For each subtask (one naming ``Subtask.builtin_source`` is checked on that file): the file has
at least 20 rows, every id starts with "b-", the rows load through ``registry.load_items(sub,
None)`` into Items of that subtask, the subtask's label set (``extra["labels"]``: Item.reference
values) and coverage groups (``extra["cover"]``: {metadata key: values}) are all present, and no
two items are near-duplicates.

Near-duplicate rule: for each base item (one item per ``metadata["base"]``), take the text of all
its messages, cut the prefix and suffix common to every item of the subtask (the prompt template),
drop the words found in at least 30% of the subtask's items (templates that differ by group, such
as ConfAIde's tier-1 and tier-2 instructions, plus function words), and compare the remaining
lowercase word sets (CJK text: character bigrams) pairwise with Jaccard similarity
|A∩B| / |A∪B|; more than 0.8 fails. Jaccard (not containment) so that a short item is not flagged
just for reusing common words of a longer one.
"""

from __future__ import annotations

import itertools
import os
import re

import pytest

from engine.core.records import Item
from pillars import registry
from pillars.common.loaders import builtin_rows

MIN_ITEMS = 20
MAX_JACCARD = 0.8
TEMPLATE_SHARE = 0.3

# Derived subtasks (safety/antitoxic) score another subtask's responses and have no items.
SUBTASKS = [s for s in registry.all_subtasks() if s.kind != "derived"]


def test_derived_subtasks_have_no_items_of_their_own():
    derived = [s for s in registry.all_subtasks() if s.kind == "derived"]
    assert derived, "safety/antitoxic should be registered as derived"
    for sub in derived:
        assert sub.source and registry.get(sub.source).kind != "derived"
        assert list(registry.load_items(sub, None)) == []


def _own(sub):
    assert sub.kind != "derived"


def _items(sub) -> list[Item]:
    return list(registry.load_items(sub, None))


@pytest.mark.parametrize("sub", SUBTASKS, ids=lambda s: s.key)
def test_rows_count_and_ids(sub):
    _own(sub)
    rows = list(builtin_rows(*registry.builtin_source(sub)))
    assert len(rows) >= MIN_ITEMS, f"{sub.key}: {len(rows)} built-in rows"
    ids = [str(r.get("id")) for r in rows]
    assert all(i.startswith("b-") for i in ids), [i for i in ids if not i.startswith("b-")]
    assert len(set(ids)) == len(ids), "duplicate built-in ids"


@pytest.mark.parametrize("sub", SUBTASKS, ids=lambda s: s.key)
def test_rows_load_into_items(sub):
    _own(sub)
    items = _items(sub)
    assert len(items) >= MIN_ITEMS
    assert len({i.id for i in items}) == len(items)
    for it in items:
        assert isinstance(it, Item)
        assert (it.pillar, it.subtask) == (sub.pillar, sub.id)
        assert it.id.startswith("b-") and str(it.metadata.get("base", "")).startswith("b-")
        assert it.messages and all(m.content.strip() for m in it.messages)


@pytest.mark.parametrize("sub", SUBTASKS, ids=lambda s: s.key)
def test_label_set_covered(sub):
    _own(sub)
    items = _items(sub)
    labels = sub.extra.get("labels")
    if labels:
        present = {i.reference for i in items}
        assert set(labels) <= present, f"missing labels: {set(labels) - present}"
    for key, values in (sub.extra.get("cover") or {}).items():
        present = {str(i.metadata.get(key)) for i in items}
        assert {str(v) for v in values} <= present, f"missing {key}: {set(values) - present}"


_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def _words(text: str) -> set[str]:
    # Chinese has no spaces: a CJK run counts as its character bigrams instead of one "word".
    out: set[str] = set()
    for run in re.findall(r"\w+", text.lower()):
        if _CJK.search(run) and len(run) > 1:
            out.update(run[i:i + 2] for i in range(len(run) - 1))
        else:
            out.add(run)
    return out


def _content_words(sets: list[set[str]]) -> list[set[str]]:
    counts: dict[str, int] = {}
    for ws in sets:
        for w in ws:
            counts[w] = counts.get(w, 0) + 1
    frequent = {w for w, c in counts.items() if c >= max(3, TEMPLATE_SHARE * len(sets))}
    return [ws - frequent for ws in sets]


def _strip_common(texts: list[str]) -> list[str]:
    prefix = os.path.commonprefix(texts)
    suffix = os.path.commonprefix([t[::-1] for t in texts])[::-1]
    out = []
    for t in texts:
        body = t[len(prefix):]
        out.append(body[: len(body) - len(suffix)] if suffix and len(body) >= len(suffix) else body)
    return out


@pytest.mark.parametrize("sub", SUBTASKS, ids=lambda s: s.key)
def test_no_near_duplicates(sub):
    _own(sub)
    first: dict[str, Item] = {}
    for it in _items(sub):
        first.setdefault(str(it.metadata.get("base", it.id)), it)
    keys = list(first)
    texts = _strip_common(["\n".join(m.content for m in first[k].messages) for k in keys])
    words = _content_words([_words(t) for t in texts])
    bad = []
    for (i, a), (j, b) in itertools.combinations(enumerate(words), 2):
        if a | b and len(a & b) / len(a | b) > MAX_JACCARD:
            bad.append((keys[i], keys[j], round(len(a & b) / len(a | b), 2)))
    assert not bad, f"{sub.key}: near-duplicate built-in items {bad}"


def _max_jaccard(texts: list[str]) -> float:
    words = _content_words([_words(t) for t in _strip_common(texts)])
    return max(len(a & b) / len(a | b) for a, b in itertools.combinations(words, 2) if a | b)


def test_similarity_rule_catches_near_duplicates():
    base = [f"Template says: item {i} about topic{i} with detail{i} and extra{i}." for i in range(10)]
    assert _max_jaccard(base) < MAX_JACCARD
    dup = base + ["Template says: item 3 about topic3, with detail3 and extra3!"]
    assert _max_jaccard(dup) > MAX_JACCARD
    assert _words("我很难过 today") == {"我很", "很难", "难过", "today"}
