"""A response cache shared across runs (`run --cache DIR`, `[run] cache`): final successful
responses, content-addressed, in one SQLite file `DIR/responses.sqlite3`.

The key is sha256 over (adapter, endpoint, model id, the adapter's request-shaping options, the
canonical request body, sample index) (`cache_key`): nothing of the run's models key, item id or
output directory, so an identical request made by another run, config, shard or output directory
is answered from here instead of being paid for again. Errors are never stored.

Why SQLite in WAL mode: readers never block the writer, several processes may share the file
(each write is one short `BEGIN IMMEDIATE` transaction; `busy_timeout` waits out the others), and
a process killed with -9 mid-write leaves the last committed state (the WAL is rolled back or
forward on the next open), so at worst the last responses are missing, never torn. Rows are only
inserted (`INSERT OR IGNORE`: two runs that paid for the same request keep the first answer).

Why a thread: a call can wait up to `busy_timeout` for another process's write lock (and a WAL
checkpoint fsyncs), which on the event loop would stall every lane. All calls go to one worker
thread that owns the connection, so they stay ordered; writes are batched per loop turn (one
transaction for every response that finished in it).
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import msgspec
import orjson

from engine.core.errors import ConfigError
from engine.core.records import Response
from engine.core.secrets import redact

__all__ = ["CacheStats", "ResponseCache", "cache_key", "cache_stats", "open_db", "prune"]

FILE = "responses.sqlite3"
BUSY_TIMEOUT_MS = 60_000
_SCHEMA = ("CREATE TABLE IF NOT EXISTS responses (key BLOB PRIMARY KEY, label TEXT NOT NULL, "
           "value BLOB NOT NULL, created REAL NOT NULL) WITHOUT ROWID")
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Response).decode


def cache_key(scope: bytes, body: Mapping[str, object], sample: int) -> bytes:
    """The address of one request's final response. `scope` is the lane's `cache_scope` bytes."""
    h = hashlib.sha256(scope)
    h.update(b"\0")
    h.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
    h.update(b"\0%d" % sample)
    return h.digest()


def open_db(directory: Path) -> sqlite3.Connection:
    """The cache file of `directory` (created with its folder when absent), in WAL mode."""
    directory = directory.expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(directory / FILE, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # auto_vacuum only takes effect before the first table: prune can then give pages back.
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # WAL: a power cut may lose the last commits, never corrupt
        db.execute(_SCHEMA)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"response cache {directory}: cannot open {FILE} ({exc}); "
                          "pass a writable folder to --cache / [run] cache") from None
    return db


class ResponseCache:
    """One run's handle on a cache folder; every method but `put` is awaited, `put` queues."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.expanduser()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="response-cache")
        self._db: sqlite3.Connection | None = None
        self._pending: list[tuple[bytes, str, bytes, float]] = []
        self._writes: set[Future[None]] = set()
        self.failed: str | None = None  # the first write error (reported, never fatal: the run goes on)

    async def open(self) -> None:
        await asyncio.wrap_future(self._pool.submit(self._open))

    def _open(self) -> None:
        self._db = open_db(self.directory)

    async def get(self, key: bytes) -> Response | None:
        blob = await asyncio.wrap_future(self._pool.submit(self._get, key))
        return _decode(blob) if blob is not None else None

    def _get(self, key: bytes) -> bytes | None:
        """A read that fails (another process held the lock past busy_timeout) is a miss."""
        assert self._db is not None
        try:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            self.failed = self.failed or f"{type(exc).__name__}: {exc}"
            return None
        return bytes(row[0]) if row is not None else None

    def put(self, key: bytes, label: str, response: Response) -> None:
        """Queues a write; the ones queued in this loop turn go in one transaction."""
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        # Persisted like a record: a key value the answer echoes is removed (engine/core/secrets.py).
        self._pending.append((key, label, redact(_encode(response)), time.time()))

    def _flush(self) -> None:
        rows, self._pending = self._pending, []
        if rows:
            fut = self._pool.submit(self._write, rows)
            self._writes.add(fut)
            fut.add_done_callback(self._writes.discard)

    def _write(self, rows: list[tuple[bytes, str, bytes, float]]) -> None:
        assert self._db is not None
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR IGNORE INTO responses (key, label, value, created) VALUES (?, ?, ?, ?)",
                                 rows)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self.failed = self.failed or f"{type(exc).__name__}: {exc}"

    async def aclose(self) -> None:
        """Writes what is queued, then closes the file (the WAL is checkpointed by the last closer)."""
        self._flush()
        for fut in list(self._writes):
            await asyncio.wrap_future(fut)
        await asyncio.wrap_future(self._pool.submit(self._close))
        self._pool.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


class CacheStats(NamedTuple):
    entries: int
    value_bytes: int
    file_bytes: int  # the database file and its WAL
    oldest: float | None
    newest: float | None
    by_label: dict[str, int]  # "adapter:model id" -> entries


def _file_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in (directory / FILE, directory / f"{FILE}-wal") if p.exists())


def cache_stats(directory: Path) -> CacheStats:
    """What a cache folder holds (`python -m engine cache stats DIR`)."""
    directory = directory.expanduser()
    if not (directory / FILE).is_file():
        raise ConfigError(f"{directory}: no response cache here ({FILE} absent); a run with --cache {directory} makes one")
    db = open_db(directory)
    try:
        n, size, oldest, newest = db.execute(
            "SELECT count(*), coalesce(sum(length(value)), 0), min(created), max(created) FROM responses").fetchone()
        labels = dict(db.execute("SELECT label, count(*) FROM responses GROUP BY label ORDER BY label").fetchall())
    finally:
        db.close()
    return CacheStats(n, size, _file_bytes(directory), oldest, newest, labels)


def prune(directory: Path, *, older_than_s: float | None = None, max_bytes: int | None = None,
          now: float | None = None) -> int:
    """Deletes entries created more than `older_than_s` ago, then the oldest until the stored
    responses take at most `max_bytes`; returns how many went. Safe beside running runs (they
    see a miss and pay again)."""
    directory = directory.expanduser()
    stats = cache_stats(directory)
    db = open_db(directory)
    try:
        before = stats.entries
        if older_than_s is not None:
            cutoff = (time.time() if now is None else now) - older_than_s
            db.execute("DELETE FROM responses WHERE created < ?", (cutoff,))
        if max_bytes is not None:
            total = db.execute("SELECT coalesce(sum(length(value)), 0) FROM responses").fetchone()[0]
            excess = total - max_bytes
            if excess > 0:
                drop: list[tuple[bytes]] = []
                for key, size in db.execute("SELECT key, length(value) FROM responses ORDER BY created, key"):
                    if excess <= 0:
                        break
                    drop.append((key,))
                    excess -= size
                db.execute("BEGIN IMMEDIATE")
                db.executemany("DELETE FROM responses WHERE key = ?", drop)
                db.execute("COMMIT")
        after = db.execute("SELECT count(*) FROM responses").fetchone()[0]
        db.execute("PRAGMA incremental_vacuum")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return int(before - after)
