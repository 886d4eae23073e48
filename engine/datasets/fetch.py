"""Fetching the pinned files: streamed, verified, moved into place only when they match.

Every file is streamed into a temp file next to its destination while its sha256 is computed, and
moved into place (os.replace) only once size and sha256 match the pin; on a mismatch, an error or
a cancellation the temp file is deleted, so a destination never holds a half-written or unverified
file. Files already present with the right sha256 are skipped (a re-run resumes; `force`
re-downloads). Transient failures (connection, timeout, 5xx/429) are retried with backoff.

Why not pooch (hash-pinned downloads with a cache and mirrors): it downloads with synchronous
`requests` and checks the hash after the whole file is written, so in a thread it can be neither
cancelled by SIGINT/SIGTERM mid-transfer (the interrupt leaves no `.part` file and exits at once)
nor stopped early on an oversized body; its downloaders know http/ftp/sftp/doi but not a plain
local directory or file:// mirror (air-gapped clusters); it extracts whole archives without a pin
per member; and it would add requests and platformdirs for the ~150 lines it could replace.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import random
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlsplit

import aiohttp
import msgspec
from yarl import URL

from engine.core.errors import ConfigError, DataError
from engine.core.prompts import PROMPTS_DIR
from engine.datasets import prompts as official
from engine.datasets.derive import BUILDERS
from engine.datasets.manifest import (
    MANIFEST_PATH,
    DataFile,
    Manifest,
    file_status,
    is_http,
    mirror_dir,
    mirror_source,
    select_datasets,
)

__all__ = ["FetchOptions", "FetchProgress", "FetchReport", "fetch"]

CHUNK = 1 << 16


class FetchOptions(msgspec.Struct, frozen=True, kw_only=True):
    only: tuple[str, ...] | None = None  # dataset names (default: every fetchable one)
    mirror: str | None = None  # replaces every source with <mirror>/<dataset>/<path>
    force: bool = False  # re-download files already present and verified
    jobs: int = 4  # transfers at once
    timeout: float = 60.0  # seconds without data before a try fails
    retries: int = 2  # further tries after a transient failure
    # The authors' prompt templates into <dest>/official-prompts/ (engine/datasets/prompts.py);
    # None: with the engine's own data manifest only (a custom --manifest is a data-only override).
    prompts: bool | None = None


class FetchProgress(Protocol):
    """Where a fetch reports: bytes moved (negative when a failed transfer is taken back) and lines."""

    def start(self, total: int) -> None: ...
    def update(self, n: int) -> None: ...
    def log(self, msg: str) -> None: ...
    def close(self) -> None: ...


class Quiet:
    """A FetchProgress that reports nothing."""

    def start(self, total: int) -> None:
        pass

    def update(self, n: int) -> None:
        pass

    def log(self, msg: str) -> None:
        pass

    def close(self) -> None:
        pass


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


class _Transient(DataError):
    """A transient failure (connection, timeout, 5xx/429): retried with backoff, never raised past it."""


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


@dataclass
class _Plan:
    direct: list[tuple[DataFile, str | Path]] = field(default_factory=list)  # (file, URL or local path)
    archives: dict[str, list[DataFile]] = field(default_factory=dict)  # archive URL -> its members
    derived: list[DataFile] = field(default_factory=list)

    def total(self) -> int:
        return sum(f.size for f, _ in self.direct) + sum(f.size for fs in self.archives.values() for f in fs)


async def fetch(manifest: Manifest, dest: Path, opts: FetchOptions = FetchOptions(),
                progress: FetchProgress | None = None) -> FetchReport:
    """Fetch the selected datasets into dest; a report, never an exception for a per-file failure."""
    progress = progress or Quiet()
    only = [n.strip() for n in opts.only or () if n.strip()]
    with_prompts = (opts.prompts if opts.prompts is not None else Path(manifest.path) == MANIFEST_PATH) and (
        not only or PROMPTS_DIR in only)
    rest = [n for n in only if n != PROMPTS_DIR]
    names = [] if only and not rest else select_datasets(manifest, rest or None, for_fetch=True)
    report = FetchReport(dest=dest)
    _prepare(dest, opts.mirror)
    plan = _plan(manifest, names, dest, opts, report, progress)
    try:
        await _transfer(plan, dest, opts, report, progress, prompts=with_prompts)
        await _build_derived(plan.derived, manifest, dest, report)
    finally:
        _remove_empty_dirs(dest, names)
    order = {f.key: i for i, f in enumerate(manifest.files())}
    for lst in (report.fetched, report.derived, report.skipped):
        lst.sort(key=lambda k: order.get(k, len(order)))
    report.failed.sort(key=lambda kv: order.get(kv[0], len(order)))
    return report


def _prepare(dest: Path, mirror: str | None) -> None:
    """A local mirror must be a folder before anything is fetched; dest is created."""
    if mirror and not is_http(mirror):
        root = mirror_dir(mirror)
        if not root.is_dir():
            raise ConfigError(f"--mirror {mirror}: {root} is not a directory; pass a folder laid out like "
                              "shared/trustmh, or an http(s):// / file:// URL")
    dest.mkdir(parents=True, exist_ok=True)


def _plan(manifest: Manifest, names: Sequence[str], dest: Path, opts: FetchOptions, report: FetchReport,
          progress: FetchProgress) -> _Plan:
    """What each missing file needs: a direct transfer, an archive, a local build, or a mirror."""
    plan = _Plan()
    for f in manifest.files(names):
        status = file_status(dest, f)
        if status == "ok" and not opts.force:
            report.skipped.append(f.key)
            continue
        if status.startswith("differs"):
            progress.log(f"{f.key}: present but {status}; fetching the pinned version")
        if opts.mirror:
            plan.direct.append((f, mirror_source(opts.mirror, f)))
        elif f.mirror_only:
            report.needs_mirror.append((f.key, f.mirror_only))
        elif f.derive:
            plan.derived.append(f)
        elif f.member and f.url:
            plan.archives.setdefault(f.url, []).append(f)
        elif f.url:
            plan.direct.append((f, f.url))
    return plan


async def _transfer(plan: _Plan, dest: Path, opts: FetchOptions, report: FetchReport,
                    progress: FetchProgress, *, prompts: bool = False) -> None:
    """The direct files and archives, `opts.jobs` at a time, with one byte count over all of them."""
    progress.start(plan.total())
    sem = asyncio.Semaphore(max(1, opts.jobs))
    t = opts.timeout
    client_timeout = aiohttp.ClientTimeout(total=None, connect=t, sock_connect=t, sock_read=t)
    headers = {"User-Agent": "trustmh-engine data fetch"}
    try:
        async with aiohttp.ClientSession(timeout=client_timeout, headers=headers) as session:
            fetcher = _Fetcher(session=session, progress=progress, retries=max(0, opts.retries), timeout=t)

            async def one(f: DataFile, src: str | Path) -> None:
                async with sem:
                    try:
                        if isinstance(src, Path):
                            await fetcher.local_file(src, dest, f, _hint(f, opts.mirror, dest))
                        else:
                            await fetcher.http_file(src, dest, f, _hint(f, opts.mirror, dest))
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

            await asyncio.gather(*(one(f, s) for f, s in plan.direct),
                                 *(archive(u, fs) for u, fs in plan.archives.items()))
            if prompts:
                await _fetch_prompts(fetcher, dest, opts, report)
    finally:
        progress.close()


async def _fetch_prompts(fetcher: _Fetcher, dest: Path, opts: FetchOptions, report: FetchReport) -> None:
    """<dest>/official-prompts/: each template pinned by sha256, taken from a mirror laid out like
    shared/trustmh (<mirror>/official-prompts/<file>) or extracted from the authors' archives (a
    local mirror folder holding them, else their pinned URLs); nothing lands unverified."""
    pm = official.load_manifest()
    folder = dest / PROMPTS_DIR
    if not opts.force and all(official.template_status(folder, t) == "ok" for t in pm.template) and (
            folder / "manifest.json").is_file():
        report.skipped.append(PROMPTS_DIR)
        return
    tmp = Path(tempfile.mkdtemp(prefix=".official-prompts.", dir=dest))
    try:
        work = tmp / PROMPTS_DIR
        work.mkdir()
        if not await _prompts_from_mirror(fetcher, opts.mirror, pm, work):
            archives = {name: await _archive_copy(fetcher, opts.mirror, name, a, tmp)
                        for name, a in pm.archives.items()}
            await asyncio.to_thread(official.extract, archives, tmp, pm)
        official.write_index(work, pm)
        official.check_pins(work, pm)
        folder.mkdir(parents=True, exist_ok=True)
        for f in sorted(work.iterdir()):
            os.replace(f, folder / f.name)
        report.fetched.append(PROMPTS_DIR)
    except DataError as exc:
        report.failed.append((PROMPTS_DIR, str(exc)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def _prompts_from_mirror(fetcher: _Fetcher, mirror: str | None, pm: official.PromptsManifest,
                               work: Path) -> bool:
    """Copies the templates from <mirror>/official-prompts/; False when the mirror has no such
    folder (a local mirror that holds the archives instead, or no mirror)."""
    if not mirror:
        return False
    hint = "fix the mirror's official-prompts/ folder, or put the authors' archives in the mirror"
    if not is_http(mirror):
        src = mirror_dir(mirror) / PROMPTS_DIR
        if not src.is_dir():
            return False
        for t in pm.template:
            if not (src / t.file).is_file():
                raise DataError(f"{PROMPTS_DIR}/{t.file}: not in the mirror at {src}; {hint}")
            shutil.copyfile(src / t.file, work / t.file)
        return True
    for t in pm.template:
        url = f"{mirror.rstrip('/')}/{PROMPTS_DIR}/{quote(t.file, safe='')}"
        part = await fetcher.to_temp(url, work, f"{PROMPTS_DIR}/{t.file}", (t.size, t.sha256), hint)
        os.replace(part, work / t.file)
    return True


async def _archive_copy(fetcher: _Fetcher, mirror: str | None, name: str, a: official.Archive, tmp: Path) -> Path:
    """One authors' archive, verified against its pin: from a local mirror folder holding it
    (<mirror>/<name>), else downloaded from its pinned URL."""
    if mirror and not is_http(mirror) and (mirror_dir(mirror) / name).is_file():
        src = mirror_dir(mirror) / name
        data = src.read_bytes()
        _check(name, str(src), (a.size, a.sha256), len(data), hashlib.sha256(data).hexdigest(),
               "the archive in the mirror is not the pinned one")
        return src
    return await fetcher.to_temp(a.url, tmp, name, (a.size, a.sha256),
                                 "the authors' archive moved or changed: use a mirror (--mirror)")


async def _build_derived(derived: Sequence[DataFile], manifest: Manifest, dest: Path, report: FetchReport) -> None:
    for f in derived:
        ds = manifest.datasets[f.dataset]
        builder = BUILDERS[f.derive or ""]
        by_path = {i.path: i for i in ds.files}
        inputs = builder.inputs(list(by_path))
        not_ok = [by_path[p].key for p in inputs if file_status(dest, by_path[p]) != "ok"]
        if not_ok:
            report.failed.append((f.key, f"{f.key}: not built because its input {not_ok[0]} is missing or "
                                         "unverified; fix that first and re-run"))
            continue
        try:
            await asyncio.to_thread(_derive, dest, f, inputs)
            report.derived.append(f.key)
        except DataError as exc:
            report.failed.append((f.key, str(exc)))


class _Fetcher:
    def __init__(self, *, session: aiohttp.ClientSession, progress: FetchProgress, retries: int,
                 timeout: float) -> None:
        self.session = session
        self.progress = progress
        self.retries = retries
        self.timeout = timeout

    async def to_temp(self, url: str, folder: Path, label: str, pin: tuple[int, str] | None, what_to_do: str) -> Path:
        """Stream `url` into a temp file in `folder`, checking the (size, sha256) pin on the way when
        given (and then counting the bytes in the progress).

        Returns the temp file (the caller moves or deletes it). Retries transient errors; raises
        DataError with one line otherwise. Never leaves a temp file behind on failure.
        """
        attempt = 0
        while True:
            try:
                return await self._to_temp_once(url, folder, label, pin, what_to_do)
            except _Transient as exc:
                if attempt >= self.retries:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise DataError(f"{label}: {exc} from {url}{tries}; check the network or the mirror "
                                    "and re-run `python -m engine data fetch` (verified files are kept)"
                                    ) from None
                delay = min(10.0, 0.5 * 2 ** attempt) * (0.75 + random.random() / 2)
                self.progress.log(f"{label}: {exc}; retrying in {delay:.1f}s")
                await asyncio.sleep(delay)
                attempt += 1

    async def _to_temp_once(self, url: str, folder: Path, label: str, pin: tuple[int, str] | None,
                            what_to_do: str) -> Path:
        size = pin[0] if pin else None
        fd, tmp_name = tempfile.mkstemp(prefix=f".{Path(label).name}.", suffix=".part", dir=folder)
        tmp = Path(tmp_name)
        out = os.fdopen(fd, "wb")
        counted = 0
        done = False
        try:
            try:
                async with self.session.get(URL(url, encoded=True)) as resp:
                    _check_response(resp, label, url, size, what_to_do)
                    h = hashlib.sha256()
                    n = 0
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        n += len(chunk)
                        if size is not None and n > size:
                            raise DataError(f"{label}: size mismatch from {url}: expected {size} bytes, "
                                            f"got more; the download was discarded; {what_to_do}")
                        h.update(chunk)
                        out.write(chunk)
                        if pin:
                            self.progress.update(len(chunk))
                            counted += len(chunk)
            except TimeoutError:  # aiohttp's ServerTimeoutError is one too: catch it first
                raise _Transient(f"timed out (no data for {self.timeout:g}s)") from None
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                raise _Transient(_describe(exc)) from None
            out.close()
            _check(label, url, pin, n, h.hexdigest(), what_to_do)
            done = True
            return tmp
        finally:
            if not out.closed:
                out.close()
            if not done:
                # Inline, not in a thread: an await here could be cancelled and leave the .part file.
                tmp.unlink(missing_ok=True)  # noqa: ASYNC240
                self.progress.update(-counted)

    async def http_file(self, url: str, dest: Path, f: DataFile, what_to_do: str) -> None:
        target = dest / f.dataset / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = await self.to_temp(url, target.parent, f.key, (f.size, f.sha256), what_to_do)
        os.replace(tmp, target)

    async def archive_members(self, url: str, dest: Path, files: Sequence[DataFile],
                              what_to_do: str) -> list[tuple[str, str]]:
        """Download the archive once, extract and verify each member; returns (key, error) failures."""
        first = files[0]
        folder = dest / first.dataset
        folder.mkdir(parents=True, exist_ok=True)
        label = f"{first.dataset}/{Path(urlsplit(url).path).name}"
        self.progress.log(f"{label}: downloading the archive that holds {', '.join(f.key for f in files)}")
        archive = await self.to_temp(url, folder, label, None, what_to_do)
        failures: list[tuple[str, str]] = []
        try:
            for f in files:
                try:
                    await asyncio.to_thread(_extract_member, archive, url, dest, f, what_to_do)
                    self.progress.update(f.size)
                except DataError as exc:
                    failures.append((f.key, str(exc)))
        finally:
            archive.unlink(missing_ok=True)
        return failures

    async def local_file(self, src: Path, dest: Path, f: DataFile, what_to_do: str) -> None:
        await asyncio.to_thread(_copy_local, src, dest, f, self.progress, what_to_do)


def _check_response(resp: aiohttp.ClientResponse, label: str, url: str, size: int | None, what_to_do: str) -> None:
    if resp.status != 200:
        reason = f"HTTP {resp.status} {resp.reason or ''}".strip()
        if resp.status in (408, 425, 429) or resp.status >= 500:
            raise _Transient(reason)
        raise DataError(f"{label}: {reason} from {url}; {what_to_do}")
    length = resp.content_length
    if size is not None and length is not None and length != size and not resp.headers.get("Content-Encoding"):
        raise DataError(f"{label}: size mismatch from {url}: expected {size} bytes, "
                        f"the server announces {length}; {what_to_do}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the transfer was cut short (connection closed before the end of the file)"
    text = str(exc).strip() or type(exc).__name__
    return f"network error ({text})"


def _check(label: str, src: str, pin: tuple[int, str] | None, n: int, digest: str, what_to_do: str) -> None:
    if pin is None:
        return
    size, sha = pin
    if n != size:
        raise DataError(f"{label}: size mismatch from {src}: expected {size} bytes, got {n}; "
                        f"the download was discarded; {what_to_do}")
    if digest != sha:
        raise DataError(f"{label}: sha256 mismatch from {src}: expected {sha}, got {digest}; "
                        f"the download was discarded; {what_to_do}")


def _atomic_write_from(stream: _Readable, f: DataFile, dest: Path, src: str, what_to_do: str,
                       progress: FetchProgress | None) -> None:
    """Copy a binary stream into f's place under dest via a temp file verified against f's pin."""
    target = dest / f.dataset / f.path
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
                if n > f.size:
                    raise DataError(f"{f.key}: size mismatch from {src}: expected {f.size} bytes, got more; "
                                    f"nothing was written; {what_to_do}")
                h.update(block)
                out.write(block)
                if progress is not None:
                    progress.update(len(block))
                    counted += len(block)
        _check(f.key, src, (f.size, f.sha256), n, h.hexdigest(), what_to_do)
        os.replace(tmp_name, target)
        done = True
    finally:
        if not done:
            Path(tmp_name).unlink(missing_ok=True)
            if progress is not None:
                progress.update(-counted)


def _copy_local(src: Path, dest: Path, f: DataFile, progress: FetchProgress, what_to_do: str) -> None:
    try:
        stream = open(src, "rb")
    except FileNotFoundError:
        raise DataError(f"{f.key}: not found in the mirror at {src}; {what_to_do}") from None
    except OSError as exc:
        raise DataError(f"{f.key}: cannot read {src} ({exc.strerror}); {what_to_do}") from None
    with stream:
        _atomic_write_from(stream, f, dest, str(src), what_to_do, progress)


def _extract_member(archive: Path, url: str, dest: Path, f: DataFile, what_to_do: str) -> None:
    member = f.member or ""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        head = archive.read_bytes()[:64]
        hint = " (it is a Git LFS pointer)" if head.startswith(b"version https://git-lfs") else ""
        raise DataError(f"{f.key}: {url} is not a zip archive{hint}; {what_to_do}") from None
    with zf:
        try:
            stream = zf.open(member)
        except KeyError:
            raise DataError(f"{f.key}: the archive {url} has no member {member}; {what_to_do}") from None
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
            raise DataError(f"{f.key}: cannot extract {member} from {url} ({exc}); {what_to_do}") from None
        with stream:
            _atomic_write_from(stream, f, dest, f"{url} -> {member}", what_to_do, None)


def _derive(dest: Path, f: DataFile, inputs: Sequence[str]) -> None:
    builder = BUILDERS[f.derive or ""]
    data = builder.build(dest / f.dataset, inputs)
    _atomic_write_from(io.BytesIO(data), f, dest, f"the local build ({builder.doc})",
                       "the builder and the pin disagree: fetch it from a mirror (--mirror)", None)


def _hint(f: DataFile, mirror: str | None, dest: Path) -> str:
    target = dest / f.dataset / f.path
    if mirror:
        return (f"fix the mirror (it must serve <mirror>/<dataset>/<path>, the layout of shared/trustmh) or "
                f"place the file at {target} by hand (sha256 {f.sha256})")
    return (f"the upstream copy changed or moved: use a mirror (--mirror) or place the file at {target} "
            f"by hand (sha256 {f.sha256})")


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
