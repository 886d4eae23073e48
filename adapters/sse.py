"""Streamed replies (server-sent events) shared by the HTTP adapters: one POST whose 200 body is read
as SSE events, each stamped with its arrival time, and the token timing summary of a reply.

Each protocol module turns its provider's events back into the document its non-streamed parser
reads, so that a streamed reply's text, finish reason and usage are the non-streamed ones by
construction; only `ttft_s` and `timing` are added.

Failures: a non-200 reply comes back whole (status, body, headers) for the adapter's own status
mapping; a connection that drops or a stream that ends before its provider's final event is a
`transient` error (retried by the lane; nothing of the partial reply is kept); a timeout covers
the whole stream.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
import orjson

from adapters.http import SendStamp, _timeout, stamps_sends
from engine.core.adapter import AdapterError, ReadReply
from engine.core.records import Response, TokenTiming
from engine.core.secrets import redact

if TYPE_CHECKING:
    import aiohttp

__all__ = ["Event", "Streamed", "cut_short", "post_sse", "split_events", "stream_reader", "token_timing"]


class Event(NamedTuple):
    """One SSE event: its `event:` name ("" when none), its data lines joined, when it arrived."""

    name: str
    data: bytes
    at: float


class Streamed(NamedTuple):
    """One streamed exchange as it came: the body's pieces only stamped on arrival; `events()` cuts
    them into events (after the stream, or later: `bench` reads its replies after the schedule)."""

    status: int
    raw: bytes  # the body of a non-200 reply; empty for a stream
    headers: Mapping[str, str]
    pieces: list[bytes]
    stamps: list[float]  # when each piece arrived (perf_counter)
    start: float  # perf_counter when the request was sent
    end: float  # perf_counter when the stream ended

    def events(self) -> list[Event]:
        return split_events(self.pieces, self.stamps, self.end)


def _event(block: bytes, at: float) -> Event | None:
    if block.startswith(b"data: ") and b"\n" not in block:  # most events: one data line, no name
        return Event("", block[6:], at)
    name = ""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            data.append(line[6:] if line[5:6] == b" " else line[5:])
        elif line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
        # comments (":" ...), id: and retry: lines carry nothing a reply needs
    return Event(name, b"\n".join(data), at) if data else None


def split_events(pieces: list[bytes], stamps: list[float], end: float) -> list[Event]:
    """The events of an SSE body that arrived as `pieces` at `stamps`, each stamped when the piece
    that completed it (its blank line) arrived; a last event without its blank line at `end`."""
    data = b"".join(pieces)
    if b"\r" in data:  # CRLF framing is allowed: the careful way, piece by piece
        return _split_crlf(pieces, stamps, end)
    events: list[Event] = []
    ends = list(itertools.accumulate(map(len, pieces)))
    *blocks, rest = data.split(b"\n\n")
    pos = k = 0
    for block in blocks:
        pos += len(block) + 2  # just past this event's blank line
        while ends[k] < pos:
            k += 1
        if (ev := _event(block, stamps[k])) is not None:
            events.append(ev)
    if rest.strip() and (ev := _event(rest.strip(b"\n"), end)) is not None:  # a last event without its blank line
        events.append(ev)
    return events


def _split_crlf(pieces: list[bytes], stamps: list[float], end: float) -> list[Event]:
    events: list[Event] = []
    buf = b""
    for piece, at in zip(pieces, stamps, strict=True):
        buf += piece
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")  # a lone \r at the end of a piece waits for the next piece
        if b"\n\n" not in buf:
            continue
        *blocks, buf = buf.split(b"\n\n")
        for block in blocks:
            if (ev := _event(block, at)) is not None:
                events.append(ev)
    if buf.strip() and (ev := _event(buf.strip(b"\n"), end)) is not None:
        events.append(ev)
    return events


async def _read_pieces(resp: aiohttp.ClientResponse) -> tuple[list[bytes], list[float]]:
    """An SSE body in whatever pieces the socket delivers (not line by line: a third of the client's
    CPU per event), each only stamped on arrival: the events are cut out after the stream ends
    (`Streamed.events`), so that the loop turn each piece costs stays short (in `bench`, other
    requests fall due between them)."""
    pieces: list[bytes] = []
    stamps: list[float] = []
    clock = time.perf_counter
    async for piece in resp.content.iter_any():
        pieces.append(piece)
        stamps.append(clock())
    return pieces, stamps


async def post_sse(session: aiohttp.ClientSession, url: str, data: bytes, headers: Mapping[str, str],
                   timeout: float, secrets: tuple[str, ...], sent: list[float] | None = None,
                   not_before: asyncio.Future[None] | None = None) -> Streamed:
    """One streamed POST. Transport failures are classified as in `adapters.http.post_json`, except
    that a body cut short is `transient` (a dropped stream is worth another attempt).

    `sent` (when given) gets the perf_counter time at which the request's bytes were handed to the
    socket, from a session made with `new_session(..., stamp_sends=True)`; a session without
    that stamps nothing (the caller decides what stands in). A request sent twice (a dead pooled
    connection) is stamped twice: the last stamp is the send that was answered.

    `not_before` (when given) holds the request's bytes until it is done: a stamping session builds
    the request and takes its connection at once and writes the bytes in the step after the
    release (`bench` prepares each request ahead of its due moment); any other session waits
    before building. The reply's latency and TTFT count from the send, not from the call."""
    import aiohttp  # loaded by load_transport already: a dict lookup

    stamps = sent if sent is not None else []
    traced = stamps_sends(session)
    if not_before is not None and not traced:
        await not_before
    ctx = SendStamp(stamps, not_before, [])
    start = time.perf_counter()
    try:
        async with await _post_fresh_if_stale(session, url, data, headers, timeout, ctx, traced) as resp:
            if not_before is not None and stamps:
                start = stamps[-1]
            if resp.status != 200:
                raw = await resp.read()
                return Streamed(resp.status, raw, resp.headers, [], [], start, time.perf_counter())
            pieces, arrived = await _read_pieces(resp)
            return Streamed(200, b"", resp.headers, pieces, arrived, start, time.perf_counter())
    except TimeoutError:
        raise AdapterError("timeout", f"no complete stream within {timeout:.1f} s") from None
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror if exc.os_error is not None and exc.os_error.strerror else str(exc)
        raise AdapterError("transient", redact(f"cannot connect to {url}: {reason}", secrets),
                           unreachable=True) from None
    except aiohttp.ClientError as exc:  # ClientPayloadError included: the stream was cut
        raise AdapterError("transient", redact(f"stream cut: {type(exc).__name__}: {exc}", secrets)) from None


