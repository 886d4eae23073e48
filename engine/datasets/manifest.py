"""The manifest of the official data, where fetched data goes, and whether a file there is the pinned one.

`engine/data_manifest.toml` names every official file: its dataset folder and path (the layout of
shared/trustmh, so a fetched folder is a valid `--data-dir`), its size and sha256, and where the
exact bytes come from (an upstream URL at a pinned commit, a member of a published archive, a file
built locally from other pinned files, or nowhere public: `mirror_only`). A mirror (`--mirror`,
`[data] mirror`, `$TRUSTMH_DATA_MIRROR`) replaces every source with `<mirror>/<dataset>/<path>`:
an http(s) URL, a `file://` URL or a plain local directory (air-gapped clusters).

Only stdlib imports: `data list` reads this without loading the network stack.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import msgspec

from engine.core.errors import ConfigError, DataError
from engine.core.paths import cache_root
from engine.datasets.derive import BUILDERS

__all__ = [
    "MANIFEST_PATH", "DataFile", "Dataset", "Manifest", "load_manifest", "select_datasets",
    "default_data_dir", "resolve_dest", "resolve_mirror", "is_http", "mirror_dir", "mirror_source",
    "file_status",
]

MANIFEST_PATH = Path(__file__).resolve().parent.parent / "data_manifest.toml"


class DataFile(msgspec.Struct, frozen=True, kw_only=True):
    dataset: str
    path: str  # inside the dataset folder, "/"-separated
    size: int
    sha256: str
    url: str | None = None  # upstream URL of the exact bytes, or of the archive holding `member`
    member: str | None = None  # path inside the archive at `url`
    derive: str | None = None  # name of a builder in derive.BUILDERS
    mirror_only: str | None = None  # why no public URL serves these bytes
    note: str = ""

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.path}"

    def source_text(self) -> str:
        if self.mirror_only:
            return f"mirror only ({self.mirror_only})"
        if self.derive:
            builder = BUILDERS.get(self.derive)
            return f"derived locally ({builder.doc if builder else self.derive})"
        if self.member:
            return f"{self.url} -> {self.member}"
        return self.url or "-"


class Dataset(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    source: str = ""
    license: str = ""
    files: tuple[DataFile, ...] = ()
    unavailable: str | None = None  # no fetchable files: why, and where to get them
    expected: tuple[str, ...] = ()  # for unavailable datasets: the files a loader reads


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
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


def _opt_str(table: Mapping[str, object], key: str) -> str | None:
    v = table.get(key)
    return None if v is None else str(v)


def load_manifest(path: str | os.PathLike[str] | None = None) -> Manifest:
    """Parse and check a manifest TOML (default: the shipped engine/data_manifest.toml)."""
    p = Path(path) if path is not None else MANIFEST_PATH
    try:
        raw = tomllib.loads(p.read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read data manifest {p}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"data manifest {p}: not valid TOML: {exc}") from None
    table = raw.get("datasets")
    if not isinstance(table, dict) or set(raw) != {"datasets"}:
        raise ConfigError(f"data manifest {p}: expected only [datasets.<name>] tables")
    datasets: dict[str, Dataset] = {}
    for name, body in table.items():
        try:
            datasets[name] = _dataset(name, body)
        except ValueError as exc:
            raise ConfigError(f"data manifest {p}: {exc}") from None
    return Manifest(datasets=datasets, path=str(p))


def _dataset(name: str, body: object) -> Dataset:
    """One [datasets.<name>] table, checked; a ValueError names what is wrong."""
    if not _safe_rel(name) or "/" in name or not isinstance(body, dict):
        raise ValueError(f"bad dataset name or table {name!r}")
    unknown = set(body) - _DATASET_KEYS
    if unknown:
        raise ValueError(f"datasets.{name}: unknown key(s) {', '.join(sorted(unknown))}")
    files: list[DataFile] = []
    seen: set[str] = set()
    for i, fb in enumerate(body.get("files", [])):
        f = _data_file(name, f"datasets.{name}.files[{i}]", fb, seen)
        seen.add(f.path)
        files.append(f)
    unavailable = _opt_str(body, "unavailable")
    if unavailable and files:
        raise ValueError(f"datasets.{name}: an unavailable dataset lists no files")
    if not unavailable and not files:
        raise ValueError(f"datasets.{name}: no files (and no `unavailable` reason)")
    return Dataset(name=name, source=str(body.get("source", "")), license=str(body.get("license", "")),
                   files=tuple(files), unavailable=unavailable,
                   expected=tuple(str(e) for e in body.get("expected", ())))


def _data_file(dataset: str, where: str, fb: object, seen: set[str]) -> DataFile:
    if not isinstance(fb, dict):
        raise ValueError(f"{where}: expected a table")
    unknown = set(fb) - _FILE_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    try:
        f = DataFile(dataset=dataset, path=str(fb["path"]), size=int(fb["size"]),
                     sha256=str(fb["sha256"]).lower(), url=_opt_str(fb, "url"), member=_opt_str(fb, "member"),
                     derive=_opt_str(fb, "derive"), mirror_only=_opt_str(fb, "mirror_only"),
                     note=str(fb.get("note", "")))
    except KeyError as exc:
        raise ValueError(f"{where}: missing key {exc.args[0]}") from None
    if not _safe_rel(f.path) or f.path in seen:
        raise ValueError(f"{where}: bad or duplicate path {f.path!r}")
    if len(f.sha256) != 64 or any(c not in "0123456789abcdef" for c in f.sha256) or f.size < 0:
        raise ValueError(f"{where} ({f.path}): sha256 must be 64 hex digits and size >= 0")
    sources = [bool(f.url), bool(f.derive), bool(f.mirror_only)]
    if sum(sources) != 1 or (f.member and not f.url):
        raise ValueError(f"{where} ({f.path}): give exactly one of url (optionally with member), derive, mirror_only")
    if f.derive and f.derive not in BUILDERS:
        raise ValueError(f"{where} ({f.path}): unknown builder derive = {f.derive!r} (known: {', '.join(BUILDERS)})")
    return f


def select_datasets(manifest: Manifest, only: Sequence[str] | None, *, for_fetch: bool) -> list[str]:
    """Dataset names selected by --only (default: every fetchable one); unknown names are errors."""
    fetchable = [n for n, d in manifest.datasets.items() if not d.unavailable]
    if not only:
        return fetchable if for_fetch else list(manifest.datasets)
    wanted = [n.strip() for n in only if n.strip()]
    unknown = [n for n in wanted if n not in manifest.datasets]
    if unknown:
        raise ConfigError(f"--only: unknown dataset(s) {', '.join(unknown)} (known: {', '.join(manifest.datasets)})")
    if for_fetch:
        gated = [n for n in wanted if manifest.datasets[n].unavailable]
        if gated:
            ds = manifest.datasets[gated[0]]
            raise DataError(f"--only {gated[0]}: cannot be fetched: {ds.unavailable}; place "
                            f"{', '.join(ds.expected) or 'its files'} in <data dir>/{gated[0]}/ by hand")
    return list(dict.fromkeys(wanted))


# -- locations ----------------------------------------------------------------------------------


def default_data_dir() -> Path:
    """$TRUSTMH_CACHE/data, else <XDG cache or ~/.cache>/trustmh-engine/data."""
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


def is_http(s: str) -> bool:
    return s.lower().startswith(("http://", "https://"))


def mirror_source(mirror: str, f: DataFile) -> str | Path:
    """Where a mirror serves a file: <mirror>/<dataset>/<path> (URL, or a local Path)."""
    if is_http(mirror):
        segs = [f.dataset, *f.path.split("/")]
        return mirror.rstrip("/") + "/" + "/".join(quote(s, safe="") for s in segs)
    return mirror_dir(mirror) / f.dataset / f.path


def mirror_dir(mirror: str) -> Path:
    """The local folder of a file:// or plain-path mirror."""
    if mirror.lower().startswith("file://"):
        return Path(unquote(urlsplit(mirror).path))
    if "://" in mirror:
        raise ConfigError(f"--mirror {mirror}: unsupported scheme; use an http(s):// or file:// URL "
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
