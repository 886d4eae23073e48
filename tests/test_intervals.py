"""The 95% intervals (engine/core/stats.py, engine/intervals.py): each method covers the true value
about 95% of the time in a seeded simulation (400 draws; coverage in [0.92, 0.98], about 2.7 Monte
Carlo standard errors around 0.95), the bootstrap is reproducible under its seed, a unit drawn
twice counts twice, and overlapping intervals mark models as tied."""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
import pytest

from engine.core.stats import bootstrap_ci, fisher_z_ci, normal_mean_ci, overlap, paired_bootstrap_ci, wilson
from engine.core.subtask import ItemScore, Metric
from engine.intervals import Resampler, tied, unit_of, with_interval
from pillars.privacy.awareness import aggregate
from tests.conftest import run_cli

OLD_RUN = Path(__file__).resolve().parent / "fixtures" / "old_runs" / "plain"

SIMS = 400
LOW, HIGH = 0.92, 0.98


def coverage(draw: Callable[[random.Random], tuple[float, tuple[float, float] | None]], seed: int = 7) -> float:
    rng = random.Random(seed)
    hits = 0
    for _ in range(SIMS):
        truth, ci = draw(rng)
        assert ci is not None
        hits += ci[0] <= truth <= ci[1]
    return hits / SIMS


def test_wilson_covers_a_rate() -> None:
    p, n = 0.8, 60

    def draw(rng: random.Random) -> tuple[float, tuple[float, float] | None]:
        k = sum(rng.random() < p for _ in range(n))
        return p, wilson(k, n)

    assert LOW <= coverage(draw) <= HIGH


def test_normal_interval_covers_a_mean() -> None:
    def draw(rng: random.Random) -> tuple[float, tuple[float, float] | None]:
        return 3.0, normal_mean_ci([rng.gauss(3.0, 1.5) for _ in range(50)])

    assert LOW <= coverage(draw) <= HIGH


def correlated(rng: random.Random, rho: float, n: int) -> tuple[list[float], list[float]]:
    xs = [rng.gauss(0, 1) for _ in range(n)]
    ys = [rho * x + math.sqrt(1 - rho * rho) * rng.gauss(0, 1) for x in xs]
    return xs, ys


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    return sxy / math.sqrt(sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys))


def test_fisher_z_covers_a_pearson_r() -> None:
    rho, n = 0.6, 40

    def draw(rng: random.Random) -> tuple[float, tuple[float, float] | None]:
        xs, ys = correlated(rng, rho, n)
        return rho, fisher_z_ci(pearson(xs, ys), n)

    assert LOW <= coverage(draw) <= HIGH


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def test_bootstrap_covers_a_mean() -> None:
    # 300 resamples (the engine uses 1000) keep the 400 simulated intervals to a few seconds; 80 items,
    # since a percentile interval is a little narrow on a few dozen (0.93 at 30 items in 1500 draws).
    def draw(rng: random.Random) -> tuple[float, tuple[float, float] | None]:
        vals = [rng.gauss(0.4, 0.2) for _ in range(80)]
        return 0.4, bootstrap_ci(mean, vals, seed=rng.randrange(1 << 30), key="sim", resamples=300)[0]

    assert LOW <= coverage(draw) <= HIGH


def test_paired_bootstrap_covers_a_difference() -> None:
    """Two models on the same items: a shared per-item difficulty plus each model's noise."""
    def draw(rng: random.Random) -> tuple[float, tuple[float, float] | None]:
        items = []
        for _ in range(80):
            d = rng.gauss(0, 1)
            items.append((d + rng.gauss(0, 0.5), d + 0.2 + rng.gauss(0, 0.5)))
        ci, _ = paired_bootstrap_ci(lambda s: mean([a for a, _ in s]), lambda s: mean([b for _, b in s]), items,
                                    seed=rng.randrange(1 << 30), key="sim", resamples=300)
        return 0.2, ci

    assert LOW <= coverage(draw) <= HIGH


def test_paired_interval_is_narrower_than_unpaired() -> None:
    rng = random.Random(3)
    items = []
    for _ in range(60):
        d = rng.gauss(0, 1)
        items.append((d + rng.gauss(0, 0.3), d + 0.1 + rng.gauss(0, 0.3)))
    ci, _ = paired_bootstrap_ci(lambda s: mean([a for a, _ in s]), lambda s: mean([b for _, b in s]), items,
                                seed=1, key="k")
    a = normal_mean_ci([x for x, _ in items])
    assert ci is not None and a is not None
    assert ci[1] - ci[0] < (a[1] - a[0]) / 2


def test_bootstrap_is_reproducible_under_its_seed() -> None:
    vals = [float(i % 7) for i in range(30)]
    one = bootstrap_ci(mean, vals, seed=5, key="x/m")
    assert one == bootstrap_ci(mean, vals, seed=5, key="x/m")
    assert one != bootstrap_ci(mean, vals, seed=6, key="x/m")
    assert one != bootstrap_ci(mean, vals, seed=5, key="x/other")