STALE_ATTEMPTS = 4  # sends of one POST while pooled connections keep turning out dead (see below)


async def _post_fresh_if_stale(session: aiohttp.ClientSession, url: str, data: bytes, headers: Mapping[str, str],
                               timeout: float, ctx: SendStamp, traced: bool) -> aiohttp.ClientResponse:
    """The POST, sent again at once when a pooled connection turns out dead before any reply.

    llama.cpp's server closes the connection after a streamed reply while its headers say
    `Keep-Alive`; aiohttp then reuses the dead socket (ServerDisconnectedError, or ClientOSError
    "Can not write request body"), which lost 1 request in 4 of `bench` against it. curl sees the
    same ("Connection 0 seems to be dead") and reconnects; so do we, with no reply read. With one
    resend, `bench` still lost 1 of 30 requests ("Can not write request body") at 0.5 req/s with the
    server overloaded (`vllm bench serve`, which never resends, loses 2-3 of 30 sent one after the
    other): the resend can take another dead pooled connection. Each dead connection that fails
    leaves the pool, and a loop turn between sends lets the loop read the other closes, so a few
    sends reach a live or new connection.

    Only a send that took a pooled connection is resent (a stamping session's trace says which): on
    a connection of its own the server may have read the request and started it before it dropped
    it, and the lane's retry (backoff, attempt count) decides; resent at once, such a request reached
    the server 4 times per attempt. A session that does not stamp (`traced` False) cannot tell:
    resent as before."""
    import aiohttp  # loaded by load_transport already: a dict lookup

    t = _timeout(timeout)
    for _ in range(STALE_ATTEMPTS - 1):
        pooled = len(ctx.reused)
        try:
            return await session.post(url, data=data, headers=headers, timeout=t, trace_request_ctx=ctx)
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            if isinstance(exc, aiohttp.ClientConnectorError):  # no connection at all: not a stale one
                raise
            if traced and len(ctx.reused) == pooled:  # a new connection: not a stale one either
                raise
            await asyncio.sleep(0)
    return await session.post(url, data=data, headers=headers, timeout=t, trace_request_ctx=ctx)


