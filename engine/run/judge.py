"""The judge stage: each judged response is handed to its judge lane as soon as it is durably
written (an fsync that covers it returned, within about a second: a response the disk refused or
lost is never judged, so a judgment never outlives its response), so generation and judging overlap. Judge lanes are ordinary lanes (a model that is both target and
judge has one lane and one limiter); their records go to judgments/<judge>.jsonl, keyed by
(response key, judge, rubric, rubric version, try), exactly-once and resumable like responses.

A hardened rubric's request fences the judged response with a nonce (engine.core.fence): an HMAC
of the try-0 judge key under the run's secret, `DIR/judge_salt` (32 random bytes, hex, written once
by the first run or shard that judges, never rewritten). So the nonce is per request and unknowable
to the response, and a resumed run (or a retry) sends the same judge request body again. A secret
derived from the run's contents alone would be guessable; one drawn per process would change the
body on every resume.

An unparseable judge output is retried once (try 1, with a different seed and a little
temperature, since the same greedy request would give the same text), unless its rubric says
`retry = False` (an official template: its authors never retried); scoring counts what is still
unparseable and excludes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec

from engine.config import Config, ModelConfig
from engine.core.adapter import ReplaysItems
from engine.core.fence import nonce_for
from engine.core.records import GenParams, Item, JudgmentRecord, Record, judgment_decoder
from engine.core.subtask import Rubric, Subtask
from engine.run.lane import Lane
from engine.run.units import JudgeTask, Unit, estimate_tokens, merge_params, model_params
from engine.spec import judges_for, rubrics_by_source
from engine.store.checkpoint import JsonlWriter, iter_records
from engine.store.keyset import KeySet
from engine.tokens import counter_for

RETRY_PARAMS = {"temperature": 0.7, "seed": 1}
# Judge units held per judge before generation waits: enough to keep every judge worker busy, few
# enough that memory stays flat however far the targets could run ahead (~3 KB a unit).
BACKLOG_PER_WORKER = 4
MIN_BACKLOG = 64
EARLIER_BATCH = 256  # earlier responses read from disk per thread hop when a resumed run feeds them
SALT_FILE = "judge_salt"


def judge_salt(out: Path) -> bytes:
    """The run's nonce secret: read from `out/judge_salt`, or drawn and written there once. Shards
    share the directory, so the file appears by hard link (atomic, never replacing one that
    another process wrote first) and everyone reads the one that won."""
    path = out / SALT_FILE
    if not path.exists():
        tmp = out / f".{SALT_FILE}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return bytes.fromhex(path.read_text().strip())


def judge_key(response_key: str, judge: str, rubric: str, version: str, try_: int) -> str:
    blob = "\x1f".join((response_key, judge, rubric, version, str(try_))).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def judge_params(cfg: Config, judge_cfg: ModelConfig, rubric: Rubric) -> GenParams:
    """The generation settings of a judge request (try 0): the judge model's, the rubric's own
    over them, JSON-schema constrained output where the rubric is constrained, and the
    `[judge] max_tokens` cap. `plan` estimates
    with the same settings the run sends."""
    params = merge_params(model_params(judge_cfg), rubric.params)
    if rubric.constrained:  # off for an official template whose authors read free text
        # OpenAI-style json_schema output needs an object at the root: a rubric whose judge answers
        # with a bare value (the 0-3 endorsement digit) gets it wrapped as {"answer": <value>}, which
        # its text parser still reads (the first digit), with room for the few JSON tokens.
        rschema = rubric.schema
        if rschema.get("type") != "object":
            rschema = {"type": "object", "properties": {"answer": rschema}, "required": ["answer"],
                       "additionalProperties": False}
            params = msgspec.structs.replace(params, max_tokens=max(params.max_tokens or 0, 16))
        schema = {"name": rubric.name.replace("/", "_")[:64], "schema": rschema}
        params = msgspec.structs.replace(params, json_schema=schema)
    cap = cfg.judge.max_tokens
    if cap is not None and (params.max_tokens is None or params.max_tokens > cap):
        params = msgspec.structs.replace(params, max_tokens=cap)
    return params


class JudgeHub:
    def __init__(self, cfg: Config, subtasks: Iterable[Subtask], lanes: dict[str, Lane],
                 done: dict[str, KeySet], salt: bytes, backlog: int | None = None) -> None:
        self.cfg = cfg
        self.salt = salt  # the run's nonce secret (judge_salt)
        self.by_source = rubrics_by_source(subtasks)
        self.rubrics = {r.name: r for pairs in self.by_source.values() for _, r in pairs}
        self.lanes = lanes  # judge name -> lane
        self.done = done  # judge name -> keys already judged
        self.retry_due: dict[str, set[str]] = {}  # judge -> written unparseable try-0 keys, no try 1 yet
        self.outstanding = {name: 0 for name in lanes}
        self._closing = False
        self._closed: set[str] = set()
        self.submitted = 0
        # Backpressure: a judge lane that is running and holds `backlog` units (queued or in
        # flight) clears the gate, and the target lanes' generation waits until every running
        # judge is down to half. A judge that is not running yet (its server starting, waiting for
        # GPUs a target holds) never holds generation back, nor one that has ended.
        self.backlog = {name: backlog or max(MIN_BACKLOG, BACKLOG_PER_WORKER * lane.cfg.concurrency())
                        for name, lane in lanes.items()}
        self.gate = asyncio.Event()
        self.gate.set()
        # The same bound for the earlier responses a resumed run judges (`earlier`, fed by
        # close_when_generated), whether or not the judge runs yet: that feed holds no GPU.
        self.room = asyncio.Event()
        self.room.set()
        self.earlier: Iterator[tuple[Record, Item]] = iter(())
        self._ended: set[str] = set()
        self.peak = 0  # the most judge units held at once (all judges)
        # Responses put to a writer and not yet durably written (about a second's worth at most: the
        # writer fsyncs at least once per fsync_interval).
        self._unwritten: dict[str, tuple[Record, Item]] = {}

    @property
    def hardened(self) -> bool:
        """Whether any rubric fences its judged text with nonces (and so needs the salt)."""
        return any(r.hardened for r in self.rubrics.values())

    def load_retries(self, judgments_dir: Path, suffixes: tuple[str, ...] = ("",)) -> None:
        """On resume: the try-0 judgments on disk that are unparseable and have no try 1 yet (the run
        stopped between the two), so that resubmitting their response sends the retry. A shard
        reads its own file and the merged one (suffixes "" and ".shard-I-of-N")."""
        for judge in self.lanes:
            done = self.done.get(judge, KeySet())
            for j in (j for sfx in suffixes
                      for j in iter_records(judgments_dir / f"{judge}{sfx}.jsonl", judgment_decoder)):
                rubric = self.rubrics.get(j.rubric)
                if (j.try_ != 0 or j.response is None or rubric is None or not rubric.retry
                        or j.rubric_version != rubric.version):
                    continue
                if judge_key(j.response_key, judge, j.rubric, j.rubric_version, 1) in done:
                    continue
                if rubric.read(j.response.text) is None:
                    self.retry_due.setdefault(judge, set()).add(j.key)

    def needs_judging(self, pillar: str, subtask: str) -> bool:
        return f"{pillar}/{subtask}" in self.by_source

    def on_record(self, rec: Record, unit: Unit) -> None:
        """A response was handed to a sink that keeps nothing on disk (tests): judged at once."""
        self.submit_record(rec, unit.item)

    def hold_record(self, rec: Record, unit: Unit) -> None:
        """A response was handed to its writer: held until `on_durable` says it is durably in the
        file (an fsync covering it returned). A response whose write or fsync fails (a full disk,
        an I/O error, power lost) is not judged by this run, so no judgment can outlive it: the next
        run asks it again under the same key, or finds it on disk, and judges what is there."""
        if rec.response is None or unit.item.metadata.get("judge") is False:
            return
        if self.needs_judging(rec.pillar, rec.subtask):
            self._unwritten[rec.key] = (rec, unit.item)

    def on_durable(self, batch: list[msgspec.Struct]) -> None:
        """A responses writer's batch is durably in the file: its judged responses go to their judges."""
        if not self._unwritten:
            return
        for rec in batch:
            got = self._unwritten.pop(rec.key, None) if isinstance(rec, Record) else None
            if got is not None:
                self.submit_record(*got)

    def submit_record(self, rec: Record, item: Item) -> None:
        # Items may opt out of judging (PsyLeak: only free-response answers go to the proxy judge).
        if rec.response is None or item.metadata.get("judge") is False:
            return
        for _, rubric in self.by_source.get(f"{rec.pillar}/{rec.subtask}", ()):
            for judge in judges_for(self.cfg, rubric):
                self._submit(judge, rubric, rec.key, rec.model, rec.sample, item, rec.response.text, 0)

    def _submit(self, judge: str, rubric: Rubric, response_key: str, model: str, sample: int, item: Item,
                text: str, try_: int) -> None:
        key = judge_key(response_key, judge, rubric.name, rubric.version, try_)
        if key in self.done.get(judge, ()):
            if try_ == 0 and key in self.retry_due.get(judge, ()):
                self._submit(judge, rubric, response_key, model, sample, item, text, 1)
            return
        lane = self.lanes[judge]
        if lane.judge_queue is None or judge in self._closed:
            return
        # Keyed on try 0: a retry rebuilt on resume gets the same body as the one sent before.
        nonce = (nonce_for(self.salt, judge_key(response_key, judge, rubric.name, rubric.version, 0), text)
                 if rubric.hardened else None)
        messages = rubric.build(item, text, nonce)
        params = judge_params(self.cfg, lane.cfg, rubric)
        if try_:
            params = msgspec.structs.replace(params, **RETRY_PARAMS)
        jitem = Item(id=item.id, pillar=item.pillar, subtask=item.subtask, messages=messages)
        if isinstance(lane.adapter, ReplaysItems):  # a replay judge answers by (item, sample, rubric)
            body = lane.adapter.body_for(item, sample, rubric.name)
            if body is None:
                return
        else:
            body = lane.adapter.build_body(messages, params)
        unit = Unit(jitem, sample, body, key, estimate_tokens(jitem, params, counter_for(lane.cfg, judge)),
                    JudgeTask(response_key, model, rubric.name, rubric.version, try_, judge),
                    max_out=params.max_tokens or 0)
        lane.stats.judge_queued += 1
        self._queue(judge, unit)

    def _queue(self, judge: str, unit: Unit) -> None:
        self.outstanding[judge] += 1
        self.submitted += 1
        self.peak = max(self.peak, sum(self.outstanding.values()))
        queue = self.lanes[judge].judge_queue
        assert queue is not None
        queue.put_nowait(unit)
        if self.outstanding[judge] >= self.backlog[judge]:
            self.room.clear()
            if self._running(judge):
                self.gate.clear()

    def _running(self, judge: str) -> bool:
        return judge not in self._ended and self.lanes[judge].stats.state == "running"

    def _refresh_gate(self) -> None:
        if not self.gate.is_set() and all(self.outstanding[n] <= self.backlog[n] // 2 or not self._running(n)
                                          for n in self.lanes):
            self.gate.set()
        if not self.room.is_set() and all(self.outstanding[n] <= self.backlog[n] // 2 or n in self._ended
                                          for n in self.lanes):
            self.room.set()

    async def feed_earlier(self) -> None:
        """Submits the earlier responses without a judgment, never more than the backlog at once;
        they are read from disk in batches, off the event loop."""
        earlier, self.earlier = self.earlier, iter(())
        while batch := await asyncio.to_thread(lambda: list(itertools.islice(earlier, EARLIER_BATCH))):
            for rec, item in batch:
                if not self.room.is_set():
                    await self.room.wait()
                self.submit_record(rec, item)

    def owes(self, rec: Record) -> bool:
        """Whether a response still lacks a judgment it is owed: a try 0 not on disk, or a due try 1."""
        for _, rubric in self.by_source.get(f"{rec.pillar}/{rec.subtask}", ()):
            for judge in judges_for(self.cfg, rubric):
                k = judge_key(rec.key, judge, rubric.name, rubric.version, 0)
                if k not in self.done.get(judge, ()) or k in self.retry_due.get(judge, ()):
                    return True
        return False

    def judge_ended(self, judge: str) -> None:
        """A judge lane ended (done, failed, halted): what it still holds will not drain."""
        self._ended.add(judge)
        self._refresh_gate()

    def on_judgment(self, jrec: JudgmentRecord, unit: Unit) -> None:
        if jrec.response is None or jrec.try_ > 0:
            return
        rubric = self.rubrics.get(jrec.rubric)
        if rubric is None or not rubric.retry or rubric.read(jrec.response.text) is not None:
            return
        # Rebuild the judged text from the unit: try 1 reuses the same judge messages.
        lane = self.lanes[jrec.judge]
        key = judge_key(jrec.response_key, jrec.judge, rubric.name, rubric.version, 1)
        if key in self.done.get(jrec.judge, ()) or lane.judge_queue is None:
            return
        # The retry changes only what the adapter sent: reasoning models (o-series, gpt-5) take no
        # temperature, so their body has none and their retry varies the seed alone.
        body = {**unit.body, **{k: v for k, v in RETRY_PARAMS.items() if k == "seed" or k in unit.body}}
        retry = Unit(unit.item, unit.sample, body, key, unit.est_tokens,
                     JudgeTask(jrec.response_key, jrec.model, jrec.rubric, jrec.rubric_version, 1, jrec.judge),
                     max_out=unit.max_out)
        self._queue(jrec.judge, retry)

    def on_judge_done(self, unit: Unit) -> None:
        assert unit.judge is not None
        self.outstanding[unit.judge.judge] -= 1
        self._refresh_gate()
        self._maybe_close()

    def generation_finished(self) -> None:
        self._closing = True
        self._maybe_close()

    def _maybe_close(self) -> None:
        if not self._closing:
            return
        for name, lane in self.lanes.items():
            if name not in self._closed and self.outstanding[name] == 0 and lane.judge_queue is not None:
                self._closed.add(name)
                lane.judge_queue.put_nowait(None)

    def close_all(self) -> None:
        for name, lane in self.lanes.items():
            if name not in self._closed and lane.judge_queue is not None:
                self._closed.add(name)
                lane.judge_queue.put_nowait(None)


async def close_when_generated(hub: JudgeHub, targets: list[Lane]) -> None:
    await hub.feed_earlier()
    for lane in targets:  # all of them: the order of waiting does not matter
        await lane.generation_done.wait()
        if isinstance(lane.io.responses, JsonlWriter):
            await lane.io.responses.sync()  # its last responses reach the judge once they are fsynced
    hub.generation_finished()


