"""A small file written whole or not at all, for what only saves time (the code digest, a report's
kept inputs, measured throughput): the bytes go to a temporary file of its own beside it (mkstemp:
writers in other PID namespaces may share the folder, where a pid in the name is not unique), then
one rename. No fsync: a crash may lose the new file, never leave half of one. run.json, scores.json
and the checkpoints have writers of their own (rundoc_io, checkpoint), which fsync."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["replace_whole"]


def replace_whole(path: Path, data: bytes) -> None:
    """`path` now holds `data`; on an OSError (raised) the old file is as it was and no temporary
    file is left."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
