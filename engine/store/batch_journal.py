"""batches/<model>.jsonl: what a batch lane has submitted, so that a crash never pays for one
request twice (README "Batch lanes").

Each line is fsynced before the step it records goes on:

  intent    local id, the record keys, a hash of the input file, the time: written before anything
            is uploaded, so a batch the provider may hold is always one the journal knows of
  file      the provider's id of the uploaded input file (OpenAI), as soon as it is returned
  created   the provider's batch id, as soon as it is returned
  ended     the batch's results are in responses/ (or it was given up): its keys are free again

On resume every batch without `ended` is re-attached (polled and read), never submitted again; one
without `created` is looked up at the provider first (the crash may have come between the create
call and its journal line) and only given up when the provider has no such batch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import msgspec

from engine.core.errors import STORAGE_ERRNOS, CheckpointError, StorageError
from engine.store.checkpoint import repair_torn_tail

__all__ = ["BatchJournal", "Event", "JournalLine", "OpenBatch"]

Event = Literal["intent", "file", "created", "ended"]


class JournalLine(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    event: Event
    local_id: str
    at: float = 0.0  # Unix time the line was written
    keys: list[str] = []  # intent: the record keys (custom_ids) in the batch, in input order
    hash: str = ""  # intent: blake2b of the input file as uploaded
    file_id: str = ""  # file: the provider's input file id
    batch_id: str = ""  # created: the provider's batch id
    state: str = ""  # ended: the provider's last state, or why it was given up


class OpenBatch(msgspec.Struct):
    """A journalled batch that has not ended: what resume re-attaches."""

    local_id: str
    keys: list[str]
    at: float
    file_id: str = ""
    batch_id: str = ""
    hash: str = ""


_decode = msgspec.json.Decoder(JournalLine).decode
_encode = msgspec.json.Encoder().encode


class BatchJournal:
    """One lane's journal. `merged`: the journal `merge` wrote from the shards' (a shard reads it
    too, so that a batch journalled before a merge is re-attached by the shard's rerun; its own lines
    go to its own file, which the next merge adds)."""

    def __init__(self, path: Path, merged: Path | None = None) -> None:
        self.path = path
        self.merged = merged
        self._fd = -1

    def load(self) -> list[OpenBatch]:
        """The batches without an `ended` line, in the order they were intended. A torn last
        line (a crash mid-write) is cut: the step it recorded had not gone on yet."""
        open_: dict[str, OpenBatch] = {}
        for path in (self.merged, self.path):
            if path is not None and path.exists():
                self._read(path, open_)
        return list(open_.values())

    @staticmethod
    def _read(path: Path, open_: dict[str, OpenBatch]) -> None:
        repair_torn_tail(path)
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = _decode(line)
                except msgspec.DecodeError as exc:
                    raise CheckpointError(f"{path} line {n}: not a batch journal line ({exc}); restore the file, "
                                          "or move it aside to give up re-attaching its batches (they may be "
                                          "bought again)") from None
                if rec.event == "intent":
                    open_[rec.local_id] = OpenBatch(rec.local_id, list(rec.keys), rec.at, hash=rec.hash)
                elif (b := open_.get(rec.local_id)) is not None:
                    if rec.event == "file":
                        b.file_id = rec.file_id
                    elif rec.event == "created":
                        b.batch_id = rec.batch_id
                    else:
                        del open_[rec.local_id]

    def append(self, line: JournalLine) -> None:
        """Appends and fsyncs one line; the step it records goes on only after this returns."""
        data = _encode(line) + b"\n"
        try:
            if self._fd < 0:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as exc:
            if exc.errno in STORAGE_ERRNOS:
                raise StorageError.of(exc, self.path, "write") from None
            raise

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
