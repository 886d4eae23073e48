"""The official data: a sha256-pinned manifest and `python -m engine data fetch | list`.

`engine/data_manifest.toml` names every official file: its dataset folder and path (the layout of
shared/trustmh, so a fetched folder is a valid `--data-dir`), its size and sha256, and where the
exact bytes come from (an upstream URL at a pinned commit, a member of a published archive, a file
built locally from other pinned files, or nowhere public: `mirror_only`). A mirror (`--mirror`,
`[data] mirror`, `$TRUSTMH_DATA_MIRROR`) replaces every source with `<mirror>/<dataset>/<path>`:
an http(s) URL, a `file://` URL or a plain local directory (air-gapped clusters).

Every file is streamed into a temp file next to its destination while its sha256 is computed, and
moved into place (os.replace) only once size and sha256 match the pin; on a mismatch or an error
the temp file is deleted, so a destination never holds a half-written or unverified file. Files
already present with the right sha256 are skipped (a re-run resumes; --force re-downloads).

Only stdlib imports at module level: the CLI imports this lazily; aiohttp and tqdm are imported by
the fetch itself.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from engine.core.errors import EngineError

__all__ = [
    "MANIFEST_PATH", "DataError", "DataFile", "Dataset", "Manifest", "FetchReport",
    "load_manifest", "default_data_dir", "resolve_dest", "resolve_mirror", "mirror_source",
    "file_status", "fetch", "fetch_sync", "cmd_data",
]

MANIFEST_PATH = Path(__file__).with_name("data_manifest.toml")
CHUNK = 1 << 16
Log = Callable[[str], None]


class DataError(EngineError):
    """A file that could not be fetched or verified: what, where from, expected vs got, what to do."""


# -- manifest -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataFile:
    dataset: str
    path: str  # inside the dataset folder, "/"-separated
    size: int
    sha256: str
    url: str | None = None  # upstream URL of the exact bytes, or of the archive holding `member`
    member: str | None = None  # path inside the archive at `url`
    derive: str | None = None  # name of a builder in DERIVERS
    mirror_only: str | None = None  # why no public URL serves these bytes
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.path}"

    def source_text(self) -> str:
        if self.mirror_only:
            return f"mirror only ({self.mirror_only})"
        if self.derive:
            return f"derived locally ({DERIVE_DOC.get(self.derive, self.derive)})"
        if self.member:
            return f"{self.url} -> {self.member}"
        return self.url or "-"


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str = ""
    license: str = ""
    files: tuple[DataFile, ...] = ()
    unavailable: str | None = None  # no fetchable files: why, and where to get them
    expected: tuple[str, ...] = ()  # for unavailable datasets: the files a loader reads


@dataclass(frozen=True)
class Manifest:
    datasets: dict[str, Dataset]
    path: str

    def files(self, names: Iterable[str] | None = None) -> list[DataFile]:
        names = list(self.datasets) if names is None else list(names)
        return [f for n in names for f in self.datasets[n].files]


_FILE_KEYS = {"path", "size", "sha256", "url", "member", "derive", "mirror_only", "note"}
_DATASET_KEYS = {"source", "license", "files", "unavailable", "expected"}


def _safe_rel(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and "\\" not in rel and all(
        p not in ("", ".", "..") for p in parts)


def load_manifest(path: str | os.PathLike[str] | None = None) -> Manifest:
    """Parse and check a manifest TOML (default: the shipped engine/data_manifest.toml)."""
    p = Path(path) if path is not None else MANIFEST_PATH
    try:
        raw = tomllib.loads(p.read_text("utf-8"))
    except OSError as exc:
        raise EngineError(f"cannot read data manifest {p}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EngineError(f"data manifest {p}: not valid TOML: {exc}") from None

    def bad(msg: str) -> EngineError:
        return EngineError(f"data manifest {p}: {msg}")

    table = raw.get("datasets")
    if not isinstance(table, dict) or set(raw) != {"datasets"}:
        raise bad("expected only [datasets.<name>] tables")
    datasets: dict[str, Dataset] = {}
    for name, body in table.items():
        if not _safe_rel(name) or "/" in name or not isinstance(body, dict):
            raise bad(f"bad dataset name or table {name!r}")
        unknown = set(body) - _DATASET_KEYS
        if unknown:
            raise bad(f"datasets.{name}: unknown key(s) {', '.join(sorted(unknown))}")
        files: list[DataFile] = []
        seen: set[str] = set()
        for i, fb in enumerate(body.get("files", [])):
            where = f"datasets.{name}.files[{i}]"
            if not isinstance(fb, dict):
                raise bad(f"{where}: expected a table")
            unknown = set(fb) - _FILE_KEYS
            if unknown:
                raise bad(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
            try:
                f = DataFile(dataset=name, path=str(fb["path"]), size=int(fb["size"]),
                             sha256=str(fb["sha256"]).lower(), url=fb.get("url"), member=fb.get("member"),
                             derive=fb.get("derive"), mirror_only=fb.get("mirror_only"),
                             note=str(fb.get("note", "")))
            except KeyError as exc:
                raise bad(f"{where}: missing key {exc.args[0]}") from None
            if not _safe_rel(f.path) or f.path in seen:
                raise bad(f"{where}: bad or duplicate path {f.path!r}")
            if len(f.sha256) != 64 or any(c not in "0123456789abcdef" for c in f.sha256) or f.size < 0:
                raise bad(f"{where} ({f.path}): sha256 must be 64 hex digits and size >= 0")
            sources = [bool(f.url), bool(f.derive), bool(f.mirror_only)]
            if sum(sources) != 1 or (f.member and not f.url):
                raise bad(f"{where} ({f.path}): give exactly one of url (optionally with member), "
                          "derive, mirror_only")
            if f.derive and f.derive not in DERIVERS:
                raise bad(f"{where} ({f.path}): unknown builder derive = {f.derive!r} "
                          f"(known: {', '.join(DERIVERS)})")
            seen.add(f.path)
            files.append(f)
        unavailable = body.get("unavailable")
        if unavailable and files:
            raise bad(f"datasets.{name}: an unavailable dataset lists no files")
        if not unavailable and not files:
            raise bad(f"datasets.{name}: no files (and no `unavailable` reason)")
        datasets[name] = Dataset(name=name, source=str(body.get("source", "")),
                                 license=str(body.get("license", "")), files=tuple(files),
                                 unavailable=unavailable,
                                 expected=tuple(str(e) for e in body.get("expected", ())))
    return Manifest(datasets=datasets, path=str(p))


# -- derived files ------------------------------------------------------------------------------


def _cpsycoune_inputs(ds: Dataset) -> list[DataFile]:
    files = [f for f in ds.files if f.path.startswith("CPsyCounE/") and f.path.endswith(".json")]
    return sorted(files, key=lambda f: (f.path.split("/")[1], int(Path(f.path).stem)))


def _derive_cpsycoune_all(folder: Path, ds: Dataset) -> bytes:
    """cpsycoune_all.jsonl: one line per case {"topic", "case", "dialogue"}, sorted by topic, case."""
    lines = []
    for f in _cpsycoune_inputs(ds):
        _, topic, name = f.path.split("/")
        dialogue = json.loads((folder / f.path).read_text("utf-8"))
        lines.append(json.dumps({"topic": topic, "case": int(Path(name).stem), "dialogue": dialogue},
                                ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode("utf-8")


# builder name -> (inputs of the dataset, build(dataset folder, dataset) -> bytes)
DERIVERS: dict[str, tuple[Callable[[Dataset], list[DataFile]], Callable[[Path, Dataset], bytes]]] = {
    "cpsycoune_all": (_cpsycoune_inputs, _derive_cpsycoune_all),
}
DERIVE_DOC = {"cpsycoune_all": "from CPsyCounE/<topic>/<n>.json, one JSON line per case"}


# -- locations ----------------------------------------------------------------------------------


def default_data_dir() -> Path:
    """$TRUSTMH_CACHE/data, else <XDG cache or ~/.cache>/trustmh-engine/data."""
    from engine.core.paths import cache_root

    return cache_root() / "data"


def resolve_dest(to: str | None, config_cache: str | None = None) -> Path:
    """--to, else [data] cache, else the default cache folder."""
    if to:
        return Path(to).expanduser()
    if config_cache:
        return Path(config_cache).expanduser()
    return default_data_dir()


def resolve_mirror(flag: str | None, config_mirror: str | None = None) -> str | None:
    """--mirror, else [data] mirror, else $TRUSTMH_DATA_MIRROR, else None (upstream URLs)."""
    for value in (flag, config_mirror, os.environ.get("TRUSTMH_DATA_MIRROR")):
        if value and value.strip():
            return value.strip()
    return None


def _is_http(s: str) -> bool:
    return s.lower().startswith(("http://", "https://"))


def mirror_source(mirror: str, f: DataFile) -> str | Path:
    """Where a mirror serves a file: <mirror>/<dataset>/<path> (URL, or a local Path)."""
    if _is_http(mirror):
        segs = [f.dataset, *f.path.split("/")]
        return mirror.rstrip("/") + "/" + "/".join(quote(s, safe="") for s in segs)
    return _mirror_dir(mirror) / f.dataset / f.path


def _mirror_dir(mirror: str) -> Path:
    if mirror.lower().startswith("file://"):
        return Path(unquote(urlsplit(mirror).path))
    if "://" in mirror:
        raise EngineError(f"--mirror {mirror}: unsupported scheme; use an http(s):// or file:// URL "
                          "or a local directory")
    return Path(mirror).expanduser()


# -- checking files -----------------------------------------------------------------------------


def _sha256_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            n += len(block)
    return n, h.hexdigest()


def file_status(dest: Path, f: DataFile) -> str:
    """"ok" (present, size and sha256 match), "missing", or "differs (...)"."""
    path = dest / f.dataset / f.path
    if not path.is_file():
        return "missing"
    try:
        size, digest = _sha256_file(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if size != f.size:
        return f"differs (size {size}, expected {f.size})"
    if digest != f.sha256:
        return f"differs (sha256 {digest[:12]}..., expected {f.sha256[:12]}...)"
    return "ok"


def _fmt_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


# -- fetching -----------------------------------------------------------------------------------


class _Retryable(Exception):
    """A transient failure (connection, timeout, 5xx/429): retried with backoff."""


@dataclass
class FetchReport:
    dest: Path
    fetched: list[str] = field(default_factory=list)
    derived: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # present and verified
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, one-line message)
    needs_mirror: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.needs_mirror


class _Bar:
    """A tqdm byte counter on stderr (or nothing); log lines go through tqdm.write when it is on."""

    def __init__(self, total: int, enabled: bool, log: Log) -> None:
        self._log = log
        self._bar = None
        if enabled and total > 0:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="data",
                             file=sys.stderr, dynamic_ncols=True, leave=False)

    def update(self, n: int) -> None:
        if self._bar is not None and n:
            self._bar.update(n)

    def log(self, msg: str) -> None:
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)
        else:
            self._log(msg)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _Fetcher:
    def __init__(self, *, session: Any, bar: _Bar, retries: int, timeout: float) -> None:
        self.session = session
        self.bar = bar
        self.retries = retries
        self.timeout = timeout

    # one streamed transfer into a verified temp file -------------------------------------------

    async def to_temp(self, url: str, folder: Path, label: str, size: int | None, sha: str | None,
                      count: bool, what_to_do: str) -> Path:
        """Stream `url` into a temp file in `folder`, checking size/sha256 (when given) on the way.

        Returns the temp file (the caller moves or deletes it). Retries transient errors; raises
        DataError with one line otherwise. Never leaves a temp file behind on failure.
        """
        attempt = 0
        while True:
            try:
                return await self._to_temp_once(url, folder, label, size, sha, count, what_to_do)
            except _Retryable as exc:
                if attempt >= self.retries:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise DataError(f"{label}: {exc} from {url}{tries}; check the network or the mirror "
                                    "and re-run `python -m engine data fetch` (verified files are kept)"
                                    ) from None
                delay = min(10.0, 0.5 * 2 ** attempt) * (0.75 + random.random() / 2)
                self.bar.log(f"{label}: {exc}; retrying in {delay:.1f}s")
                await asyncio.sleep(delay)
                attempt += 1

    async def _to_temp_once(self, url: str, folder: Path, label: str, size: int | None,
                            sha: str | None, count: bool, what_to_do: str) -> Path:
        import aiohttp
        from yarl import URL

        fd, tmp_name = tempfile.mkstemp(prefix=f".{Path(label).name}.", suffix=".part", dir=folder)
        tmp = Path(tmp_name)
        out = os.fdopen(fd, "wb")
        counted = 0
        done = False
        try:
            try:
                async with self.session.get(URL(url, encoded=True)) as resp:
                    if resp.status != 200:
                        reason = f"HTTP {resp.status} {resp.reason or ''}".strip()
                        if resp.status in (408, 425, 429) or resp.status >= 500:
                            raise _Retryable(reason)
                        raise DataError(f"{label}: {reason} from {url}; {what_to_do}")
                    length = resp.content_length
                    if (size is not None and length is not None and length != size
                            and not resp.headers.get("Content-Encoding")):
                        raise DataError(f"{label}: size mismatch from {url}: expected {size} bytes, "
                                        f"the server announces {length}; {what_to_do}")
                    h = hashlib.sha256()
                    n = 0
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        n += len(chunk)
                        if size is not None and n > size:
                            raise DataError(f"{label}: size mismatch from {url}: expected {size} bytes, "
                                            f"got more; the download was discarded; {what_to_do}")
                        h.update(chunk)
                        out.write(chunk)
                        if count:
                            self.bar.update(len(chunk))
                            counted += len(chunk)
            except TimeoutError:  # aiohttp's ServerTimeoutError is one too: catch it first
                raise _Retryable(f"timed out (no data for {self.timeout:g}s)") from None
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                raise _Retryable(_describe(exc)) from None
            out.close()
            _check(label, url, size, sha, n, h.hexdigest(), what_to_do)
            done = True
            return tmp
        finally:
            if not out.closed:
                out.close()
            if not done:
                tmp.unlink(missing_ok=True)
                self.bar.update(-counted)

    # the kinds of sources ------------------------------------------------------------------------

    async def http_file(self, url: str, dest: Path, f: DataFile, what_to_do: str) -> None:
        target = dest / f.dataset / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = await self.to_temp(url, target.parent, f.key, f.size, f.sha256, True, what_to_do)
        os.replace(tmp, target)

    async def archive_members(self, url: str, dest: Path, files: Sequence[DataFile],
                              what_to_do: str) -> list[tuple[str, str]]:
        """Download the archive once, extract and verify each member; returns (key, error) failures."""
        first = files[0]
        folder = dest / first.dataset
        folder.mkdir(parents=True, exist_ok=True)
        label = f"{first.dataset}/{Path(urlsplit(url).path).name}"
        self.bar.log(f"{label}: downloading the archive that holds "
                     f"{', '.join(f.key for f in files)}")
        archive = await self.to_temp(url, folder, label, None, None, False, what_to_do)
        failures: list[tuple[str, str]] = []
        try:
            for f in files:
                try:
                    await asyncio.to_thread(_extract_member, archive, url, dest, f, what_to_do)
                    self.bar.update(f.size)
                except DataError as exc:
                    failures.append((f.key, str(exc)))
        finally:
            archive.unlink(missing_ok=True)
        return failures

    async def local_file(self, src: Path, dest: Path, f: DataFile, what_to_do: str) -> None:
        await asyncio.to_thread(_copy_local, src, dest, f, self.bar, what_to_do)


def _describe(exc: BaseException) -> str:
    import aiohttp

    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the transfer was cut short (connection closed before the end of the file)"
    text = str(exc).strip() or type(exc).__name__
    return f"network error ({text})"


def _check(label: str, src: str, size: int | None, sha: str | None, n: int, digest: str,
           what_to_do: str) -> None:
    if size is not None and n != size:
        raise DataError(f"{label}: size mismatch from {src}: expected {size} bytes, got {n}; "
                        f"the download was discarded; {what_to_do}")
    if sha is not None and digest != sha:
        raise DataError(f"{label}: sha256 mismatch from {src}: expected {sha}, got {digest}; "
                        f"the download was discarded; {what_to_do}")


def _atomic_write_from(stream: Any, target: Path, label: str, src: str, size: int, sha: str,
                       what_to_do: str, bar: _Bar | None) -> None:
    """Copy a binary stream into target via a verified temp file in target's folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    done = False
    counted = 0
    try:
        h = hashlib.sha256()
        n = 0
        with os.fdopen(fd, "wb") as out:
            for block in iter(lambda: stream.read(CHUNK), b""):
                n += len(block)
                if n > size:
                    raise DataError(f"{label}: size mismatch from {src}: expected {size} bytes, got more; "
                                    f"nothing was written; {what_to_do}")
                h.update(block)
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
                    counted += len(block)
        _check(label, src, size, sha, n, h.hexdigest(), what_to_do)
        os.replace(tmp_name, target)
        done = True
    finally:
        if not done:
            Path(tmp_name).unlink(missing_ok=True)
            if bar is not None:
                bar.update(-counted)


