"""Batch lanes (`batch = true`, `run --batch`): a lane's units go to the provider as batch jobs
instead of one request each (README "Batch lanes").

`BatchAttempts` is the lane's `Attempts`: a worker's `run(unit)` puts the unit into the batch
being gathered and waits for its outcome, so the lane around it (writing records, re-queries, the
judge stage, resume) is the ordinary one. A batch is submitted when it holds `batch_max_requests`
units or `batch_max_bytes` of input, or `batch_wait_s` after its first unit; its life (journal,
submit, poll, read) is `BatchJob` (engine/run/batch_job.py).

Outcomes: a response, or a per-request error that no later batch can cure, is the unit's final
outcome, as from a direct request. A retryable per-request error (a 5xx inside the batch, a request
the batch expired or cancelled) goes to errors/ and the unit joins a later batch, until
`max_attempts` batches have tried it. Results of a re-attached batch whose unit has not asked yet
(a judge unit the judge stage has not queued) are held until it does.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable

from engine.config import ModelConfig
from engine.core.adapter import SubmitsBatches
from engine.core.batch import RETRYABLE_KINDS, BatchResult, BatchStatus
from engine.core.clock import Clock
from engine.core.records import AttemptError, ErrorInfo
from engine.run.attempt import Brakes, Sink
from engine.run.batch_job import BatchJob, BatchSettings, Gathering, LaneFiles, Waiter
from engine.run.stats import LaneStats
from engine.run.units import Outcome, Unit
from engine.store.batch_journal import JournalLine


class BatchAttempts:
    """The `Attempts` of a batch lane (see the module's docstring)."""

    def __init__(self, name: str, cfg: ModelConfig, adapter: SubmitsBatches, errors: Sink, brakes: Brakes,
                 files: LaneFiles, settings: BatchSettings, *, clock: Clock) -> None:
        self.name = name
        self.cfg = cfg
        self.adapter = adapter
        self.errors = errors
        self.brakes = brakes
        self.journal = files.journal
        self.settings = settings
        self.clock = clock
        self.flush = files.flush
        self.done = files.done
        self.spend = files.spend
        # Read when the lane is built: a journal that cannot be read refuses the run before it sends.
        self._journalled = files.journal.load()
        self.stats = LaneStats()
        self.live: dict[str, Waiter] = {}  # every unit waiting for its outcome, by key
        self.open: dict[str, str] = {}  # key -> local id of the submitted batch it is in
        self.held: dict[str, tuple[str, Outcome]] = {}  # outcomes whose unit has not asked yet
        self.held_in: Counter[str] = Counter()  # held outcomes per batch (its `ended` waits for them)
        self.states: dict[str, str] = {}  # local id -> the provider's state (or ours: submitting, collected)
        self._counts: dict[str, tuple[int, int]] = {}  # local id -> requests done / in it
        self._gathering: Gathering | None = None
        self._more = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ending: set[asyncio.Task[None]] = set()
        self._started = False
        brakes.on_wake.append(self._stopped)

    def placement(self) -> dict[str, object]:
        return {}

    # -- units in ---------------------------------------------------------------------------------

    async def run(self, unit: Unit) -> Outcome | None:
        if self.brakes.stopping:
            return None
        self._start()
        held = self.held.pop(unit.key, None)
        if held is not None:
            self._claimed(held[0])
            return held[1]
        fut: asyncio.Future[Outcome | None] = asyncio.get_running_loop().create_future()
        w = Waiter(unit, fut)
        if self.spend is not None:
            reserved = self.spend.reserve(unit)
            if reserved is None:  # the budget cannot cover it: the run stops (what is done is kept)
                return None
            w.reserved = reserved
        self.live[unit.key] = w
        if unit.key in self.open:  # it waits for the re-attached batch that holds it
            w.tries = 1
        else:
            self.enqueue(w)
        return await fut

    def enqueue(self, w: Waiter) -> None:
        """Adds a unit to the batch being gathered; a full batch is submitted at once."""
        line = self.adapter.batch_line(w.unit.key, w.unit.body)
        s = self.settings
        g = self._gathering
        if g is not None and g.bytes + len(line) > s.max_bytes:
            self._submit_gathered()
            g = None
        if g is None:
            g = self._gathering = Gathering(s.folder)
            self._more.set()
        g.add(w, line)
        if len(g.waiters) >= s.max_requests:
            self._submit_gathered()

    def _submit_gathered(self) -> None:
        g, self._gathering = self._gathering, None
        if g is None or not g.waiters:
            return
        self.spawn(BatchJob(self, g.local_id, [w.unit.key for w in g.waiters]).submit(g))

    def spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._surface)

    def _surface(self, task: asyncio.Task[None]) -> None:
        """A batch job that raised (a full disk under the journal) stops the lane, saying why;
        its units stay unanswered and go again next run."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self.stats.state = "failed"
        self.stats.message = f"lane {self.name}: batch job failed: {exc}"
        self.brakes.halt()

    def _start(self) -> None:
        """On the first unit: the gathering timer, and every journalled batch re-attached."""
        if self._started:
            return
        self._started = True
        self.spawn(self._timer())
        for ob in self._journalled:
            for k in ob.keys:
                self.open[k] = ob.local_id
            self.spawn(BatchJob(self, ob.local_id, ob.keys).reattach(ob))

    async def _timer(self) -> None:
        """Submits the batch being gathered `batch_wait_s` after its first unit (a full one goes
        at once)."""
        while not self.brakes.stopping:
            await self._more.wait()
            self._more.clear()
            if await self.clock.wait(self.brakes.wake, self.settings.wait_s):
                return
            self._submit_gathered()

    # -- outcomes out -----------------------------------------------------------------------------

    def settle(self, local_id: str, res: BatchResult) -> None:
        """One request's result (from its batch's results, or made up for one that has none)."""
        key = res.custom_id
        if self.open.get(key) == local_id:
            del self.open[key]
        w = self.live.get(key)
        tries = w.tries if w is not None else 1
        if res.response is not None:
            self._count_ok(res)
            self._deliver(local_id, key, Outcome(attempts=tries, response=res.response))
            return
        err = res.error or ErrorInfo(kind="malformed", message="result with neither response nor error")
        self.stats.errors[err.kind] += 1
        if err.kind not in RETRYABLE_KINDS:
            self.stats.fatal += 1
            self._log(key, w, tries, err, final=True)
            self._deliver(local_id, key, Outcome(attempts=tries, error=err))
            return
        if w is None:  # its unit has not asked: it joins a batch when it does
            return
        if tries >= self.cfg.max_attempts:
            self.exhaust(key, err)
            return
        self._log(key, w, tries, err, final=False)
        self.stats.retries += 1
        self.enqueue(w)

    def _count_ok(self, res: BatchResult) -> None:
        st, resp = self.stats, res.response
        assert resp is not None
        st.ok += 1
        u = resp.usage
        st.prompt_tokens += u.prompt_tokens
        st.completion_tokens += u.completion_tokens
        st.reasoning_tokens += u.reasoning_tokens or 0
        st.cached_tokens += u.cached_tokens or 0

    def _deliver(self, local_id: str, key: str, out: Outcome) -> None:
        w = self.live.pop(key, None)
        if w is not None:
            self._settle_spend(w, out)
            if not w.fut.done():
                w.fut.set_result(out)
        elif not any(key in d for d in self.done) and key not in self.held:
            self.held[key] = (local_id, out)
            self.held_in[local_id] += 1

    def _claimed(self, local_id: str) -> None:
        self.held_in[local_id] -= 1
        if self.held_in[local_id] <= 0:
            del self.held_in[local_id]
            if self.states.get(local_id) == "collected":
                self.end(local_id, "completed")

    def end(self, local_id: str, state: str) -> None:
        """Journals the batch's end once its outcomes are on disk (a task of its own, which closing
        the lane waits for rather than cancels)."""
        task = asyncio.ensure_future(self._end(local_id, state))
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)
        task.add_done_callback(self._surface)

    async def _end(self, local_id: str, state: str) -> None:
        """The batch's `ended` line, once every outcome it gave is on disk: the workers woken by its
        results write them in the loop turns that follow, then the writers are flushed."""
        for _ in range(3):
            await asyncio.sleep(0)
        await self.flush()
        if self.held_in.get(local_id):
            self.states[local_id] = "collected"  # ended when the last held outcome is claimed
            return
        self.journal.append(JournalLine(event="ended", local_id=local_id, state=state, at=time.time()))
        (self.settings.folder / f"{local_id}.jsonl").unlink(missing_ok=True)  # its input is not needed again
        self.states.pop(local_id, None)
        self._counts.pop(local_id, None)
        self.stats.batches_ended += 1
        self._tally()

    def progress(self, local_id: str, status: BatchStatus | str) -> None:
        """A batch's state for status lines and bars (stats.batches, stats.batch_requests)."""
        if isinstance(status, BatchStatus):
            self.states[local_id] = status.state
            self._counts[local_id] = (status.done, status.total)
        else:
            self.states[local_id] = status
        self._tally()

    def _tally(self) -> None:
        self.stats.batches = Counter(self.states.values())
        self.stats.batch_requests = (sum(d for d, _ in self._counts.values()), sum(t for _, t in self._counts.values()))

    def _log(self, key: str, w: Waiter | None, attempt: int, err: ErrorInfo, *, final: bool) -> None:
        u = w.unit if w is not None else None
        self.errors.put(AttemptError(
            key=key, model=self.name, pillar=u.item.pillar if u else "", subtask=u.item.subtask if u else "",
            item_id=u.item.id if u else "", sample=u.sample if u else 0, attempt=attempt, error=err, final=final,
            at=round(time.time(), 3)))

    def _settle_spend(self, w: Waiter, out: Outcome | None) -> None:
        """A batch bills the requests it answered; one that failed inside it costs nothing."""
        if self.spend is not None and w.reserved:
            if out is not None and out.response is not None:
                self.spend.settle(w.reserved, out.response)
            else:
                self.spend.release(w.reserved)
            w.reserved = 0.0

    def exhaust(self, key: str, err: ErrorInfo) -> None:
        """No outcome this run (tries ran out): a final line in errors/; the next run sends it again."""
        w = self.live.pop(key, None)
        if w is not None:
            self._settle_spend(w, None)
        self._log(key, w, w.tries if w is not None else 1, err, final=True)
        self.stats.exhausted += 1
        if w is not None and not w.fut.done():
            w.fut.set_result(None)

    def log_all(self, keys: list[str], err: ErrorInfo, *, final: bool) -> None:
        for k in keys:
            w = self.live.get(k)
            self._log(k, w, w.tries if w is not None else 1, err, final=final)

    # -- stopping ---------------------------------------------------------------------------------

    def _stopped(self) -> None:
        """A stop (signal, budget, halt): every waiting unit ends without an outcome this run;
        submitted batches stay in the journal and are re-attached next run."""
        for w in self.live.values():
            if self.spend is not None and w.reserved:  # submitted: it may still be billed
                if w.tries:
                    self.spend.settle(w.reserved, None)
                else:
                    self.spend.release(w.reserved)
                w.reserved = 0.0
            if not w.fut.done():
                w.fut.set_result(None)
        self.live.clear()
        g, self._gathering = self._gathering, None
        if g is not None:
            g.discard()

    async def aclose(self) -> None:
        """Jobs still polling are cancelled (the journal keeps them; the next run re-attaches);
        batches whose outcomes are written get their `ended` line first."""
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)
        self.journal.close()


__all__ = ["BatchAttempts", "BatchSettings"]
