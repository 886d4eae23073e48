"""A batch lane in-process on virtual time, against a scripted in-memory batch API: the waits it
chooses (gathering, polling with doubling up to the cap) are checked exactly, with no real sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import msgspec

from engine.config import parse_config
from engine.core.batch import BatchLimits, BatchResult, BatchStatus
from engine.core.clock import VirtualClock
from engine.core.config import ModelConfig
from engine.core.records import AttemptError, GenParams, Item, JudgmentRecord, Message, Record, Response, Usage
from engine.items import ItemFactory, WorkItem
from engine.run.attempt import Brakes, RunStop
from engine.run.batch_job import LaneFiles
from engine.run.batching import BatchAttempts, BatchSettings
from engine.run.lane import Lane, LaneIO
from engine.store.batch_journal import BatchJournal
from engine.store.keyset import KeySet


class ListSink:
    def __init__(self) -> None:
        self.records: list[Record | JudgmentRecord | AttemptError] = []

    def put(self, record: Record | JudgmentRecord | AttemptError) -> None:
        self.records.append(record)


class ScriptedBatches:
    """A batch API in memory: a batch ends after `polls_to_end` polls; answers echo the prompt."""

    batch_limits = BatchLimits(max_requests=100, max_bytes=1 << 20)

    def __init__(self, polls_to_end: int) -> None:
        self.polls_to_end = polls_to_end
        self.batches: dict[str, list[tuple[str, str]]] = {}
        self.polls: dict[str, int] = {}
        self.calls: list[str] = []

    def build_body(self, messages: tuple[Message, ...], params: GenParams) -> dict[str, object]:
        return {"prompt": messages[-1].content}

    async def send(self, body: dict[str, object], timeout: float) -> Response:
        raise AssertionError("a batch lane never sends one request")

    async def aclose(self) -> None:
        return None

    def batch_line(self, custom_id: str, body: dict[str, object]) -> bytes:
        return f"{custom_id}\t{body['prompt']}\n".encode()

    async def submit_batch(self, path: Path, local_id: str, window: str,
                           on_file: Callable[[str], None]) -> BatchStatus:
        self.calls.append("submit")
        bid = f"b{len(self.batches)}"
        lines = path.read_text().splitlines()  # noqa: ASYNC240  # a test's few lines
        self.batches[bid] = [(k, p) for k, p in (line.split("\t", 1) for line in lines)]
        self.polls[bid] = 0
        return BatchStatus(id=bid, state="in_progress", total=len(self.batches[bid]))

    async def find_batch(self, local_id: str, keys: frozenset[str], since: float) -> BatchStatus | None:
        return None

    async def poll_batch(self, batch_id: str) -> BatchStatus:
        self.calls.append("poll")
        self.polls[batch_id] += 1
        ended = self.polls[batch_id] >= self.polls_to_end
        return BatchStatus(id=batch_id, state="ended" if ended else "in_progress", ended=ended,
                           results=(batch_id,) if ended else ())

    async def batch_results(self, status: BatchStatus) -> AsyncIterator[BatchResult]:
        for key, prompt in self.batches[status.id]:
            yield BatchResult(custom_id=key, response=Response(text=f"re: {prompt}", finish_reason="stop",
                                                               usage=Usage(prompt_tokens=3, completion_tokens=2)))


def items(n: int) -> ItemFactory:
    def factory() -> Iterator[WorkItem]:
        for i in range(n):
            yield WorkItem(Item(id=f"q{i}", pillar="custom", subtask="custom",
                                messages=(Message(role="user", content=f"question {i}"),)), None)
    return factory


def model(**kw: object) -> ModelConfig:
    body = {"adapter": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "batch": True, **kw}
    return parse_config({"models": {"m": body}}, "test").models["m"]


async def _noop() -> None:
    return None


def test_gathers_then_polls_with_doubling_up_to_the_cap(tmp_path: Path) -> None:
    async def main() -> None:
        clock = VirtualClock()
        cfg = model(batch_wait_s=30, batch_poll_s=10, batch_poll_max_s=60, batch_max_requests=50)
        api = ScriptedBatches(polls_to_end=6)
        sink, errors = ListSink(), ListSink()
        files = LaneFiles(BatchJournal(tmp_path / "batches" / "m.jsonl"), _noop, (KeySet(),))
        attempts = BatchAttempts("m", cfg, api, errors, Brakes(RunStop()), files,
                                 BatchSettings.of(cfg, api, tmp_path / "batches" / "m"), clock=clock)
        lane = Lane("m", msgspec.structs.replace(cfg, max_concurrency=50), api, items(7), LaneIO(sink, errors),
                    attempts)
        lane.stats.planned = 7
        await clock.run(lane.run())
        assert lane.stats.state == "complete", lane.stats.message
        recs = [r for r in sink.records if isinstance(r, Record)]
        assert sorted(r.item_id for r in recs) == [f"q{i}" for i in range(7)]
        assert all(r.response is not None and r.response.text.startswith("re: question") for r in recs)
        assert api.calls == ["submit"] + ["poll"] * 6
        # 30 s gathering (7 units < 50), then polls 10, 20, 40, 60, 60, 60 s apart (doubling, capped).
        assert [s for s in clock.sleeps if s] == [30, 10, 20, 40, 60, 60, 60]
        journal = (tmp_path / "batches" / "m.jsonl").read_text().splitlines()
        assert [line.split('"event":"')[1].split('"')[0] for line in journal] == ["intent", "created", "ended"]

    asyncio.run(main())