def _copy_local(src: Path, dest: Path, f: DataFile, bar: _Bar, what_to_do: str) -> None:
    try:
        stream = open(src, "rb")
    except FileNotFoundError:
        raise DataError(f"{f.key}: not found in the mirror at {src}; {what_to_do}") from None
    except OSError as exc:
        raise DataError(f"{f.key}: cannot read {src} ({exc.strerror}); {what_to_do}") from None
    with stream:
        _atomic_write_from(stream, dest / f.dataset / f.path, f.key, str(src), f.size, f.sha256,
                           what_to_do, bar)


def _extract_member(archive: Path, url: str, dest: Path, f: DataFile, what_to_do: str) -> None:
    assert f.member is not None
    src = f"{url} -> {f.member}"
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        head = archive.read_bytes()[:64]
        hint = " (it is a Git LFS pointer)" if head.startswith(b"version https://git-lfs") else ""
        raise DataError(f"{f.key}: {url} is not a zip archive{hint}; {what_to_do}") from None
    with zf:
        try:
            stream = zf.open(f.member)
        except KeyError:
            raise DataError(f"{f.key}: the archive {url} has no member {f.member}; {what_to_do}") from None
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
            raise DataError(f"{f.key}: cannot extract {f.member} from {url} ({exc}); {what_to_do}") from None
        with stream:
            _atomic_write_from(stream, dest / f.dataset / f.path, f.key, src, f.size, f.sha256,
                               what_to_do, None)


