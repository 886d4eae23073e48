"""Exactly-once JSONL checkpoints: a fast resume scan and one writer task per file (the output
directory's lock is engine/store/lock.py).

Every line is written whole by a single writer, so a crash can only tear the last line; the scan
cuts it off. A key is never written twice: the scan's keys are skipped by the producers, and each
work unit is dispatched once per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, overload

import msgspec

from engine.core.errors import STORAGE_ERRNOS, CheckpointError, StorageError
from engine.core.records import Record, record_decoder, record_encoder
from engine.core.secrets import redact
from engine.store.jsonl import DECODE_CHUNK, ERROR_FIELD, chunks
from engine.store.keyset import KeySet
from engine.store.lock import held as lock_held

R = TypeVar("R")

# Records are encoded with `key` first, so a regex over whole chunks reads keys at C speed.
_KEY_LINE = re.compile(rb'^\{"key":"([0-9a-f]{32})"(?:,"[^\n]*)?\}$', re.M)
# The resume scan only reads each line's key prefix: scanning the rest of every line (hundreds of
# MB for a 1M-record file) costs more than the whole scan budget. A torn line can only be the last
# one (single writer, whole-line writes), which repair_torn_tail handles; verify/score decode fully.
# Anchoring on a literal "\n" (not `^` with re.M) lets the regex engine skip ahead with a fast
# substring search: ~5x faster on a 1M-record file.
# The "}" before the newline is part of the match: each match also says that the line before it
# ended whole, which spares a separate pass over the file to count "}\n".
_KEY_AFTER_NL = re.compile(rb'\}\n\{"key":"([0-9a-f]{32})",')
_KEY_AT_START = re.compile(rb'\{"key":"([0-9a-f]{32})",')


def _chunk_keys(chunk: bytes) -> list[bytes]:
    """The keys (32 hex digits) of a chunk of whole lines (the chunk starts at a line start)."""
    keys = _KEY_AFTER_NL.findall(chunk)
    first = _KEY_AT_START.match(chunk)
    if first is not None:
        keys.append(first.group(1))
    return keys


class ScanResult(msgspec.Struct, kw_only=True):
    done: KeySet
    records: int = 0
    errors: int = 0  # records whose outcome is a fatal error
    torn_bytes: int = 0


def repair_torn_tail(path: Path) -> int:
    """Cuts an unterminated last line (a write torn by a crash). Returns the bytes removed. A last
    line that is a whole record lacking only its newline (a crash between the two) is kept: its
    newline is added."""
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # Walk back to the last newline.
        pos = size
        while pos > 0:
            step = min(1 << 16, pos)
            f.seek(pos - step)
            block = f.read(step)
            nl = block.rfind(b"\n")
            if nl >= 0:
                cut = pos - step + nl + 1
                break
            pos -= step
        else:
            cut = 0
        f.seek(cut)
        tail = f.read()
        if _KEY_LINE.fullmatch(tail) and _is_json(tail):
            f.write(b"\n")
            return 0
        f.truncate(cut)
        return size - cut


def _is_json(line: bytes) -> bool:
    try:
        msgspec.json.decode(line)
    except msgspec.DecodeError:
        return False
    return True


def _bad_line(path: Path, first: int, chunk: bytes) -> CheckpointError:
    """Names the first line of `chunk` that is not a record: not JSON, or JSON without the leading
    "key" every record starts with (a blank line counts too)."""
    lines = chunk.split(b"\n")
    for i, line in enumerate(lines):
        if i == len(lines) - 1 and not line:
            break  # the end of the chunk, not a line
        try:
            msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            problem = str(exc) if line.strip() else "empty line"
        else:
            if _KEY_LINE.fullmatch(line):
                continue
            problem = "no leading \"key\" field"
        return CheckpointError(
            f"{path}:{first + i}: not a valid record ({problem}); move the file aside or repair that line, then rerun"
        )
    return CheckpointError(f"{path}: unreadable records near line {first}; move the file aside, then rerun")


def scan_responses(path: Path, *, drop_errors: bool = False) -> ScanResult:
    """Reads the keys of a responses file. With drop_errors, fatal-error records are rewritten out
    of the file (atomically) so that `--retry-errors` can retry them without a duplicate key."""
    result = ScanResult(done=KeySet())
    if not path.exists():
        return result
    result.torn_bytes = repair_torn_tail(path)
    keep: list[bytes] | None = [] if drop_errors else None
    for first, chunk, lines in chunks(path):
        keys = _chunk_keys(chunk)
        # Every record line starts with its key and ends with "}": raw newlines only occur at line
        # ends (JSON escapes them inside strings), so a key after every "}\n" and a chunk ending
        # in "}\n" leave no room for a cut-short line.
        if len(keys) != lines or not chunk.endswith(b"}\n"):
            raise _bad_line(path, first, chunk)
        if drop_errors:
            assert keep is not None
            kept: list[bytes] = []
            for line in chunk.split(b"\n")[:-1]:
                if ERROR_FIELD in line and record_decoder.decode(line).error is not None:
                    result.errors += 1
                    continue
                keep.append(line)
                kept.append(line[8:40])
            result.done.add_hex(kept)
        else:
            result.errors += chunk.count(ERROR_FIELD)
            result.done.add_hex(keys)
        result.records += lines
    if keep is not None and result.errors:
        _rewrite(path, keep)
        result.records = len(keep)
    result.done.freeze()
    return result


def _rewrite(path: Path, lines: list[bytes]) -> None:
    """`path` holding `lines`, atomically; a disk that refuses leaves the old file as it was."""
    tmp = path.with_suffix(".jsonl.tmp")
    try:
        with open(tmp, "wb") as f:
            for line in lines:
                f.write(line + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if exc.errno in STORAGE_ERRNOS:
            raise StorageError.of(exc, tmp) from None
        raise


class _Where(msgspec.Struct):
    """What `iter_records_of` filters on: fields every response and judgment record has. Decoding
    only these skips the rest of a line without building its strings."""

    model: str
    pillar: str
    subtask: str


_where_decoder = msgspec.json.Decoder(_Where)


@overload
def iter_records(path: Path, *, live: bool = False) -> Iterator[Record]: ...
@overload
def iter_records(path: Path, decoder: msgspec.json.Decoder[R], *, live: bool = False) -> Iterator[R]: ...
def iter_records(path: Path, decoder: msgspec.json.Decoder[Any] = record_decoder, *, live: bool = False) -> Iterator[object]:
    """Decodes every record of a JSONL checkpoint (verify, score and report read this way).
    An unterminated last line while a run is appending to the file (`live`, or another live process
    holds the run directory's lock) is a write still under way, not yet a record, and is left out:
    the report (and score) of a running run read what is there so far. Read by the holder itself
    (a run, a merge), it is a kill's leftover as before."""
    if not path.exists():
        return
    for first, chunk, _ in chunks(path, DECODE_CHUNK):
        yield from _decode_chunk(path, first, _written(path, chunk, live), decoder)


def _written(path: Path, chunk: bytes, live: bool) -> bytes:
    """`chunk` without an unterminated last line that a run is still writing (see iter_records)."""
    if not chunk.endswith(b"\n") and (live or lock_held(path.parent.parent, by_another=True)):
        return chunk[: chunk.rfind(b"\n") + 1]
    return chunk


@overload
def iter_records_of(path: Path, where: Callable[[str, str, str], bool], *, live: bool = False) -> Iterator[Record]: ...
@overload
def iter_records_of(path: Path, where: Callable[[str, str, str], bool], decoder: msgspec.json.Decoder[R], *,
                    live: bool = False) -> Iterator[R]: ...
def iter_records_of(path: Path, where: Callable[[str, str, str], bool],
                    decoder: msgspec.json.Decoder[Any] = record_decoder, *, live: bool = False) -> Iterator[object]:
    """The records of a checkpoint for which `where(model, pillar, subtask)` holds, in file order:
    each line's three fields are decoded first and only the chosen lines in full, so a pass for one
    subtask costs a fraction of a full decode and holds only that subtask's records. A line not
    chosen is checked only as JSON carrying those three fields: a reader that must see every damaged
    record also reads the file in full once (score's usage pass does). `live`: as `iter_records`."""
    for _, chosen in _chosen(path, _where_decoder, lambda h: where(h.model, h.pillar, h.subtask), decoder, live):
        yield from chosen


H = TypeVar("H")


def iter_heads(path: Path, heads: msgspec.json.Decoder[H], choose: Callable[[H], bool], *,
               live: bool = False) -> Iterator[tuple[list[H], list[Record]]]:
    """A chunk of a checkpoint at a time: every line as `heads` decodes it (a Struct of a few of a
    record's fields, the rest skipped without building their strings), and the full Records of the
    lines `choose` (called once a line, in file order) picks. A line not chosen is checked only as
    its head, as in `iter_records_of`. `live`: as `iter_records`."""
    yield from _chosen(path, heads, choose, record_decoder, live)


def _chosen(path: Path, heads: msgspec.json.Decoder[H], choose: Callable[[H], bool], decoder: msgspec.json.Decoder[Any],
            live: bool) -> Iterator[tuple[list[H], list[Any]]]:
    """A chunk at a time: each line's head, and the lines `choose` picked decoded with `decoder`,
    in file order."""
    if not path.exists():
        return
    for first, whole, _ in chunks(path, DECODE_CHUNK):
        chunk = _written(path, whole, live)
        hs = _decode_chunk(path, first, chunk, heads, decoder)
        keep = [choose(h) for h in hs]
        if all(keep):
            chosen = _decode_chunk(path, first, chunk, decoder)
        elif any(keep):
            lines = [ln for ln in chunk.split(b"\n") if ln.strip()]  # as decode_lines counts them
            try:
                chosen = decoder.decode_lines(b"\n".join(ln for ln, k in zip(lines, keep, strict=True) if k))
            except msgspec.DecodeError:
                _decode_chunk(path, first, chunk, decoder)  # names the bad line by its number in the file
                raise
        else:
            chosen = []
        yield hs, chosen


def _decode_chunk(path: Path, first: int, chunk: bytes, decoder: msgspec.json.Decoder[Any],
                  diagnose: msgspec.json.Decoder[Any] | None = None) -> list[Any]:
    """A chunk's records; a line that does not decode is named (with `diagnose`, the full record
    decoder, when `decoder` reads only part of each line, so the message is the same either way)."""
    try:
        return decoder.decode_lines(chunk)
    except msgspec.DecodeError as exc:
        # The resume scan only reads keys; a line damaged after its key surfaces here.
        check = diagnose or decoder
        lines = chunk.split(b"\n")
        for i, line in enumerate(lines):
            if line.strip():
                try:
                    check.decode(line)
                    if diagnose is not None:
                        decoder.decode(line)
                except msgspec.DecodeError as line_exc:
                    if i == len(lines) - 1:  # unterminated, so the file's last line: a write a kill cut short
                        raise CheckpointError(
                            f"{path}:{first + i}: a torn last line left by an interrupted run; rerun the same "
                            "`run` command once (it cuts the line and redoes that record), then this") from None
                    raise CheckpointError(f"{path}:{first + i}: not a valid record ({line_exc}); move the file "
                                          "aside or repair that line, then rerun") from None
        raise CheckpointError(f"{path}: unreadable records near line {first} ({exc})") from None


WriteFn = Callable[[int, memoryview], int]


class JsonlWriter:
    """The only writer of one JSONL file. Producers `put` Structs; a task appends them in batches
    (one write per loop turn's worth of records) and fsyncs at least once per `fsync_interval`.

    Records not yet on disk are those put since the task's last turn: each lane worker puts at most
    one record per loop turn (every record needs a network reply first), so they never exceed the
    lane's max_concurrency; `high_water` keeps the most there ever were, for the tests.

    A failed write or fsync (disk full, file-size limit, I/O error) is reported once to `on_error`
    as a StorageError and ends the task: what was put afterwards stays in memory, and `close` makes
    one last try to append it (whole lines continue where the failed write stopped, so no record
    is written twice; a torn last line is cut by the next run's scan)."""

    _os_write: WriteFn = staticmethod(os.write)  # tests inject a disk that fills up

    def __init__(self, path: Path, *, fsync_interval: float = 1.0,
                 on_written: Callable[[list[msgspec.Struct]], None] | None = None,
                 on_error: Callable[[StorageError], None] | None = None) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                # A crash can tear the last line of any checkpoint (errors/ included, which no scan
                # reads): cut it, or the first whole line appended would follow a corrupt one.
                repair_torn_tail(path)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in STORAGE_ERRNOS:  # a full disk before the run sends anything
                raise StorageError.of(exc, path, "open") from None
            raise
        # Records put and not yet taken by the task, and the task's wake-up while it waits for
        # some: a plain list (asyncio.Queue's bookkeeping per record was a measurable share of
        # the hot path at thousands of records a second).
        self._pending: list[msgspec.Struct] = []
        self._waiter: asyncio.Future[None] | None = None
        self._closing = False
        self._interval = fsync_interval
        self._on_written = on_written
        # Called with each batch once an fsync that covers it returned: the records are durably in
        # the file (the judge stage judges a response only then, so no judgment outlives it).
        self.on_durable: Callable[[list[msgspec.Struct]], None] | None = None
        self._undurable: list[list[msgspec.Struct]] = []  # written since the running fsync began
        self._closing = False  # close() began: no fsync may start that could outlive the descriptor
        self.on_error = on_error
        self._sync: asyncio.Future[None] | None = None
        self._last_sync = 0.0
        self._dirty = False
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.error_lines = 0  # of the lines written, fatal-error records (engine/run/completion.py)
        self.put_count = 0
        self._progress = asyncio.Event()  # set after each write: what `sync` waits on
        self.high_water = 0
        self.error: StorageError | None = None
        self.unsaved = 0  # records that never reached the file after a failure (retried next run)
        self._unwritten = bytearray()  # the bytes a failed write left over, in order

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"writer:{self.path.name}")

    def _start_sync(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_sync = loop.time()
        self._dirty = False
        covered, self._undurable = self._undurable, []
        self._sync = loop.run_in_executor(None, os.fsync, self._fd)
        self._sync.add_done_callback(functools.partial(self._synced, covered))

    def _synced(self, covered: list[list[msgspec.Struct]], fut: asyncio.Future[None]) -> None:
        exc = None if fut.cancelled() else fut.exception()
        if isinstance(exc, OSError):
            self._fail(exc, "fsync")
        elif exc is None and not fut.cancelled():
            self._durable(covered)
            if self._undurable and not self._closing and self.error is None and self._dirty:
                self._start_sync()  # what was written while this one ran

    def _durable(self, covered: list[list[msgspec.Struct]]) -> None:
        if self.on_durable is not None and self.error is None:
            for batch in covered:
                self.on_durable(batch)

    def _timed_sync(self) -> None:
        self._timer = None
        if self._dirty and (self._sync is None or self._sync.done()) and self._fd >= 0 and self.error is None:
            self._start_sync()

    def put(self, record: msgspec.Struct) -> None:
        pending = self._pending
        pending.append(record)
        self.put_count += 1
        if len(pending) > self.high_water:
            self.high_water = len(pending)
        waiter = self._waiter  # _wake, inline: once per record
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, exc: OSError, what: str) -> None:
        if self.error is not None:
            return
        self.error = StorageError.of(exc, self.path, what)
        if self.on_error is not None:
            self.on_error(self.error)

    def _write(self, buf: bytearray | bytes) -> bool:
        """Appends `buf` (whole lines); on failure keeps what did not get written and says so."""
        view = memoryview(buf)
        try:
            while view:
                n = self._os_write(self._fd, view)
                view = view[n:]
        except OSError as exc:
            self._unwritten += view
            self._fail(exc, "write")
            return False
        finally:
            view.release()
        return True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                if self._closing:
                    break
                self._waiter = loop.create_future()
                await self._waiter
                continue
            if len(self._pending) <= 4096:
                batch, self._pending = self._pending, []
            else:
                batch = self._pending[:4096]
                del self._pending[:4096]
            buf = record_encoder.encode_lines(batch)  # one call for the batch: 0.3 us a record less than a loop
            # A model that echoes the key (a proxy answering 200 with the request) keeps it out of the file.
            data = redact(buf)
            if not self._write(data) or self.error is not None:
                self._progress.set()
                break  # the disk failed: what comes now stays in memory until close
            self.written += len(batch)
            self.error_lines += data.count(ERROR_FIELD)  # as the resume scan counts fatal records
            self._progress.set()
            if self._on_written is not None:
                self._on_written(batch)
            if self.on_durable is not None:
                self._undurable.append(batch)
            now = loop.time()
            self._dirty = True
            idle = self._sync is None or self._sync.done()
            if idle and (now - self._last_sync >= self._interval or self.on_durable is not None):
                # A reader waiting for durability (the judge stage) gets each batch synced at once:
                # one fsync at a time, each covering every batch written while the last one ran.
                self._start_sync()
            elif self._timer is None:
                # Idle after this batch: still fsync it within the interval, not at the next write.
                self._timer = loop.call_later(max(self._interval - (now - self._last_sync), 0.0), self._timed_sync)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._final_sync()

    async def sync(self) -> None:
        """Returns once every record put so far is written and fsynced: a batch lane journals that
        a batch ended only after its results are on disk (engine/run/batching.py)."""
        target = self.put_count
        while self.written < target and self.error is None and self._task is not None and not self._task.done():
            self._progress.clear()
            await self._progress.wait()
        if self.error is None and self._fd >= 0:
            await self._final_sync()

    async def _final_sync(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._sync is not None and not self._sync.done():
                await self._sync  # and any that its completion started (on_durable's chain)
            covered, self._undurable = self._undurable, []
            await loop.run_in_executor(None, os.fsync, self._fd)
        except OSError as exc:
            self._fail(exc, "fsync")
        else:
            self._durable(covered)

    def _salvage(self) -> None:
        """After a failure: one more try to append what is still in memory (the disk may have room
        for some of it); what does not fit is counted, and retried by the next run."""
        rest = bytearray()
        pending, self._pending = self._pending, []
        for rec in pending:
            record_encoder.encode_into(rec, rest, len(rest))
            rest.extend(b"\n")
        buf = self._unwritten + redact(rest)  # the left-over bytes were redacted before the failed write
        self._unwritten = bytearray()
        if not buf or self._write(buf):
            with contextlib.suppress(OSError):  # already failed once: the first error is the one reported
                os.fsync(self._fd)
        self.unsaved = self._unwritten.count(b"\n")

    async def close(self) -> None:
        """Flushes everything put so far and fsyncs (after a failure: what still fits)."""
        self._closing = True
        if self._task is not None:
            self._closing = True
            self._wake()
            await self._task
            self._task = None
        if self.error is not None:
            self._salvage()
        os.close(self._fd)
