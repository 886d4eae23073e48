"""SIGINT/SIGTERM during a run. The first signal stops dispatching and gives in-flight requests
`run.grace_period_s` to finish; what finished is written, the rest is retried next run. A second
signal exits at once; the files stay consistent because every write is a whole batch of lines."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from adapters.servers.managed import kill_all
from engine.core.clock import Clock
from engine.run.options import Log

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupt:
    """First signal: stop dispatching and start the grace timer. Second: leave now."""

    def __init__(self, stop: Callable[[], None], grace: float, log: Log) -> None:
        self.stop = stop  # the run-wide stop: no new requests, lanes halted
        self.grace = grace
        self.log = log
        self.signum: int | None = None
        self.fired = asyncio.Event()

    def __call__(self, signum: int) -> None:
        code = 128 + signum
        if self.signum is not None:
            self.log(f"second signal: exiting now (exit {code}); records written so far are kept")
            kill_all()
            os._exit(code)
        self.signum = signum
        self.stop()
        self.log(f"{signal.Signals(signum).name}: no new requests; waiting up to {self.grace:.0f} s for "
                 "those in flight (send again to exit at once)")
        self.fired.set()

    async def enforce_grace(self, clock: Clock, cancel: Callable[[], None]) -> None:
        """After the first signal, cancels what is still in flight when the grace period ends."""
        await self.fired.wait()
        await clock.sleep(self.grace)
        cancel()


@contextmanager
def handled(interrupt: Interrupt) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for sig in SIGNALS:
        loop.add_signal_handler(sig, interrupt, sig)
    try:
        yield
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