def _derive(dest: Path, ds: Dataset, f: DataFile) -> None:
    assert f.derive is not None
    _, build = DERIVERS[f.derive]
    data = build(dest / ds.name, ds)
    import io

    _atomic_write_from(io.BytesIO(data), dest / f.dataset / f.path, f.key,
                       f"the local build ({DERIVE_DOC.get(f.derive, f.derive)})", f.size, f.sha256,
                       "the builder and the pin disagree: fetch it from a mirror (--mirror)", None)


def _hint(f: DataFile, mirror: str | None, dest: Path) -> str:
    target = dest / f.dataset / f.path
    if mirror:
        return (f"fix the mirror (it must serve <mirror>/<dataset>/<path>, the layout of shared/trustmh) or "
                f"place the file at {target} by hand (sha256 {f.sha256})")
    return (f"the upstream copy changed or moved: use a mirror (--mirror) or place the file at {target} "
            f"by hand (sha256 {f.sha256})")


async def fetch(manifest: Manifest, dest: Path, *, only: Sequence[str] | None = None,
                mirror: str | None = None, force: bool = False, jobs: int = 4, timeout: float = 60.0,
                retries: int = 2, progress: bool = False, log: Log = lambda _m: None) -> FetchReport:
    """Fetch the selected datasets into dest; a report, never an exception for a per-file failure."""
    names = select_datasets(manifest, only, for_fetch=True)
    report = FetchReport(dest=dest)
    if mirror and not _is_http(mirror):
        root = _mirror_dir(mirror)
        if not root.is_dir():
            raise EngineError(f"--mirror {mirror}: {root} is not a directory; pass a folder laid out like "
                              "shared/trustmh, or an http(s):// / file:// URL")
    dest.mkdir(parents=True, exist_ok=True)

    todo: list[DataFile] = []
    for f in manifest.files(names):
        status = file_status(dest, f)
        if status == "ok" and not force:
            report.skipped.append(f.key)
            continue
        if status.startswith("differs"):
            log(f"{f.key}: present but {status}; fetching the pinned version")
        todo.append(f)

    direct: list[tuple[DataFile, str | Path]] = []
    archives: dict[str, list[DataFile]] = {}
    derived: list[DataFile] = []
    for f in todo:
        if mirror:
            direct.append((f, mirror_source(mirror, f)))
        elif f.mirror_only:
            report.needs_mirror.append((f.key, f.mirror_only))
        elif f.derive:
            derived.append(f)
        elif f.member:
            assert f.url is not None
            archives.setdefault(f.url, []).append(f)
        else:
            assert f.url is not None
            direct.append((f, f.url))

    try:
        await _run_fetch(dest, mirror, direct, archives, derived, manifest, report, jobs=jobs,
                         timeout=timeout, retries=retries, progress=progress, log=log)
    finally:
        _remove_empty_dirs(dest, names)
    order = {f.key: i for i, f in enumerate(manifest.files())}
    for lst in (report.fetched, report.derived, report.skipped):
        lst.sort(key=lambda k: order.get(k, 0))
    report.failed.sort(key=lambda kv: order.get(kv[0], 0))
    return report