def test_bootstrap_says_why_when_undefined() -> None:
    assert bootstrap_ci(mean, [1.0], seed=0, key="k") == (None, "fewer than 2 base items: no interval")
    ci, why = bootstrap_ci(lambda s: None, [1.0, 2.0], seed=0, key="k", resamples=100)
    assert ci is None and why == "undefined in 100 of 100 bootstrap resamples"


def per_item_mean(scores: Sequence[ItemScore]) -> Metric:
    """Averages each item's samples first, as privacy/awareness and robustness do."""
    per: dict[str, list[float]] = {}
    for s in scores:
        per.setdefault(s.item_id, []).append(float(s.value or 0.0))
    means = [sum(v) / len(v) for v in per.values()]
    return Metric(value=sum(means) / len(means) if means else None, n=len(scores), n_scored=len(scores),
                  n_unparseable=0, n_failed=0)


def test_engine_bootstrap_counts_a_unit_drawn_twice_twice() -> None:
    """An aggregate keyed by item id would count a twice-drawn item once; the copies get distinct ids,
    so the bootstrap interval matches the analytic one of the same per-item means."""
    rng = random.Random(11)
    scores = [ItemScore(item_id=f"i{i}", sample=s, value=v) for i in range(80)
              for s, v in enumerate([rng.gauss(i % 5, 1.0)] * 2)]
    m = with_interval(per_item_mean(scores), per_item_mean, scores, seed=0, key="t")
    assert m.ci is not None and m.ci_reason is None
    ref = normal_mean_ci([s.value or 0.0 for s in scores if s.sample == 0])
    assert ref is not None
    assert (m.ci[1] - m.ci[0]) == pytest.approx(ref[1] - ref[0], rel=0.15)
    assert m == with_interval(per_item_mean(scores), per_item_mean, scores, seed=0, key="t")


def test_variants_and_clean_items_resample_together() -> None:
    assert unit_of("3#7~char@0.1") == unit_of("3#7") == "3#7"
    assert unit_of("12~gender=f") == "12"
    rs = Resampler([ItemScore(item_id="a~x"), ItemScore(item_id="a"), ItemScore(item_id="b~x")])
    assert rs.units == ["a", "b"]
    assert [s.item_id for s in rs.expand(["a", "a"])] == ["a~x", "a", "1|a~x", "1|a"]


def test_an_interval_the_aggregate_gave_is_kept_and_null_needs_a_reason() -> None:
    given = Metric(value=0.5, n=2, n_scored=2, n_unparseable=0, n_failed=0, ci=(0.1, 0.9))
    assert with_interval(given, per_item_mean, [], seed=0, key="k") is given
    one = [ItemScore(item_id="only", value=1.0)]
    m = with_interval(per_item_mean(one), per_item_mean, one, seed=0, key="k")
    assert m.ci is None and m.ci_reason == "fewer than 2 base items: no interval"


def test_tied_means_overlapping_intervals() -> None:
    assert overlap((0.1, 0.5), (0.5, 0.9)) and not overlap((0.1, 0.4), (0.5, 0.9))
    got = tied({"a": (0.70, 0.80), "b": (0.75, 0.85), "c": (0.50, 0.60), "d": None})
    assert got == {"a": ["b"], "b": ["a"], "c": []}


def test_every_scored_value_has_an_interval_or_says_why(tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(OLD_RUN, out)
    res = run_cli("score", out, "--seed", "3")
    assert res.rc == 0, res.stderr
    doc = orjson.loads((out / "scores.json").read_bytes())
    assert doc["intervals"]["bootstrap_seed"] == 3
    for key, sub in doc["subtasks"].items():
        for model, m in sub["models"].items():
            if m["value"] is not None:
                assert (m["ci"] is None) == ("ci_reason" in m), (key, model, m)
        assert set(sub["tied"]) == {mo for mo, m in sub["models"].items() if m["ci"] is not None}
    first = (out / "scores.json").read_bytes()
    assert run_cli("score", out, "--seed", "3").rc == 0
    assert (out / "scores.json").read_bytes() == first


def _rated(tier: str, n: int, rng: random.Random) -> list[ItemScore]:
    out = []
    for i in range(n):
        ref = rng.uniform(1, 5)
        out.append(ItemScore(item_id=f"{tier}-{i}", value=float(round(min(5, max(1, ref + rng.gauss(0, 1))))),
                             reference=ref, group={"tier": tier}))
    return out


def test_privacy_awareness_fisher_z_for_one_tier_bootstrap_for_the_mean_of_three() -> None:
    rng = random.Random(4)
    one = _rated("1", 30, rng)
    m = aggregate(one)
    tier = m.breakdown["tiers"]["1"]
    assert m.ci == fisher_z_ci(m.value or 0.0, 30) == tier["ci"]
    three = one + _rated("2a", 40, rng) + _rated("2b", 40, rng)
    m3 = aggregate(three)
    assert m3.ci is None and m3.value is not None  # no closed form for a mean of tiers' r
    got = with_interval(m3, aggregate, three, seed=0, key="privacy/awareness/x")
    assert got.ci is not None and got.ci[0] < m3.value < got.ci[1] and -1 <= got.ci[0] and got.ci[1] <= 1
