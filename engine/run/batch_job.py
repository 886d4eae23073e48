"""One batch's life in a batch lane (engine/run/batching.py): gathered, journalled, submitted,
polled, read; or, after a crash, re-attached from the journal (engine/store/batch_journal.py).

Every step that the provider could bill is preceded by the journal line that lets the next run
find it: the intent before the upload, the batch id as soon as it is returned. A create call whose
answer was lost (timeout, reset, a crash) is never simply repeated: the provider is asked for the
batch by its local id first.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Container
from pathlib import Path
from typing import IO, Protocol

import msgspec

from engine.config import ModelConfig
from engine.core.adapter import AdapterError, SubmitsBatches
from engine.core.batch import BatchResult, BatchStatus
from engine.core.clock import Clock
from engine.core.records import ErrorInfo
from engine.core.retry import backoff_delay
from engine.core.secrets import redact
from engine.run.attempt import Brakes, Spend
from engine.run.stats import LaneStats
from engine.run.units import Outcome, Unit
from engine.store.batch_journal import BatchJournal, Event, JournalLine, OpenBatch

Flush = Callable[[], Awaitable[None]]
# Units a batch lane holds at once, each waiting in a lane worker of its own (~4 KiB each, see
# benchmarks/RESULTS.md "bench_batch.py"): a batch is never larger, whatever the provider allows
# (Anthropic 100,000; Gemini's inline limit is 20 MB, not a count).
MAX_IN_FLIGHT = 50_000
STOPPED = BatchStatus(id="", state="stopped")  # _find's "the lane stopped before it knew"
# How far before its intent line a batch found at the provider may have been created (clock skew
# between this machine and the provider's).
SKEW_S = 300.0


class LaneFiles(msgspec.Struct, frozen=True):
    """What a batch lane keeps besides its records: the journal, and how to make the records it has
    put durable (the lane's writers' sync) before the journal says a batch ended; the keys already
    written (results for them are dropped); the run's --budget at the lane's price, if any."""

    journal: BatchJournal
    flush: Flush
    done: tuple[Container[str], ...]  # the lane's responses and judgments already written
    spend: Spend | None = None


class BatchSettings(msgspec.Struct, frozen=True):
    max_requests: int
    max_bytes: int
    wait_s: float
    poll_s: float
    poll_max_s: float
    window: str
    folder: Path  # where batch input files are written (batches/<model>/)

    @classmethod
    def of(cls, cfg: ModelConfig, adapter: SubmitsBatches, folder: Path) -> BatchSettings:
        lim = adapter.batch_limits
        most = min(lim.max_requests, MAX_IN_FLIGHT)
        return cls(max_requests=min(cfg.batch_max_requests or most, most),
                   max_bytes=min(cfg.batch_max_bytes or lim.max_bytes, lim.max_bytes), wait_s=cfg.batch_wait_s,
                   poll_s=cfg.batch_poll_s, poll_max_s=max(cfg.batch_poll_s, cfg.batch_poll_max_s),
                   window=cfg.batch_window, folder=folder)


class Waiter:
    """A unit waiting for its outcome; `tries` counts the batches it was submitted in."""

    __slots__ = ("fut", "reserved", "tries", "unit")

    def __init__(self, unit: Unit, fut: asyncio.Future[Outcome | None]) -> None:
        self.unit = unit
        self.fut = fut
        self.tries = 0
        self.reserved = 0.0  # --budget: its worst case at the batch price, until its outcome settles it


class Gathering:
    """The batch being gathered: its input lines go straight to a file (never held), hashed as
    they are written."""

    def __init__(self, folder: Path) -> None:
        self.local_id = uuid.uuid4().hex[:20]
        self.path = folder / f"{self.local_id}.jsonl"
        folder.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = open(self.path, "wb")  # closed by seal()
        self._hash = hashlib.blake2b(digest_size=16)
        self.waiters: list[Waiter] = []
        self.bytes = 0

    def add(self, w: Waiter, line: bytes) -> None:
        self._file.write(line)
        self._hash.update(line)
        self.waiters.append(w)
        self.bytes += len(line)

    def seal(self) -> str:
        """Closes the file (on disk before the intent line names it); returns its hash."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._hash.hexdigest()

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class Host(Protocol):
    """What a job needs from its lane's BatchAttempts."""

    name: str
    cfg: ModelConfig
    adapter: SubmitsBatches
    brakes: Brakes
    journal: BatchJournal
    settings: BatchSettings
    clock: Clock
    stats: LaneStats
    live: dict[str, Waiter]
    open: dict[str, str]

    def progress(self, local_id: str, status: BatchStatus | str) -> None: ...

    def enqueue(self, w: Waiter) -> None: ...

    def settle(self, local_id: str, res: BatchResult) -> None: ...

    def log_all(self, keys: list[str], err: ErrorInfo, *, final: bool) -> None: ...

    def exhaust(self, key: str, err: ErrorInfo) -> None: ...

    def end(self, local_id: str, state: str) -> None: ...


