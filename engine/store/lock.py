"""Locks on a run output directory: `flock`, which the kernel drops when the process dies, so a
kill -9 never blocks the resume.

- `OutputLock`: LOCK_EX on DIR/.lock (an unsharded run, a merge);
- `ShardLock`: LOCK_SH on DIR/.lock (shards share it; an unsharded run or a merge takes it
  exclusively) plus LOCK_EX on DIR/.lock.shard-I-of-N, so shards never block each other.

Each lock file holds its holder's pid, which the refusal names. `held` tells whether a live
process holds a directory's lock (the report of a run that is still going).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from engine.core.errors import LockedError


def _flock(path: Path, mode: int, busy: str) -> int:
    """An open fd on `path` holding `mode`; LockedError(`busy` with the holder's pid) if taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)
        raise LockedError(busy.replace("{pid}", holder)) from None
    return fd


def _own(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)


def held(directory: Path, *, by_another: bool = False) -> bool:
    """Whether a live process holds DIR/.lock exclusively (an unsharded run or a merge): a shared
    lock taken and dropped at once is refused exactly then. It never creates the file.
    `by_another`: and that process is not this one (the file holds its holder's pid)."""
    try:
        fd = os.open(directory / ".lock", os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return not by_another or os.pread(fd, 32, 0).decode(errors="replace").strip() != str(os.getpid())
    finally:
        os.close(fd)
    return False


class OutputLock:
    """An exclusive `flock` on <output>/.lock."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = _flock(self.path, fcntl.LOCK_EX, f"{self.path.parent} is in use by another run (pid {{pid}}); "
                                              "wait for it to finish or use another --output")
        _own(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ShardLock:
    """One shard's lock: shared on DIR/.lock, exclusive on DIR/.lock.<tag>."""

    def __init__(self, directory: Path, tag: str, label: str) -> None:
        self.directory = directory
        self.tag = tag  # shard-I-of-N
        self.label = label  # I/N
        self._fds: list[int] = []

    def acquire(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        shared = _flock(self.directory / ".lock", fcntl.LOCK_SH,
                        f"{self.directory} is in use by an unsharded run or a merge (pid {{pid}}); wait for it to finish")
        try:
            own = _flock(self.directory / f".lock.{self.tag}", fcntl.LOCK_EX,
                         f"{self.directory}: shard {self.label} is in use by another run (pid {{pid}}); "
                         "wait for it to finish")
        except LockedError:
            os.close(shared)
            raise
        _own(own)
        self._fds = [own, shared]

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
