"""Structured concurrency with the failure itself, not its group: a lane or a run reports the
first thing that went wrong (its one-line message), as it did before task groups."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """An asyncio.TaskGroup (no task outlives the block; one failure cancels the rest) that
    re-raises the first failure unwrapped."""
    try:
        async with asyncio.TaskGroup() as tg:
            yield tg
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None
