"""What run.json records about a run's inputs: the request-shaping fingerprint of each model, the
data fingerprint, the package versions and the config as stored. The document itself is
engine/core/rundoc.py `RunDoc`, composed by engine/run/document.py and read and written by
engine/store/rundoc_io.py."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import time
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path

import orjson

from adapters import registry
from engine.config import Config, config_to_builtins
from engine.core.config import ModelConfig
from engine.core.paths import cache_root
from engine.core.rundoc import FileId
from engine.store.whole import replace_whole


def _digest(obj: object) -> str:
    return hashlib.blake2b(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS), digest_size=8).hexdigest()


def model_fingerprint(cfg: ModelConfig) -> str:
    """What shapes this model's requests; limits and concurrency do not: the lane's keys, then the
    option keys its adapter's registry entry declares as shaping."""
    shaping: dict[str, object] = {
        "adapter": cfg.adapter, "model": cfg.model, "endpoint": cfg.base_url, "max_tokens": cfg.max_tokens,
        "temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed}
    shaping.update(registry.entry(cfg.adapter).shaping_values(cfg))
    return _digest(shaping)


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def content_digest(path: Path) -> str:
    """sha256 of the file's bytes (twice blake2b's speed where the CPU has SHA instructions: 0.23 s
    of CPU for a 250 MB items file). Remembered for this process by the file's identity (FileId:
    any write changes its ctime), so the completion check and the end-of-run report hash a file
    once."""
    ident = file_id(path)
    key = (str(Path(path).resolve()), ident)
    known = _DIGESTS.get(key)
    if known is not None:
        return known
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    digest = h.hexdigest()[:32]
    if ident is not None and file_id(path) == ident:  # not written to while it was read
        _DIGESTS[key] = digest
    return digest


_DIGESTS: dict[tuple[str, FileId | None], str] = {}


def file_id(path: Path) -> FileId | None:
    """The file's identity (None: there is none)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return FileId(dev=st.st_dev, ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)


def tree_digest(root: Path) -> str:
    """blake2b over every file under `root` (relative path and bytes, in sorted order): a data dir's
    content (its items and official prompt templates), or the engine's own code. A symlinked folder
    is followed (a dataset linked into the data dir from elsewhere is read through it, so its bytes
    count), once per branch: a link back to a folder above it is not walked again."""
    h = hashlib.blake2b(digest_size=16)
    for rel, entry in _files(str(root), "", frozenset()):
        h.update(rel.encode() + b"\0")
        with open(entry.path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def _files(folder: str, rel: str, above: frozenset[tuple[int, int]]) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(path relative to the root, as str(Path) writes it; its entry) of every regular file under
    `folder`, symlinks followed, in the order of sorted relative paths. Strings, not Paths: the code's
    186 files took 6 ms more as Path objects, at every run's start."""
    st = os.stat(folder)
    above = above | {(st.st_dev, st.st_ino)}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name == "__pycache__":
            continue
        name = f"{rel}/{entry.name}" if rel else entry.name
        if entry.is_dir():  # follows a symlink
            sub = entry.stat()
            if (sub.st_dev, sub.st_ino) not in above:
                yield from _files(entry.path, name, above)
        elif entry.is_file():
            yield name, entry


# Keys of a [pillars."<key>"] section that run.json's per-subtask protocol records (engine.spec
# .protocols) instead of the data fingerprint: stating an old default explicitly (constrained =
# true) resumes a run made under it, and a flip is refused naming what changed.
PROTOCOL_KEYS = frozenset({"constrained", "judge_constrained", "judge_hardened"})


def data_fingerprint(items_path: Path | None, data_dir: Path | None, pillar_options: Mapping[str, object],
                     protocol: Mapping[str, str] | None = None) -> str:
    """The items file, or the data dir with the [pillars.*] options and the prompt protocol of the
    subtasks that have one (engine.spec.protocol_of; left out when empty, so runs without such
    subtasks keep the fingerprint they had)."""
    if items_path is not None:
        return _digest({"items": file_digest(items_path)})
    options = {k: kept for k, v in pillar_options.items()
               if (kept := {o: x for o, x in v.items() if o not in PROTOCOL_KEYS} if isinstance(v, Mapping) else v)}
    doc: dict[str, object] = {"data_dir": str(data_dir.resolve()) if data_dir else "builtin", "options": options}
    if protocol:
        doc["protocol"] = dict(protocol)
    return _digest(doc)


def packages() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("trustmh-engine", "aiohttp", "msgspec", "orjson", "uvloop", "tqdm", "xllamacpp"):
        try:
            out[name] = _version(metadata.distribution(name))
        except metadata.PackageNotFoundError:
            pass
    return out


def _version(dist: metadata.Distribution) -> str:
    """metadata.version's value, read from the header lines: `Distribution.version` parses the whole
    METADATA file, long description included, with the email parser (9-12 ms a run for these 7)."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    for line in text.split("\n\n", 1)[0].splitlines():
        if line.startswith("Version:"):
            return line.removeprefix("Version:").strip()
    return dist.version


def config_doc(cfg: Config) -> dict[str, object]:
    return config_to_builtins(cfg)


# The code that makes units, their bodies and keys, and reads records back: the engine, the adapters
# and the pillars (prompt builders, built-in items), with their data files.
_PACKAGE = Path(__file__).resolve().parent.parent
# bench_data/ too: the built-in items are read by the pillars' code (160 KB).
CODE_ROOTS = (_PACKAGE / "engine", _PACKAGE / "adapters", _PACKAGE / "pillars", _PACKAGE / "bench_data")


@functools.cache
def code_digest() -> str:
    """The bytes of every file under CODE_ROOTS (about 2 MB), once a process; and kept in the cache
    folder under the identity of every one of those files (path, device, inode, size, mtime, ctime:
    any write changes the ctime), so a process reads their bytes again only when one has changed or
    come or gone: a stat a file instead of reading and hashing them (15 -> 2 ms of every run's start).
    The cache can only cost time: unreadable, corrupt or unwritable, the bytes are read."""
    ident, newest_ns = _code_identity()
    path = cache_root() / _CODE_CACHE
    try:
        kept = orjson.loads(path.read_bytes())
        if isinstance(kept, dict) and kept.get("identity") == ident and isinstance(kept.get("digest"), str):
            return str(kept["digest"])
    except (OSError, orjson.JSONDecodeError):
        pass
    digest = hashlib.blake2b("".join(tree_digest(root) for root in CODE_ROOTS if root.is_dir()).encode(),
                             digest_size=16).hexdigest()
    # Kept only when no file changed while they were read, and none changed in the last _RACY_S: a
    # file written twice within its file system's timestamp step (a jiffy for ctime on kernels
    # before 6.13) keeps size, mtime and ctime with other bytes, and a digest kept for the first
    # bytes would stand for the second in every later run (git's "racily clean" index entries).
    if _code_identity()[0] == ident and time.time_ns() - newest_ns > _RACY_S * 1e9:
        _keep(path, orjson.dumps({"identity": ident, "digest": digest}))
    return digest


_CODE_CACHE = "code-digest.json"
_RACY_S = 2.0  # FAT's mtime step is 2 s; others' are finer


def _keep(path: Path, data: bytes) -> None:
    """Keeps the digest; an unwritable cache folder only slows the next start."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_whole(path, data)


def _code_identity() -> tuple[str, int]:
    """A digest of every code file's identity, and the newest of their mtimes and ctimes (ns)."""
    h = hashlib.blake2b(digest_size=16)
    newest = 0
    for root in CODE_ROOTS:
        if root.is_dir():
            for _, entry in _files(str(root), "", frozenset()):
                st = entry.stat()
                newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
                h.update(f"{entry.path}\0{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}\n".encode())
    return h.hexdigest(), newest