def event_object(data: bytes, what: str) -> dict[str, Any]:
    """One stream event's JSON object, or a `malformed` error naming what the event should be."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise AdapterError("malformed", redact(f"stream event is not JSON: {data[:120]!r}")) from None
    if not isinstance(obj, dict):
        raise AdapterError("malformed", redact(f"stream event is not {what}: {data[:120]!r}"))
    return obj


def cut_short(what: str) -> AdapterError:
    """The error for a stream that ended cleanly but before its provider's final event."""
    return AdapterError("transient", f"stream ended before {what}; the reply is incomplete")


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on sorted values."""
    if not sorted_values:
        return 0.0
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def token_timing(start: float, marks: list[float], end: float, completion_tokens: int) -> tuple[float, TokenTiming]:
    """(ttft_s, timing) from the send time, the arrival times of the text pieces and the stream's
    end. TPOT follows `vllm bench serve`: (end - first piece) / (output tokens - 1)."""
    if not marks:
        return round(end - start, 6), TokenTiming()
    gaps = sorted(b - a for a, b in zip(marks, marks[1:], strict=False))
    tpot = (end - marks[0]) / (completion_tokens - 1) if completion_tokens > 1 else 0.0
    return round(marks[0] - start, 6), TokenTiming(
        tpot_s=round(tpot, 6), itl_median_s=round(_percentile(gaps, 0.5), 6),
        itl_p99_s=round(_percentile(gaps, 0.99), 6), chunks=len(marks))


Document = Callable[[list[Event]], tuple[dict[str, object], list[float]]]


def stream_reader(got: Streamed, document: Document, parse: Callable[[bytes, float], Response]) -> ReadReply:
    """An adapter's `stream_reply` reader of `got`: its events back into the document the adapter's
    non-streamed parser reads (`document`, which also gives each text piece's arrival time), that
    parser's Response (`parse`) with the stream's timing (`_timed`)."""
    return functools.partial(_read_stream, got, document, parse)


def _read_stream(got: Streamed, document: Document, parse: Callable[[bytes, float], Response],
                 marks: list[float] | None) -> Response:
    doc, pieces = document(got.events())
    return _timed(parse(orjson.dumps(doc), 0.0), got, pieces, marks)


def _timed(resp: Response, streamed: Streamed, marks: list[float], out: list[float] | None) -> Response:
    """`resp` (parsed from the rebuilt document) with the stream's latency, ttft_s and timing; the
    text pieces' arrival times are also appended to `out` when given (the bench's ITL)."""
    tokens = resp.usage.completion_tokens or len(marks)  # a server that sends no usage: one token a piece
    ttft, timing = token_timing(streamed.start, marks, streamed.end, tokens)
    if out is not None:
        out.extend(marks)
    return msgspec.structs.replace(resp, latency_s=round(streamed.end - streamed.start, 6), ttft_s=ttft,
                                   timing=timing)
