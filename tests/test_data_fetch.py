"""`python -m engine data fetch | list` against a local mirror of the official data.

The official data is never copied into the repository: a small threaded HTTP server on 127.0.0.1
serves `<repo>/../shared/trustmh` (or $TRUSTMH_DATA), with per-path overrides to serve corrupted
bytes, errors, hangs or transient failures. The engine's CLI runs in this process
(tests/conftest.run_cli: the same argv, working directory and environment), and as a real
subprocess where the process itself is under test (a signal mid-download). Tests that need the
official data skip with a reason where it is absent.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from engine.datasets import manifest as data_mod
from engine.datasets.prompts import load_manifest as load_prompts_manifest
from engine.options import resolve
from tests.conftest import run_cli

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
SHARED = Path(os.environ.get("TRUSTMH_DATA") or REPO.parent / "shared" / "trustmh")
MANIFEST = data_mod.load_manifest()
PROMPTS = load_prompts_manifest()
FETCHABLE = [n for n, d in MANIFEST.datasets.items() if not d.unavailable]

needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"official data not found at {SHARED} (set TRUSTMH_DATA to its folder)")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- a static mirror with fault injection -------------------------------------------------------

Override = int | bytes | Callable[[BaseHTTPRequestHandler], None]


class Mirror:
    """Serves root/<path>; overrides[path] = an HTTP status, replacement bytes, or a handler."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.overrides: dict[str, Override] = {}
        self.requests: list[str] = []
        self._lock = threading.Lock()
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                rel = unquote(urlsplit(self.path).path).lstrip("/")
                with mirror._lock:
                    mirror.requests.append(rel)
                o = mirror.overrides.get(rel)
                if isinstance(o, int):
                    self.send_error(o)
                    return
                if callable(o):
                    o(self)
                    return
                body = o
                if body is None:
                    f = mirror.root / rel
                    if ".." in Path(rel).parts or not f.is_file():
                        self.send_error(404)
                        return
                    body = f.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> Mirror:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    m = Mirror(SHARED).start()
    try:
        yield m
    finally:
        m.stop()


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m engine ARGS` in this process (run_cli), with no mirror from the environment and a
    cache folder that does not exist unless `env` says otherwise."""
    e: dict[str, str | None] = {"TRUSTMH_DATA_MIRROR": None,
                                "TRUSTMH_CACHE": str(Path(os.environ.get("PYTEST_TMP_CACHE", "/nonexistent-trustmh-cache")))}
    e.update(env or {})
    res = run_cli(*args, env=e)
    return subprocess.CompletedProcess(["python", "-m", "engine", *args], res.rc, res.stdout, res.stderr)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single `error:` line on stderr (and it is the last line)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert lines[-1] == errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    return errors[0]


def leftovers(dest: Path) -> list[Path]:
    return [p for p in dest.rglob("*") if p.name.endswith(".part") or p.name.startswith(".")]


def assert_verified(dest: Path, datasets: list[str]) -> None:
    for f in MANIFEST.files(datasets):
        path = dest / f.dataset / f.path
        assert path.is_file(), path
        assert sha256(path) == f.sha256 == sha256(SHARED / f.dataset / f.path), f.key


# -- the manifest -------------------------------------------------------------------------------


@needs_shared
def test_manifest_pins_every_official_file_of_shared() -> None:
    pinned = {f.key: f for f in MANIFEST.files()}
    # official-prompts/ holds the authors' prompt templates, extracted from their code archives rather
    # than downloaded as data files: not part of the dataset manifest.
    on_disk = {p.relative_to(SHARED).as_posix() for p in SHARED.rglob("*")
               if p.is_file() and p.name not in ("PROVENANCE.md", "README.md")
               and p.relative_to(SHARED).parts[0] != "official-prompts"}
    assert set(pinned) == on_disk
    for key, f in pinned.items():
        b = (SHARED / key).read_bytes()
        assert (len(b), hashlib.sha256(b).hexdigest()) == (f.size, f.sha256), key


def test_manifest_sources_are_public_urls_or_explained() -> None:
    for f in MANIFEST.files():
        if f.url:
            assert f.url.startswith("https://"), f.key
            assert "/raw/" in f.url or f.url.startswith("https://raw.githubusercontent.com/"), f.key
            # pinned to a full commit, never a branch
            assert any(len(seg) == 40 and all(c in "0123456789abcdef" for c in seg)
                       for seg in f.url.split("/")), f.key
        else:
            assert f.derive or f.mirror_only, f.key
    for name, ds in MANIFEST.datasets.items():
        assert ds.files or (ds.unavailable and ds.expected), name


def test_manifest_covers_every_official_source_of_the_registry() -> None:
    from pillars import registry

    for sub in registry.all_subtasks():
        if sub.official is None:
            continue
        ds = MANIFEST.datasets.get(sub.official.dataset)
        assert ds is not None, f"{sub.key}: dataset {sub.official.dataset} not in the data manifest"
        have = {f.path for f in ds.files} | set(ds.expected)
        assert set(sub.official.files) <= have, sub.key


def test_manifest_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "m.toml"
    bad.write_text('[datasets.x]\nsource = "s"\n[[datasets.x.files]]\npath = "../a"\nsize = 1\n'
                   f'sha256 = "{"0" * 64}"\nurl = "https://example.invalid/a"\n')
    proc = run("data", "list", "--manifest", str(bad), "--to", str(tmp_path / "d"))
    assert proc.returncode == 2
    assert "bad or duplicate path" in error_line(proc)


# -- fetching from a mirror ---------------------------------------------------------------------


@needs_shared
@pytest.mark.slow
def test_fetch_from_http_mirror_is_byte_identical_and_resumable(mirror: Mirror, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    proc = run("data", "fetch", "--mirror", mirror.url, "--to", str(dest))
    assert proc.returncode == 0, proc.stderr
    assert_verified(dest, FETCHABLE)
    assert not leftovers(dest)
    n = len(MANIFEST.files())
    # ... plus the authors' prompt templates, one entry, each template pinned (engine/prompts_manifest.toml)
    n_prompts = len(PROMPTS.template)
    assert f"{n + 1} downloaded" in proc.stdout
    assert f"--data-dir {dest.resolve()}" in proc.stdout
    assert len(mirror.requests) == n + n_prompts
    for t in PROMPTS.template:
        assert sha256(dest / "official-prompts" / t.file) == sha256(SHARED / "official-prompts" / t.file)

    again = run("data", "fetch", "--mirror", mirror.url, "--to", str(dest))
    assert again.returncode == 0, again.stderr
    assert "0 downloaded" in again.stdout and f"{n + 1} already verified" in again.stdout
    assert len(mirror.requests) == n + n_prompts  # nothing fetched the second time

    # a damaged local file is replaced by the pinned one; --force re-downloads everything asked
    victim = dest / "confaide" / "tier_1.txt"
    victim.write_bytes(b"damaged")
    fixed = run("data", "fetch", "--mirror", mirror.url, "--to", str(dest))
    assert fixed.returncode == 0 and "1 downloaded" in fixed.stdout
    assert "confaide/tier_1.txt: present but differs" in fixed.stderr
    assert sha256(victim) == sha256(SHARED / "confaide" / "tier_1.txt")
    before = len(mirror.requests)
    forced = run("data", "fetch", "--mirror", mirror.url, "--to", str(dest), "--only", "psyleak", "--force")
    assert forced.returncode == 0 and "2 downloaded" in forced.stdout
    assert len(mirror.requests) == before + 2

    listing = run("data", "list", "--to", str(dest))
    assert listing.returncode == 0
    rows = [ln.split() for ln in listing.stdout.splitlines() if ln.startswith("  ")]
    file_rows = [r for r in rows if r[0] in ("ok", "missing", "differs")]
    assert len(file_rows) == n and all(r[0] == "ok" for r in file_rows)
    assert "swmh: NOT FETCHABLE" in listing.stdout

    # the fetched folder is a valid --data-dir: the loaders read it exactly like shared/trustmh
    assert run("list").returncode == 0
    from pillars import registry

    items = list(registry.load_items(registry.get("ethics/ethical_reasoning"), dest))
    assert len(items) == 125
    # and its official-prompts/ binds the authors' templates, the same requests as from shared
    for key in ("ethics/ethical_reasoning", "privacy/leakage", "privacy/awareness"):
        sub = resolve(key, None, dest)[0]
        assert sub.prompts == "official"
        shared_sub = resolve(key, None, SHARED)[0]
        assert [i.messages for i in registry.load_items(sub, dest)] == [
            i.messages for i in registry.load_items(shared_sub, SHARED)]
    # Every official row read from it equals the one read from shared; items are a pure function of
    # the rows, so their first 200 per subtask are compared too (all of robustness's 1755 perturbed
    # items would cost ~2.7 s of CPU on each side and test the perturbation, not the folder).
    for sub in registry.all_subtasks():
        if sub.official is None or sub.official.dataset not in FETCHABLE:
            continue
        try:
            expected_rows = list(sub.official.load(SHARED / sub.official.dataset))
            expected = [(i.id, i.messages) for i in itertools.islice(registry.load_items(sub, SHARED), 200)]
        except Exception:
            continue
        assert list(sub.official.load(dest / sub.official.dataset)) == expected_rows, sub.key
        assert [(i.id, i.messages) for i in itertools.islice(registry.load_items(sub, dest), 200)] == expected, sub.key


@needs_shared
def test_corrupt_file_from_mirror_is_refused_and_not_kept(mirror: Mirror, tmp_path: Path) -> None:
    good = (SHARED / "ethicmh" / "EthicMH.csv").read_bytes()
    bad = bytearray(good)
    bad[1000] ^= 0x20  # same size, one flipped bit
    mirror.overrides["ethicmh/EthicMH.csv"] = bytes(bad)
    dest = tmp_path / "data"
    proc = run("data", "fetch", "--mirror", mirror.url, "--to", str(dest))
    assert proc.returncode != 0
    line = error_line(proc)
    pin = MANIFEST.datasets["ethicmh"].files[0].sha256
    assert line.startswith("error: ethicmh/EthicMH.csv: sha256 mismatch")
    assert f"expected {pin}, got {hashlib.sha256(bad).hexdigest()}" in line
    assert "discarded" in line and "mirror" in line
    assert "1 failed" in proc.stdout
    assert not (dest / "ethicmh").exists()  # nothing of it kept, not even an empty folder
    assert not leftovers(dest)
    assert_verified(dest, [n for n in FETCHABLE if n != "ethicmh"])

    # a longer file is cut off as soon as it exceeds the pinned size
    mirror.overrides["ethicmh/EthicMH.csv"] = good + b"extra"
    proc = run("data", "fetch", "--mirror", mirror.url, "--to", str(dest), "--only", "ethicmh")
    assert proc.returncode != 0
    line = error_line(proc)
    assert "ethicmh/EthicMH.csv: size mismatch" in line and f"expected {len(good)} bytes" in line
    assert not (dest / "ethicmh").exists() and not leftovers(dest)

    # the mirror fixed: the next run fetches just that file
    del mirror.overrides["ethicmh/EthicMH.csv"]
    proc = run("data", "fetch", "--mirror", mirror.url, "--to", str(dest))
    assert proc.returncode == 0 and "1 downloaded" in proc.stdout
    assert_verified(dest, FETCHABLE)


@needs_shared
def test_http_404_is_one_clear_line(mirror: Mirror, tmp_path: Path) -> None:
    mirror.overrides["confaide/tier_2a.txt"] = 404
    dest = tmp_path / "data"
    proc = run("data", "fetch", "--mirror", mirror.url + "/", "--to", str(dest), "--only", "confaide")
    assert proc.returncode != 0
    line = error_line(proc)
    assert line.startswith("error: confaide/tier_2a.txt: HTTP 404")
    assert f"{mirror.url}/confaide/tier_2a.txt" in line
    assert "<mirror>/<dataset>/<path>" in line
    assert not (dest / "confaide" / "tier_2a.txt").exists() and not leftovers(dest)
    assert (dest / "confaide" / "tier_1.txt").is_file()


@needs_shared
def test_only_selects_datasets_and_list_shows_presence(mirror: Mirror, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    before = run("data", "list", "--to", str(dest), "--only", "confaide,psyleak")
    assert before.returncode == 0 and "(absent)" in before.stdout
    assert before.stdout.count("  missing ") == 7
    proc = run("data", "fetch", "--mirror", mirror.url, "--to", str(dest), "--only", "confaide, psyleak")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["confaide", "psyleak"]
    assert_verified(dest, ["confaide", "psyleak"])
    assert all(r.split("/")[0] in ("confaide", "psyleak") for r in mirror.requests)
    after = run("data", "list", "--to", str(dest))
    sections = after.stdout.split("\n\n")
    conf = next(s for s in sections if s.startswith("confaide:"))
    ethic = next(s for s in sections if s.startswith("ethicmh:"))
    assert "5/5 verified" in conf and conf.count("  ok ") == 5
    assert "0/1 verified" in ethic and "  missing " in ethic

    bad = run("data", "fetch", "--mirror", mirror.url, "--to", str(dest), "--only", "nope")
    assert bad.returncode == 2 and "unknown dataset(s) nope" in error_line(bad)
    gated = run("data", "fetch", "--mirror", mirror.url, "--to", str(dest), "--only", "swmh")
    assert gated.returncode == 2 and "swmh: cannot be fetched" in error_line(gated)


@needs_shared
@pytest.mark.parametrize("kind", ["dir", "file-url", "env", "config"])
def test_local_directory_mirror(kind: str, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    args = ["data", "fetch", "--to", str(dest), "--only", "cpsycoune,esconv-fair"]
    env: dict[str, str] = {}
    if kind == "dir":
        args += ["--mirror", str(SHARED)]
    elif kind == "file-url":
        args += ["--mirror", SHARED.resolve().as_uri()]
    elif kind == "env":
        env["TRUSTMH_DATA_MIRROR"] = str(SHARED)
    else:
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[data]\nmirror = "{SHARED}"\n')
        args += ["--config", str(cfg)]
    proc = run(*args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"from mirror {SHARED}" in proc.stderr or f"from mirror {SHARED.resolve().as_uri()}" in proc.stderr
    assert_verified(dest, ["cpsycoune", "esconv-fair"])
    assert not leftovers(dest)


def test_missing_local_mirror_is_one_line(tmp_path: Path) -> None:
    proc = run("data", "fetch", "--mirror", str(tmp_path / "nowhere"), "--to", str(tmp_path / "d"))
    assert proc.returncode == 2
    assert "is not a directory" in error_line(proc)


def test_destination_defaults_to_the_cache(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[data]\ncache = "{tmp_path / "from-config"}"\n')
    assert data_mod.resolve_dest(None, None) == data_mod.default_data_dir()
    assert run("data", "list", "--config", str(cfg)).stdout.startswith(f"data dir: {tmp_path / 'from-config'}")
    proc = run("data", "list", env={"TRUSTMH_CACHE": str(tmp_path / "c")})
    assert proc.stdout.startswith(f"data dir: {tmp_path / 'c' / 'data'} (absent)")


# -- upstream mode (no mirror), with a manifest whose URLs point at the local server ------------


def _entry(f: data_mod.DataFile, **src: str) -> str:
    lines = [f'[[datasets."{f.dataset}".files]]', f'path = "{f.path}"', f"size = {f.size}",
             f'sha256 = "{f.sha256}"']
    lines += [f'{k} = "{v}"' for k, v in src.items()]
    return "\n".join(lines) + "\n"


@needs_shared
def test_upstream_urls_archive_member_derived_and_mirror_only(mirror: Mirror, tmp_path: Path) -> None:
    # upstream layout differs from ours: files under up/<name>, EthicMH.csv only inside a zip
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Ethics/README.txt", "other member")
        zf.writestr("Ethics/data/EthicMH.csv", (SHARED / "ethicmh" / "EthicMH.csv").read_bytes())
    mirror.overrides["up/Ethics.zip"] = buf.getvalue()
    parts = []
    for name in ("confaide", "cpsycoune", "ethicmh", "psyharm"):
        parts.append(f'[datasets."{name}"]\nsource = "test"\n')
        for f in MANIFEST.datasets[name].files:
            if name == "ethicmh":
                parts.append(_entry(f, url=f"{mirror.url}/up/Ethics.zip", member="Ethics/data/EthicMH.csv"))
            elif f.derive:
                parts.append(_entry(f, derive=f.derive))
            elif name == "psyharm":
                parts.append(_entry(f, mirror_only="internal set, never published"))
            else:
                # upstream paths are percent-encoded (CPsyCounE has spaces and '&')
                from urllib.parse import quote

                parts.append(_entry(f, url=f"{mirror.url}/{quote(f.dataset)}/{quote(f.path)}"))
    manifest = tmp_path / "m.toml"
    manifest.write_text("\n".join(parts))
    dest = tmp_path / "data"

    proc = run("data", "fetch", "--manifest", str(manifest), "--to", str(dest))
    assert proc.returncode != 0
    line = error_line(proc)
    assert line.startswith("error: psyharm: no public source for the pinned bytes (internal set, never published)")
    assert "--mirror" in line
    assert "1 built" in proc.stdout and "1 need a mirror" in proc.stdout
    assert_verified(dest, ["confaide", "cpsycoune", "ethicmh"])
    assert not (dest / "psyharm").exists() and not leftovers(dest)
    assert not any(p.suffix == ".zip" for p in dest.rglob("*"))
    assert "cpsycoune/cpsycoune_all.jsonl" not in mirror.requests  # built, not downloaded
    listed = run("data", "list", "--manifest", str(manifest), "--to", str(dest)).stdout
    assert "mirror only (internal set, never published)" in listed
    assert "derived locally" in listed and "-> Ethics/data/EthicMH.csv" in listed

    # the same manifest with a mirror: every file from <mirror>/<dataset>/<path>, psyharm included
    ok = run("data", "fetch", "--manifest", str(manifest), "--to", str(dest), "--mirror", mirror.url)
    assert ok.returncode == 0, ok.stderr
    assert "1 downloaded" in ok.stdout
    assert_verified(dest, ["confaide", "cpsycoune", "ethicmh", "psyharm"])

    # a member missing from the archive, or a non-zip, is one line and leaves nothing behind
    (dest / "ethicmh" / "EthicMH.csv").unlink()
    mirror.overrides["up/Ethics.zip"] = b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n"
    proc = run("data", "fetch", "--manifest", str(manifest), "--to", str(dest), "--only", "ethicmh")
    assert "is not a zip archive (it is a Git LFS pointer)" in error_line(proc)
    assert not (dest / "ethicmh").exists() and not leftovers(dest)


# -- network trouble ----------------------------------------------------------------------------


@needs_shared
def test_transient_errors_are_retried(mirror: Mirror, tmp_path: Path) -> None:
    calls = {"n": 0}

    def flaky(h: BaseHTTPRequestHandler) -> None:
        calls["n"] += 1
        if calls["n"] <= 2:
            h.send_error(503)
            return
        body = (SHARED / "psyharm" / "PsyHarm.csv").read_bytes()
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    mirror.overrides["psyharm/PsyHarm.csv"] = flaky
    dest = tmp_path / "data"
    proc = run("data", "fetch", "--mirror", mirror.url, "--to", str(dest), "--only", "psyharm")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("HTTP 503") == 2 and "retrying in" in proc.stderr
    assert_verified(dest, ["psyharm"])

    calls["n"] = -10  # keeps failing
    proc = run("data", "fetch", "--mirror", mirror.url, "--to", str(dest), "--only", "psyharm",
               "--force", "--retries", "1")
    line = error_line(proc)
    assert "psyharm/PsyHarm.csv: HTTP 503" in line and "after 2 attempts" in line
    assert_verified(dest, ["psyharm"])  # the verified copy stays


@needs_shared
def test_timeout_is_one_clear_line(mirror: Mirror, tmp_path: Path) -> None:
    def hang(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "15058")
        h.end_headers()
        h.wfile.write(b"ID,")
        h.wfile.flush()
        time.sleep(5)

    mirror.overrides["psyharm/PsyHarm.csv"] = hang
    dest = tmp_path / "data"
    t0 = time.monotonic()
    proc = run("data", "fetch", "--mirror", mirror.url, "--to", str(dest), "--only", "psyharm",
               "--timeout", "0.5", "--retries", "0")
    assert time.monotonic() - t0 < 30
    line = error_line(proc)
    assert line.startswith("error: psyharm/PsyHarm.csv: timed out (no data for 0.5s)")
    assert not (dest / "psyharm").exists() and not leftovers(dest)


def test_connection_refused_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = run("data", "fetch", "--mirror", f"http://127.0.0.1:{port}", "--to", str(tmp_path / "d"),
               "--only", "psyharm", "--retries", "0")
    line = error_line(proc)
    assert line.startswith("error: psyharm/PsyHarm.csv: network error")
    assert not (tmp_path / "d" / "psyharm").exists()


@needs_shared
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupt_leaves_no_partial_file(mirror: Mirror, tmp_path: Path, signame: str) -> None:
    import signal

    sig = getattr(signal, signame)
    started = threading.Event()
    release = threading.Event()

    def hang(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "15058")
        h.end_headers()
        h.wfile.write(b"ID,")
        h.wfile.flush()
        started.set()
        # Hold the download open until the engine has been interrupted: a fixed sleep could run
        # out first on a loaded machine, and the engine would see a cut body instead of SIGINT.
        release.wait(60)

    mirror.overrides["psyharm/PsyHarm.csv"] = hang
    dest = tmp_path / "data"
    e = {k: v for k, v in os.environ.items() if k != "TRUSTMH_DATA_MIRROR"}
    # Started with SIGINT ignored, the way a script's background job (`cmd &`) starts: the fetch
    # must still stop on it.
    proc = subprocess.Popen([PY, "-m", "engine", "data", "fetch", "--mirror", mirror.url, "--to", str(dest),
                             "--only", "psyharm,confaide"], cwd=REPO, env=e, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert started.wait(30)
    deadline = time.monotonic() + 10
    while not list((dest / "psyharm").glob(".PsyHarm.csv.*.part")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((dest / "psyharm").glob(".PsyHarm.csv.*.part"))  # mid-download
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        release.set()
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {signame}; no partial file was kept" in err
    assert not leftovers(dest) and not (dest / "psyharm").exists()
    for f in MANIFEST.datasets["confaide"].files:  # whatever did arrive is complete and verified
        path = dest / f.dataset / f.path
        assert not path.exists() or sha256(path) == f.sha256, f.key


ARCHIVES = os.environ.get("TRUSTMH_PROMPT_ARCHIVES")


@pytest.mark.skipif(not ARCHIVES, reason="set TRUSTMH_PROMPT_ARCHIVES to a folder holding the authors' "
                    "privacy.zip and Ethics.zip (CI cannot reach them)")
def test_prompts_extracted_from_the_authors_archives(tmp_path: Path) -> None:
    # A local mirror that holds the two archives (and no official-prompts/ folder): the templates
    # are extracted with ast and must equal shared/trustmh/official-prompts byte for byte.
    dest = tmp_path / "data"
    proc = run("data", "fetch", "--mirror", str(ARCHIVES), "--to", str(dest), "--only", "official-prompts")
    assert proc.returncode == 0, proc.stderr
    assert "1 downloaded" in proc.stdout
    for t in PROMPTS.template:
        assert (dest / "official-prompts" / t.file).read_bytes() == (SHARED / "official-prompts" / t.file).read_bytes()
