"""Memory stays flat however many items stream through: the engine walks items lazily, keeps at
most a bounded queue in flight, and holds only 64-bit keys of finished work."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.testing.fakeserver import FakeServerProcess
from tests.conftest import count_lines, fake_model, verify_clean, write_config

# RSS is flat from the first thousand records on (2026-12: 45.9 MiB at 1k and still at 30k, or at
# 100k; 0.00-0.02 MiB of growth from 5k to 20k at load 11-14), so growth is measured from N_SMALL
# to N_BIG and bounded per item streamed between them: a record, a key or a response held per item
# (~230 bytes: what a 20 MiB bound from 10k to 100k caught) fails the test over 15k items as it did
# over 90k, in a quarter of the CPU.
# benchmarks/bench_core.py (d) measures the peak over 1M items.
N_SMALL = 5_000
N_BIG = 20_000
BYTES_PER_ITEM = 230
# Finishing the run (run.json, verify, scores read the records in fixed chunks: engine/store/jsonl.py)
# adds a fixed 2.5-4 MiB after the last record, whatever N_BIG is; bounded apart from the streaming.
FINISH_MIB = 20


def _rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def _write_many(path: Path, n: int) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(f'{{"id":"m{i}","prompt":"memory probe item {i}: please answer briefly"}}\n')
    return path


class _LineCounter:
    """Counts the lines of a growing file reading only what was appended since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def count(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        self.offset += len(data)
        self.lines += data.count(b"\n")
        return self.lines


@pytest.mark.slow(20)  # among the long tests that start first (tests/conftest.py)
def test_rss_flat_while_items_stream(tmp_path: Path, engine_procs) -> None:
    with FakeServerProcess({"log": False}) as srv:
        items = _write_many(tmp_path / "items.jsonl", N_BIG)
        cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(srv, max_concurrency=32)})
        out = tmp_path / "out"
        path = out / "responses" / "fake.jsonl"
        t0 = time.monotonic()
        p = engine_procs("run", cfg, "--items", items, "--output", out)
        counter = _LineCounter(path)
        rss_small: int | None = None
        t_small = 0.0
        samples: list[tuple[int, int]] = []  # (lines, rss KiB) after the N_SMALL mark
        while p.alive():
            rss = _rss_kib(p.pid)
            lines = counter.count()
            if rss is not None:
                if rss_small is None and lines >= N_SMALL:
                    rss_small, t_small = rss, time.monotonic()
                elif rss_small is not None:
                    samples.append((lines, rss))
            # A liveness guard, not a speed target: the run shares the machine with parallel tests.
            assert time.monotonic() - t0 < 400, f"too slow: {lines} lines after 400 s"
            time.sleep(0.05)
        res = p.wait(timeout=30)
        elapsed = time.monotonic() - t0
        assert res.rc == 0, res.stderr
        assert count_lines(path) == N_BIG
        assert rss_small is not None, "the run ended before the first sample"
        streaming = [r for n, r in samples if n < N_BIG]
        assert [n for n, _ in samples if 0.9 * N_BIG <= n < N_BIG], "no samples near the end of the streaming"
        growth_mib = (max(streaming) - rss_small) / 1024
        bound_mib = BYTES_PER_ITEM * (N_BIG - N_SMALL) / 2**20
        assert growth_mib <= bound_mib, (f"RSS grew {growth_mib:.1f} MiB from {N_SMALL} to {N_BIG} records "
                                         f"(bound {bound_mib:.1f} MiB: {BYTES_PER_ITEM} bytes per item)")
        finish_mib = (max(r for _, r in samples) - rss_small) / 1024
        assert finish_mib <= FINISH_MIB, f"RSS grew {finish_mib:.1f} MiB from {N_SMALL} records to the run's end"
        rate = (N_BIG - N_SMALL) / max(time.monotonic() - t_small, 1e-9)
        print(f"\n{N_BIG} items in {elapsed:.1f} s ({rate:.0f} items/s after {N_SMALL}); RSS at {N_SMALL} "
              f"{rss_small / 1024:.1f} MiB, growth while streaming {growth_mib:.2f} MiB, to the end {finish_mib:.1f} MiB")
        assert srv.stats()["ok"] == N_BIG
    verify_clean(out)
