"""A run whose disk fails. The first failed write, flush or fsync of any of its files (responses,
errors, judgments) stops dispatch on every lane at once, the same stop a signal makes; requests in
flight get `run.grace_period_s` to finish into memory; the writers then append what still fits,
and the run ends with one StorageError line (exit 4). run.json says so when it can still be
written; otherwise the previous one stays as it was."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from engine.core.clock import Clock
from engine.core.errors import StorageError
from engine.run.options import Log
from engine.store.checkpoint import JsonlWriter


class StorageFailure:
    """Heard by every writer of the run; the first failure stops the run."""

    def __init__(self, stop: Callable[[], None], grace: float, log: Log) -> None:
        self.stop = stop
        self.grace = grace
        self.log = log
        self.error: StorageError | None = None
        self.fired = asyncio.Event()

    def __call__(self, error: StorageError) -> None:
        if self.error is not None:
            return
        self.error = error
        self.stop()
        self.log(f"{error.failure}: no new requests; waiting up to {self.grace:.0f} s for those in flight")
        self.fired.set()

    async def enforce_grace(self, clock: Clock, cancel: Callable[[], None]) -> None:
        """After a failure, cancels what is still in flight when the grace period ends."""
        await self.fired.wait()
        await clock.sleep(self.grace)
        cancel()

    def final(self, writers: Iterable[JsonlWriter]) -> StorageError:
        """The line the run ends with, once the writers are closed."""
        assert self.error is not None
        unsaved = sum(w.unsaved for w in writers if w.path.parent.name != "errors")
        kept = f"{unsaved} finished results could not be saved and are asked again next run" if unsaved else \
            "every finished result was saved"
        return self.error.noted(f"the run stopped sending at once ({kept})")
