"""The one error tree. Every failure the engine reports is one of these; each message is one line:
what, where, what to do.

    TrustMHError
     ├── EngineError(exit_code)        bad input or an unusable environment: one line on stderr, exit
     │    ├── ConfigError               a config file, a flag or an option is wrong (exit 2)
     │    ├── CheckpointError           an output directory's files cannot be used as they are (exit 2)
     │    ├── LockedError               another process holds the output directory (exit 2)
     │    ├── DataError                 a dataset cannot be fetched, verified or read (exit 2)
     │    │    └── DataUnavailable      the data a subtask needs is absent (a run skips the subtask)
     │    ├── ServerError               a local model server could not be started or died
     │    └── StorageError              a checkpoint or state file could not be written (disk full,
     │                                  file-size limit, I/O error): the run stops at once (exit 4)
     └── AdapterError(kind, status, retry_after, unreachable)
                                        one classified failure of one attempt; the lane decides
                                        what follows (retry, stop, record), never the adapter

`AdapterError.kind` is a `records.ErrorKind`, so what the lane records is what the adapter said.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type only: the error tree loads without msgspec and orjson
    from engine.core.records import ErrorKind


class TrustMHError(Exception):
    """Base of every error raised on purpose by the engine, its adapters and its pillars."""


class EngineError(TrustMHError):
    """Bad input or an unusable environment. The message is one line: what, where, what to do."""

    exit_code = 2


class ConfigError(EngineError):
    """Several problems found at once are one error, one line each (`of`, `problems`)."""

    @classmethod
    def of(cls, problems: list[str]) -> ConfigError:
        return cls("\n".join(problems))

    @property
    def problems(self) -> list[str]:
        return str(self).split("\n")


class CheckpointError(EngineError):
    pass


class LockedError(EngineError):
    pass


class DataError(EngineError):
    """A dataset could not be fetched, verified or read."""


class DataUnavailable(DataError):
    """The data a subtask needs is not present (the run skips the subtask and says why)."""


class ServerError(EngineError):
    """A local model server (embedded llama.cpp, managed vLLM) failed to start or died."""


class StorageError(EngineError):
    """A write, flush or fsync of a run's files failed. The run stops dispatching at once; what is
    on disk stays valid (whole lines, or a torn last line the next run cuts) and the same command
    resumes once the cause is fixed."""

    exit_code = 4

    def __init__(self, failure: str, advice: str = "free space and rerun the same command", note: str = "") -> None:
        super().__init__(f"{failure}; {note + '; ' if note else ''}{advice}")
        self.failure = failure
        self.advice = advice

    def noted(self, note: str) -> StorageError:
        """The same failure with what the run did about it (between what failed and what to do)."""
        return StorageError(self.failure, self.advice, note)

    @classmethod
    def of(cls, exc: OSError, path: object, what: str = "write") -> StorageError:
        """The one line for `exc`: what failed, which file, what to do."""
        code = exc.errno
        reason = exc.strerror or str(exc)
        name = errno.errorcode.get(code, "") if code is not None else ""
        if code == errno.EFBIG:
            advice = "raise the file-size limit (ulimit -f) or free space, then rerun the same command"
        elif code in (errno.ENOSPC, errno.EDQUOT):
            advice = "free space and rerun the same command"
        else:
            advice = "check the disk, free space and rerun the same command"
        return cls(f"could not {what} {path}: {reason}{f' ({name})' if name else ''}", advice)


# A disk that cannot take more: these end a run with StorageError; other OSErrors (permissions, a
# missing directory) are bad input.
STORAGE_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


RETRYABLE: frozenset[str] = frozenset({"rate_limited", "transient", "timeout", "malformed"})


class AdapterError(TrustMHError):
    """A classified failure of one attempt.

    kind:
      rate_limited  429 or provider overload signal; retry after `retry_after` (seconds) at least
      transient     5xx, connection reset; retry with backoff
      malformed     a 200 whose body is not the documented JSON (truncated, missing fields); retried
      timeout       the attempt exceeded its timeout; retry with backoff
      auth          401/403: final for the item, and repeated ones stop the lane
      fatal         400/404/422, prompt too long: final, never retried

    unreachable: the attempt could not even connect (the lane stops when every attempt of an item
    was unreachable, instead of retrying a server that is not there).
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        unreachable: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.unreachable = unreachable

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE
