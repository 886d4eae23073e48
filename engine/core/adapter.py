"""The contract between a lane and a provider adapter, and the optional capabilities the engine
checks with `isinstance` against these declared protocols (never by probing attributes by name).

An adapter speaks one wire protocol. It builds a request body (pure, deterministic: the body is
hashed into the record key), sends it, and either returns a `Response` or raises `AdapterError`
with a classified kind. It never sleeps, retries or counts: the lane owns all of that.

Optional capabilities:
  HasLimitSignal   the provider's rate-limit headers of the latest reply (`last_signal`)
  ReplaysItems     answers come from a recording, found by item rather than by prompt (`body_for`),
                   with end-of-run notes about what was (not) matched (`notes`)
  StreamsReplies   can send a request as a stream (`send_streamed`): the same Response as `send`
                   plus ttft_s and token timing, also in two halves (`stream_reply`: the exchange,
                   then its reader), and open its connections ahead (`open_connections`);
                   declared with `caps.streaming` in the registry
  LocalServer      what opening a local model server yields: the lane watches it and stops when it dies
  SubmitsBatches   has the provider's batch API (submit many requests as one job, collect later at a
                   lower price): builds a batch's input lines, submits, finds, polls and reads results;
                   declared with `caps.batch_api` in the registry (engine/run/batching.py drives it)

A local adapter's build also returns a `ServerOpener`: what starts its model for a lane, with its
capabilities declared as attributes (`takes_gpus`, `info`) rather than found by probing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable

from engine.core.batch import BatchLimits, BatchResult, BatchStatus
from engine.core.errors import AdapterError
from engine.core.records import GenParams, Item, Message, Response

__all__ = ["Adapter", "AdapterError", "HasLimitSignal", "LimitSignalLike", "LocalServer", "ReadReply", "ReplaysItems",
           "ServerOpener", "StreamsReplies", "SubmitsBatches"]


ReadReply = Callable[[list[float] | None], Response]  # a streamed exchange's reader (StreamsReplies.stream_reply)


class Adapter(Protocol):
    """What a lane needs from a provider adapter (one instance per lane)."""

    def build_body(self, messages: tuple[Message, ...], params: GenParams) -> dict[str, object]:
        """The request body exactly as it will be sent (minus auth and stream fields)."""
        ...

    async def send(self, body: dict[str, object], timeout: float) -> Response:
        """One attempt. Returns a Response (a refusal is a Response with finish_reason
        "content_filter") or raises AdapterError."""
        ...

    async def aclose(self) -> None: ...


class LimitSignalLike(Protocol):
    """How long the provider's rate-limit headers say to wait before one more request."""

    def request_wait_s(self) -> float: ...

    def token_wait_s(self, tokens: int) -> float: ...


@runtime_checkable
class HasLimitSignal(Protocol):
    last_signal: LimitSignalLike | None


@runtime_checkable
class ReplaysItems(Protocol):
    def body_for(self, item: Item, sample: int, rubric: str = "") -> dict[str, object] | None:
        """The recorded request for (item, sample[, judge rubric]), or None when none was recorded."""
        ...

    def notes(self, complete: bool) -> list[str]:
        """Lines for the end-of-run summary (items without a recording, recordings matching nothing)."""
        ...


@runtime_checkable
class StreamsReplies(Protocol):
    async def send_streamed(self, body: dict[str, object], timeout: float,
                            marks: list[float] | None = None, sent: list[float] | None = None,
                            not_before: asyncio.Future[None] | None = None) -> Response:
        """One attempt, streamed: text, finish reason and usage as `send` would return them, plus
        `ttft_s` and `timing`. The stream fields are added here, never to `body` (the key's bytes).
        `marks` (when given) gets the perf_counter time of each text piece (inter-token latency);
        `sent` the perf_counter time at which the request's bytes went to the socket (the bench's
        send lag), where the transport can tell (none appended otherwise). `not_before` (when
        given): no byte leaves before it is done; the request may be prepared meanwhile (the bench
        starts each request ahead of its due moment and releases it then), and latency and TTFT
        count from the send."""
        ...

    async def stream_reply(self, body: dict[str, object], timeout: float, sent: list[float] | None = None,
                           not_before: asyncio.Future[None] | None = None) -> ReadReply:
        """`send_streamed` in two halves: this exchange (returns once the stream has ended, its
        pieces only stamped on arrival) and the reader it returns, which parses them (called with
        `marks`; raises what `send_streamed` would for a malformed or cut-short stream). `bench`
        reads its replies after the schedule, so that no loop turn within it parses a stream."""
        ...

    async def open_connections(self, n: int, timeout: float) -> int:
        """Opens up to n keep-alive connections to the server and leaves them in the pool, so that
        requests sent later skip the handshake (`bench`, before its schedule). Best effort: returns
        how many opened; never raises for a server that refuses."""
        ...


@runtime_checkable
class SubmitsBatches(Protocol):
    """The provider's batch API. Every call raises AdapterError (classified like `send`'s) on
    failure; none retries or sleeps. `custom_id` is the record key."""

    batch_limits: BatchLimits

    def batch_line(self, custom_id: str, body: dict[str, object]) -> bytes:
        """One request of a batch's input as the provider takes it, one JSON line with its newline
        (OpenAI: the input file's line; Anthropic and Gemini: an element of the request array)."""
        ...

    async def submit_batch(self, path: Path, local_id: str, window: str,
                           on_file: Callable[[str], None]) -> BatchStatus:
        """Submits the lines in `path` as one batch, streamed from the file. `local_id` goes along
        where the provider keeps something of ours (OpenAI metadata, Gemini display name), so that
        `find_batch` finds the batch after a crash; `on_file` gets an uploaded input file's id."""
        ...

    async def find_batch(self, local_id: str, keys: frozenset[str], since: float) -> BatchStatus | None:
        """The batch submitted as `local_id` (holding `keys`, created after `since`, a Unix time),
        or None when the provider has none: what resume asks before it submits again."""
        ...

    async def poll_batch(self, batch_id: str) -> BatchStatus: ...

    def batch_results(self, status: BatchStatus) -> AsyncIterator[BatchResult]:
        """The results of an ended batch, read as a stream (never held whole)."""
        ...


@runtime_checkable
class LocalServer(Protocol):
    log_path: Path
    stopping: bool

    async def wait_exit(self) -> int: ...


class ServerOpener(Protocol):
    """Starts a local adapter's model for one lane: `async with opener(adapter, gpus) as server`
    runs it (a `LocalServer` when it is a process the lane should watch) and stops it on exit.

    takes_gpus: the model runs on the GPUs it is given (CUDA_VISIBLE_DEVICES); when False, GPU
        placement only decides when it starts and `gpus` is None.
    info: what was started (argv, versions, settings), filled while it runs, for run.json
        `servers.<model>`; empty when there is nothing to record.
    """

    takes_gpus: bool
    info: dict[str, object]

    def __call__(self, adapter: Adapter, gpus: Sequence[str] | None = None) -> AbstractAsyncContextManager[object]:
        ...