async def _run_fetch(dest: Path, mirror: str | None, direct: list[tuple[DataFile, str | Path]],
                     archives: dict[str, list[DataFile]], derived: list[DataFile], manifest: Manifest,
                     report: FetchReport, *, jobs: int, timeout: float, retries: int, progress: bool,
                     log: Log) -> None:
    import aiohttp

    total = sum(f.size for f, _ in direct) + sum(f.size for fs in archives.values() for f in fs)
    bar = _Bar(total, progress, log)
    sem = asyncio.Semaphore(max(1, jobs))
    client_timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout,
                                           sock_read=timeout)
    headers = {"User-Agent": "trustmh-engine data fetch"}
    try:
        async with aiohttp.ClientSession(timeout=client_timeout, headers=headers) as session:
            fetcher = _Fetcher(session=session, bar=bar, retries=max(0, retries), timeout=timeout)

            async def one(f: DataFile, src: str | Path) -> None:
                async with sem:
                    try:
                        if isinstance(src, Path):
                            await fetcher.local_file(src, dest, f, _hint(f, mirror, dest))
                        else:
                            await fetcher.http_file(src, dest, f, _hint(f, mirror, dest))
                        report.fetched.append(f.key)
                    except DataError as exc:
                        report.failed.append((f.key, str(exc)))

            async def archive(url: str, files: list[DataFile]) -> None:
                async with sem:
                    try:
                        failures = await fetcher.archive_members(url, dest, files, _hint(files[0], None, dest))
                    except DataError as exc:
                        failures = [(f.key, str(exc)) for f in files]
                    bad = {k for k, _ in failures}
                    report.failed.extend(failures)
                    report.fetched.extend(f.key for f in files if f.key not in bad)

            await asyncio.gather(*(one(f, s) for f, s in direct),
                                 *(archive(u, fs) for u, fs in archives.items()))
    finally:
        bar.close()

    for f in derived:
        ds = manifest.datasets[f.dataset]
        inputs, _ = DERIVERS[f.derive or ""]
        not_ok = [i.key for i in inputs(ds) if file_status(dest, i) != "ok"]
        if not_ok:
            report.failed.append((f.key, f"{f.key}: not built because its input {not_ok[0]} is missing or "
                                         "unverified; fix that first and re-run"))
            continue
        try:
            await asyncio.to_thread(_derive, dest, ds, f)
            report.derived.append(f.key)
        except DataError as exc:
            report.failed.append((f.key, str(exc)))


