"""run.json's lane statistics over a resumed run: each invocation's own in its history entry, and
`lanes` merged over all of them (counters and tokens summed, wall time summed, latency percentiles
over the summed histogram, first start to last end); the report shows the merged view."""

from __future__ import annotations

from pathlib import Path

from engine.core.rundoc import LaneSummary, UnsetType
from engine.run.stats import LaneStats, merge_invocations, percentile
from engine.store.rundoc_io import read_run
from tests.conftest import ThreadServer, fake_model, run_cli, write_config, write_items


def _summary(latencies: list[float], start: float, done: int, completion: int) -> LaneSummary:
    s = LaneStats(planned=10, done=done, sent=done, ok=done, completion_tokens=completion, started=start,
                  ended=start + 10.0, state="complete")
    for x in latencies:
        s.latency(x)
    return s.summary()


def test_merge_keeps_every_invocations_latencies() -> None:
    fast = _summary([0.1] * 90, 1000.0, 90, 900)
    slow = _summary([5.0] * 10, 2000.0, 10, 100)
    merged = merge_invocations(merge_invocations(None, fast), slow)
    assert merged.done == 100 and merged.tokens.completion == 1000
    assert merged.invocations == 2 and merged.started_at == 1000.0 and merged.ended_at == 2010.0
    assert merged.wall_s == 20.0 and merged.requests_per_s == 5.0
    # p50 is the fast invocation's, p95/p99 the slow one's: neither invocation alone says that.
    assert merged.latency_s.p50 is not None and abs(merged.latency_s.p50 - 0.1) < 0.01
    assert merged.latency_s.p99 is not None and abs(merged.latency_s.p99 - 5.0) < 0.2
    assert not isinstance(merged.latency_hist, UnsetType) and sum(merged.latency_hist.values()) == 100
    assert percentile(merged.latency_hist, 0.95) == merged.latency_s.p95


def test_old_lane_without_histogram_merges() -> None:
    old = LaneSummary(state="complete", done=5, sent=5, wall_s=2.0)  # a run.json from before merging
    merged = merge_invocations(old, _summary([0.5] * 3, 50.0, 3, 30))
    assert merged.done == 8 and merged.invocations == 2 and merged.wall_s == 12.0
    assert merged.latency_s.p50 is not None


def test_lane_stats_merged_after_two_resumes(tmp_path: Path, thread_server: ThreadServer) -> None:
    items = write_items(tmp_path / "items.jsonl", 10)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(thread_server.url)})
    for limit in ("4", "7", "10"):  # a first run, then two resumes that each add three items
        res = run_cli("run", cfg, "--items", items, "--output", out, "--limit", limit, "--no-progress")
        assert res.rc == 0, res.stderr
    doc = read_run(out)
    per_run = [h.lanes["fake"] for h in doc.history if not isinstance(h.lanes, UnsetType)]
    assert [lane.done for lane in per_run] == [4, 3, 3]
    lane = doc.lane_map["fake"]
    assert lane.done == 10 and lane.sent == sum(r.sent for r in per_run) and lane.invocations == 3
    assert lane.tokens.prompt == sum(r.tokens.prompt for r in per_run) > 0
    assert lane.tokens.completion == sum(r.tokens.completion for r in per_run) > 0
    assert lane.started_at == per_run[0].started_at and lane.ended_at == per_run[-1].ended_at
    assert not isinstance(lane.latency_hist, UnsetType) and sum(lane.latency_hist.values()) == lane.sent
    assert lane.latency_s.p50 is not None
    res = run_cli("report", out)
    assert res.rc == 0
    report = (out / "report.md").read_text()
    assert "over every invocation of this run" in report
