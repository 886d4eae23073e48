"""A folder built once per test session and shared by every pytest-xdist worker.

    built_once(tmp_path_factory, name, build) -> Path

A module-scoped fixture runs once per worker that runs one of the module's tests, and the README's
`-n auto --maxschedchunk 1` hands a module's tests to every worker: a fixture that runs the engine
(seconds of CPU) ran three times. `build(folder)` fills the folder the first time any worker asks
for `name`; the others wait on a lock and reuse it. The folder is the session's, so what the test
reads is what this session built. Readers treat it as read-only (copy it to change it).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

DONE = ".built"  # written last: a folder without it is a build that died half-way


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # each worker's basetemp is <session>/popen-gwN: the session folder is shared
    folder = root / f"once-{name}"
    with open(root / f"once-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (folder / DONE).is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)  # in place, not renamed: what it writes may name its own paths
            (folder / DONE).touch()
    return folder