def _remove_empty_dirs(dest: Path, names: Iterable[str]) -> None:
    """Drop dataset folders left empty by failed downloads (nothing half-written is kept)."""
    for name in names:
        folder = dest / name
        if not folder.is_dir():
            continue
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            try:
                sub.rmdir()
            except OSError:
                pass
        try:
            folder.rmdir()
        except OSError:
            pass


def fetch_sync(manifest: Manifest, dest: Path, **kwargs: Any) -> FetchReport:
    """fetch() in its own event loop (for callers outside asyncio)."""
    return asyncio.run(fetch(manifest, dest, **kwargs))


def select_datasets(manifest: Manifest, only: Sequence[str] | None, *, for_fetch: bool) -> list[str]:
    """Dataset names selected by --only (default: every fetchable one); unknown names are errors."""
    fetchable = [n for n, d in manifest.datasets.items() if not d.unavailable]
    if not only:
        return fetchable if for_fetch else list(manifest.datasets)
    wanted = [n.strip() for n in only if n.strip()]
    unknown = [n for n in wanted if n not in manifest.datasets]
    if unknown:
        raise EngineError(f"--only: unknown dataset(s) {', '.join(unknown)} (known: {', '.join(manifest.datasets)})")
    if for_fetch:
        gated = [n for n in wanted if manifest.datasets[n].unavailable]
        if gated:
            ds = manifest.datasets[gated[0]]
            raise EngineError(f"--only {gated[0]}: cannot be fetched: {ds.unavailable}; place "
                              f"{', '.join(ds.expected) or 'its files'} in <data dir>/{gated[0]}/ by hand")
    return list(dict.fromkeys(wanted))