def _info(exc: AdapterError) -> ErrorInfo:
    return ErrorInfo(kind=exc.kind, status=exc.status, message=redact(exc.message))


def _advice(err: ErrorInfo) -> str:
    """What to do about a batch call the provider refused (auth, no batch API, anything else 4xx)."""
    return ("check the API key" if err.kind == "auth" else
            "this server has no batch API: remove `batch = true` (or --batch)" if err.status in (404, 405) else
            "check the model's batch settings (README \"Batch lanes\") or run without `batch = true`") + " and rerun"


def _halt(host: Host, why: str) -> None:
    host.stats.state = "stopped"
    host.stats.message = f"lane {host.name} stopped: {why}"
    host.brakes.halt()


def _reason(err: ErrorInfo) -> str:
    """The provider's words once: a server whose body is only its status ("404: Not Found") is
    not said twice after the adapter's "HTTP 404: "."""
    msg = err.message
    if err.status is not None:
        dup = f"HTTP {err.status}: {err.status}: "
        if msg.startswith(dup):
            msg = f"HTTP {err.status} " + msg[len(dup):]
    return msg


class BatchJob:
    def __init__(self, host: Host, local_id: str, keys: list[str]) -> None:
        self.host = host
        self.local_id = local_id
        self.keys = keys
        self.rng = random.Random()

    def _journal(self, event: Event, *, keys: list[str] | None = None, hash: str = "", file_id: str = "",
                 batch_id: str = "") -> None:
        self.host.journal.append(JournalLine(event=event, local_id=self.local_id, at=time.time(), keys=keys or [],
                                             hash=hash, file_id=file_id, batch_id=batch_id))

    def _state(self, state: BatchStatus | str) -> None:
        self.host.progress(self.local_id, state)

    async def _backoff(self, attempt: int, exc: AdapterError | None = None) -> bool:
        """Waits before the next try; False when the lane stopped meanwhile."""
        cfg = self.host.cfg
        delay = backoff_delay(attempt, cfg.backoff_base_s, cfg.backoff_max_s,
                              exc.retry_after if exc is not None else None, self.rng)
        return not await self.host.clock.wait(self.host.brakes.wake, delay)

    # -- a new batch --------------------------------------------------------------------------------

    async def submit(self, g: Gathering) -> None:
        host = self.host
        # A big input's fsync goes to a thread (it may take seconds); a small one's is quicker than the hop.
        digest = await asyncio.to_thread(g.seal) if g.bytes > (1 << 20) else g.seal()
        self._journal("intent", hash=digest, keys=self.keys)
        for w in g.waiters:
            w.tries += 1
            host.open[w.unit.key] = self.local_id
        self._state("submitting")
        status = await self._create(g.path, time.time())
        if status is None:
            return
        self._journal("created", batch_id=status.id)
        await self.follow(status)

    async def _create(self, path: Path, since: float) -> BatchStatus | None:
        """The create call, retried with backoff; after a failed try the provider is asked whether
        the batch exists after all before it is sent again. None: rejected, given up or stopped."""
        host = self.host
        attempt = 0
        while not host.brakes.stopping:
            attempt += 1
            try:
                return await host.adapter.submit_batch(path, self.local_id, host.settings.window,
                                                       lambda fid: self._journal("file", file_id=fid))
            except AdapterError as exc:
                err = _info(exc)
            host.stats.errors[f"batch_{err.kind}"] += 1
            host.stats.batch_failures += 1
            if err.kind not in ("rate_limited", "transient", "timeout", "malformed"):
                # Refused as a whole (the requests themselves were not judged): the lane stops and
                # leaves its units to the next run. A bad request here (a 400 on the upload or the
                # create call: a batch_window or limit the provider does not take) is the config's
                # problem, not each request's; a per-request 400 inside a batch is that request's outcome.
                self._stop(err, f"batch submission refused ({_reason(err)}); {_advice(err)}")
                return None
            if attempt >= host.cfg.max_attempts:
                await self._give_up(err, state="not submitted")
                return None
            host.log_all(self.keys, err, final=False)
            if not await self._backoff(attempt):
                return None
            found = await self._find(since)
            if found is not None:
                return None if found is STOPPED else found
        return None

    async def _find(self, since: float) -> BatchStatus | None:
        """The provider's batch for this local id (None: it has none; STOPPED: the lane stopped
        before the provider could say, so nothing may be submitted); retried while it cannot say."""
        host = self.host
        attempt = auths = 0
        while not host.brakes.stopping:
            attempt += 1
            try:
                return await host.adapter.find_batch(self.local_id, frozenset(self.keys), since - SKEW_S)
            except AdapterError as exc:
                host.stats.errors[f"batch_{exc.kind}"] += 1
                host.stats.batch_failures += 1
                if exc.kind == "auth":
                    auths += 1
                if exc.kind == "fatal" or auths >= host.cfg.auth_failures_to_stop:
                    # Asked again it would say the same, forever: the journal keeps the batch for a
                    # run with the cause fixed.
                    err = _info(exc)
                    _halt(host, f"looking up batch {self.local_id} refused ({_reason(err)}); {_advice(err)}")
                    break
                if not await self._backoff(min(attempt, 10), exc):
                    break
        return STOPPED

    def _stop(self, err: ErrorInfo, why: str) -> None:
        """Stops the lane on a refusal that every batch would meet: its units get no outcome this
        run (a line each in errors/, not final) and go again next run, once the cause is fixed."""
        host = self.host
        host.log_all(self.keys, err, final=False)
        for k in self.keys:
            if host.open.get(k) == self.local_id:
                del host.open[k]
        host.end(self.local_id, f"rejected ({err.kind})")
        _halt(host, why)

    async def _give_up(self, err: ErrorInfo, *, state: str) -> None:
        """Ends the batch without results, out of tries: no outcome this run for its units (they
        go again next run)."""
        host = self.host
        for k in self.keys:
            if host.open.get(k) == self.local_id:
                del host.open[k]
            host.exhaust(k, err)
        host.end(self.local_id, state)

    # -- after a crash ------------------------------------------------------------------------------

    async def reattach(self, ob: OpenBatch) -> None:
        """A journalled batch without `ended`: polled and read if it has a provider id; else looked
        up at the provider, and its units freed for a new batch only when the provider has none."""
        host = self.host
        self._state("re-attaching")
        if ob.batch_id:
            await self.follow(BatchStatus(id=ob.batch_id, state="re-attached"), wait_first=False)
            return
        found = await self._find(ob.at)
        if found is STOPPED:
            return
        if found is not None:
            self._journal("created", batch_id=found.id)
            await self.follow(found, wait_first=False)
            return
        for k in self.keys:  # never submitted: its units join a new batch
            if host.open.get(k) == self.local_id:
                del host.open[k]
                if (w := host.live.get(k)) is not None:
                    host.enqueue(w)
        host.end(self.local_id, "not submitted")

    # -- polling and reading ------------------------------------------------------------------------

    async def follow(self, status: BatchStatus, *, wait_first: bool = True) -> None:
        host, s = self.host, self.host.settings
        delay = s.poll_s if wait_first else 0.0
        polls = 0
        while not status.ended:
            self._state(status)
            if await host.clock.wait(host.brakes.wake, delay):
                return  # stopped: the journal keeps it open; the next run re-attaches it
            delay = min(max(delay * 2.0, s.poll_s), s.poll_max_s)
            try:
                status = await host.adapter.poll_batch(status.id)
                polls = 0
            except AdapterError as exc:
                host.stats.errors[f"poll_{exc.kind}"] += 1
                host.stats.batch_failures += 1
                polls += 1
                if exc.kind == "auth" and polls >= host.cfg.auth_failures_to_stop:
                    _halt(host, f"polling refused ({_reason(_info(exc))}); check the API key and rerun")
                    return
        self._state(status)
        if status.failed:
            await self._failed(status)
            return
        if await self._read(status):
            host.end(self.local_id, status.state)

    async def _failed(self, status: BatchStatus) -> None:
        """The batch failed as a whole: its units go again in a later batch, after a backoff."""
        host = self.host
        err = ErrorInfo(kind="transient", message=redact(f"batch {status.id} {status.state}: {status.message}"))
        host.stats.errors["batch_failed"] += 1
        host.stats.batch_failures += 1
        tries = max((w.tries for k in self.keys if (w := host.live.get(k)) is not None), default=1)
        if not await self._backoff(tries):
            return
        for k in self.keys:
            host.settle(self.local_id, BatchResult(custom_id=k, error=err))
        host.end(self.local_id, status.state)

    async def _read(self, status: BatchStatus) -> bool:
        """Streams the results into outcomes; a read cut short is read again from the start (what
        was taken already is skipped). False: stopped before the whole results were read."""
        host = self.host
        want = set(self.keys)
        seen: set[str] = set()
        attempt = 0
        while True:
            try:
                async for res in host.adapter.batch_results(status):
                    k = res.custom_id
                    if k in want and k not in seen:
                        seen.add(k)
                        host.settle(self.local_id, res)
                break
            except AdapterError as exc:
                host.stats.errors[f"results_{exc.kind}"] += 1
                host.stats.batch_failures += 1
                attempt += 1
                if not await self._backoff(min(attempt, 10), exc):
                    return False
        missing = ErrorInfo(kind="transient", message=f"no result for the request in batch {status.id} "
                                                      f"({status.state})")
        for k in self.keys:
            if k not in seen:
                host.settle(self.local_id, BatchResult(custom_id=k, error=missing))
        return True