# -- the command --------------------------------------------------------------------------------


def _config_data(path: str | None) -> Any:
    if not path:
        return None
    from engine.config import load_config

    return load_config(path).data


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


async def _until_signal(work: Any) -> tuple[Any, int]:
    """Runs `work` until it ends or SIGINT/SIGTERM arrives: (result, 0) or (None, signum). The
    handlers are the loop's own, so a fetch started with SIGINT ignored (a background job of a
    script) still stops on it, and SIGTERM cleans up the same way (no `.part` file left)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    got: list[int] = []

    def stop(signum: int) -> None:
        got.append(signum)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await task, 0
    except asyncio.CancelledError:
        if not got:
            raise
        return None, got[0]
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def cmd_data(args: argparse.Namespace, log: Log | None = None) -> int:
    """`python -m engine data fetch | list`."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    manifest = load_manifest(getattr(args, "manifest", None))
    cfg = _config_data(getattr(args, "config", None))
    dest = resolve_dest(args.to, cfg.cache if cfg else None)
    action = getattr(args, "data_command", None)
    if action == "list":
        return _cmd_list(manifest, dest, _split(args.only))
    if action != "fetch":
        raise EngineError("data: give an action: `data fetch` or `data list`")
    mirror = resolve_mirror(args.mirror, cfg.mirror if cfg else None)
    if args.jobs < 1 or args.retries < 0 or args.timeout <= 0:
        raise EngineError("data fetch: --jobs must be >= 1, --retries >= 0 and --timeout > 0")
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    where = f"mirror {mirror}" if mirror else "upstream URLs"
    log(f"data: fetching into {dest} from {where}")
    report, signum = asyncio.run(_until_signal(fetch(
        manifest, dest, only=_split(args.only), mirror=mirror, force=args.force, jobs=args.jobs,
        timeout=args.timeout, retries=args.retries, progress=progress, log=log)))
    if report is None:
        log(f"data fetch: stopped by {signal.Signals(signum).name}; no partial file was kept "
            "(verified files stay); rerun to continue")
        return 128 + signum
    n_ok = len(report.fetched) + len(report.derived) + len(report.skipped)
    print(f"data: {len(report.fetched)} downloaded, {len(report.derived)} built, "
          f"{len(report.skipped)} already verified, {len(report.failed)} failed"
          + (f", {len(report.needs_mirror)} need a mirror" if report.needs_mirror else "")
          + f" ({n_ok} files verified in {dest.resolve()})")
    if report.failed:
        key, msg = report.failed[0]
        more = [k for k, _ in report.failed[1:]]
        if more:
            msg += f" (also failed: {', '.join(more[:5])}{' ...' if len(more) > 5 else ''})"
        raise DataError(msg)
    if report.needs_mirror:
        datasets = sorted({k.split('/', 1)[0] for k, _ in report.needs_mirror})
        reason = report.needs_mirror[0][1]
        raise DataError(f"{', '.join(datasets)}: no public source for the pinned bytes ({reason}); "
                        f"pass --mirror URL (or set [data] mirror / $TRUSTMH_DATA_MIRROR), or place the "
                        f"files under {dest.resolve()}/<dataset>/ by hand (`data list` shows the sha256 pins)")
    print(f"use: python -m engine run --data-dir {dest.resolve()}   (or [data] dir = \"{dest.resolve()}\")")
    return 0


def _cmd_list(manifest: Manifest, dest: Path, only: list[str] | None) -> int:
    names = select_datasets(manifest, only, for_fetch=False)
    print(f"data dir: {dest.resolve()}" + ("" if dest.is_dir() else " (absent)"))
    for name in names:
        ds = manifest.datasets[name]
        if ds.unavailable:
            present = [e for e in ds.expected if (dest / name / e).is_file()]
            state = (f"present (not pinned): {', '.join(present)}" if present else "absent")
            print(f"\n{name}: NOT FETCHABLE - {ds.unavailable}")
            print(f"  {state}; expected {', '.join(ds.expected) or '-'} in {dest.resolve() / name}")
            continue
        statuses = [(f, file_status(dest, f)) for f in ds.files]
        n_ok = sum(1 for _, s in statuses if s == "ok")
        total = sum(f.size for f in ds.files)
        n = len(ds.files)
        print(f"\n{name}: {n} file{'s' if n != 1 else ''}, {_fmt_size(total)}, {n_ok}/{n} verified"
              f" - {ds.license}; {ds.source}")
        for f, status in statuses:
            print(f"  {status:8} {_fmt_size(f.size):>10}  {f.path}  <- {f.source_text()}")
    return 0
