"""A disk that fails mid-run (issue 16): the first failed write stops dispatch on every lane at
once, in-flight requests finish into memory, what fits is written, run.json says what happened (or
stays as it was when it cannot be written either), the run exits 4 with one line, and the same
command resumes exactly once the disk has room. Without root: an ENOSPC-raising write injected
in-process, and a subprocess under a lowered RLIMIT_FSIZE (EFBIG)."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine import cli
from engine.core.errors import StorageError
from engine.core.records import judgment_decoder
from engine.core.rundoc import RunDoc, RunSpec, UnsetType
from engine.store import rundoc_io
from engine.store.checkpoint import JsonlWriter, iter_records, scan_responses
from engine.store.rundoc_io import read_run, write_doc
from engine.testing.fakeserver import FakeServerProcess
from tests.conftest import (
    PY,
    REPO,
    ThreadServer,
    check_complete,
    count_lines,
    engine_env,
    expected_texts,
    fake_model,
    run_engine,
    verify_clean,
    wait_for_lines,
    write_config,
    write_items,
)
from tests.test_checkpoint import rec, write_records

CONCURRENCY = 8


class FillingDisk:
    """os.write for the run's responses file on a disk with `room` bytes left: a write that does not
    fit is cut short (a torn line, as a real disk gives), the next one raises ENOSPC. Other files
    are written normally."""

    def __init__(self, room: int, server: ThreadServer) -> None:
        self.room = room
        self.server = server
        self.requests_at_failure: int | None = None

    def __call__(self, fd: int, data: memoryview) -> int:
        if "/responses/" not in os.readlink(f"/proc/self/fd/{fd}"):
            return os.write(fd, data)
        if self.room <= 0:
            if self.requests_at_failure is None:
                self.requests_at_failure = self.server.server.requests
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = os.write(fd, data[: self.room])
        self.room -= n
        return n

    @property
    def full(self) -> bool:
        return self.requests_at_failure is not None


def _run_in_process(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, list[str]]:
    rc = cli.main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, [ln for ln in err.splitlines() if ln.strip()]


def _setup(tmp_path: Path, server: ThreadServer, n: int) -> tuple[Path, Path, Path]:
    server.server.set_config(latency_ms=15, latency_jitter_ms=10, seed=3)
    items = write_items(tmp_path / "items.jsonl", n)
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(server.url, max_concurrency=CONCURRENCY)},
                       run={"grace_period_s": 5})
    return items, cfg, tmp_path / "out"


def test_enospc_stops_every_request_then_the_same_command_resumes_exactly(
        tmp_path: Path, thread_server: ThreadServer, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    n = 400
    items, cfg, out = _setup(tmp_path, thread_server, n)
    disk = FillingDisk(12_000, thread_server)
    monkeypatch.setattr(JsonlWriter, "_os_write", staticmethod(disk))
    rc, err = _run_in_process(capsys, "run", cfg, "--items", items, "--output", out)
    path = out / "responses" / "fake.jsonl"
    assert rc == 4, err
    assert disk.requests_at_failure is not None
    # Requests that reached the server after the failure: only those already in flight.
    after = thread_server.server.requests - disk.requests_at_failure
    assert after <= CONCURRENCY, after
    assert thread_server.server.requests < n // 2
    last = err[-1]
    assert last.startswith(f"error: could not write {path}: No space left on device (ENOSPC); the run stopped sending")
    assert last.endswith("free space and rerun the same command")
    doc = read_run(out)
    assert doc.status == "storage_failed" and isinstance(doc.failure, str) and "ENOSPC" in doc.failure
    assert not path.read_bytes().endswith(b"\n")  # the failed write tore the last line

    monkeypatch.undo()
    rc, err = _run_in_process(capsys, "run", cfg, "--items", items, "--output", out)
    assert rc == 0, err
    assert "torn last line" in "\n".join(err)
    check_complete(out, "fake", expected_texts(cfg, items, "fake"))
    doc = read_run(out)
    assert doc.status == "complete" and isinstance(doc.failure, UnsetType)
    verify_clean(out)


def test_run_json_stays_as_it_was_when_it_cannot_be_written_either(
        tmp_path: Path, thread_server: ThreadServer, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    n = 200
    items, cfg, out = _setup(tmp_path, thread_server, n)
    disk = FillingDisk(6_000, thread_server)
    monkeypatch.setattr(JsonlWriter, "_os_write", staticmethod(disk))
    write_synced = rundoc_io._write_synced

    def full_for_run_json(path: Path, data: bytes) -> None:
        if disk.full and path.name.startswith(".run.json."):
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write_synced(path, data)

    monkeypatch.setattr(rundoc_io, "_write_synced", full_for_run_json)
    rc, err = _run_in_process(capsys, "run", cfg, "--items", items, "--output", out)
    assert rc == 4, err
    assert "No space left on device (ENOSPC)" in err[-1] and "/responses/fake.jsonl" in err[-1]
    monkeypatch.undo()
    # The run.json written when the run started, whole; no temp file left beside it.
    assert read_run(out).status == "running"
    assert [p.name for p in out.iterdir() if p.name.startswith(".run.json")] == []

    rc, err = _run_in_process(capsys, "run", cfg, "--items", items, "--output", out)
    assert rc == 0, err
    check_complete(out, "fake", expected_texts(cfg, items, "fake"))
    verify_clean(out)


def test_write_doc_that_the_disk_refuses_keeps_the_old_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run.json"
    old = RunDoc(config={}, spec=RunSpec(models=("m",), output=str(tmp_path)), status="running")
    write_doc(path, old)
    before = path.read_bytes()

    def no_room(path: Path, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(rundoc_io, "_write_synced", no_room)
    with pytest.raises(StorageError) as ei:
        write_doc(path, RunDoc(config={}, spec=RunSpec(models=("m",), output=str(tmp_path)), status="complete"))
    assert ei.value.exit_code == 4
    assert str(ei.value) == (f"could not write {path}: No space left on device (ENOSPC); "
                             "free space and rerun the same command")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_records_not_yet_on_disk_never_exceed_max_concurrency(
        tmp_path: Path, thread_server: ThreadServer, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """What a kill -9 can lose: records put for the writer and not yet written. The writer takes
    everything queued each loop turn, and a worker puts at most one record per turn."""
    thread_server.server.set_config(latency_ms=2, latency_jitter_ms=6, seed=5)
    items = write_items(tmp_path / "items.jsonl", 1500)
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(thread_server.url, max_concurrency=CONCURRENCY)})
    high: dict[str, int] = {}
    close = JsonlWriter.close

    async def record_high_water(self: JsonlWriter) -> None:
        await close(self)
        high[self.path.parent.name] = self.high_water

    monkeypatch.setattr(JsonlWriter, "close", record_high_water)
    rc, err = _run_in_process(capsys, "run", cfg, "--items", items, "--output", tmp_path / "out")
    assert rc == 0, err
    assert 1 <= high["responses"] <= CONCURRENCY, high


def test_file_size_limit_stops_the_run_with_exit_4_then_resumes(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    """A real EFBIG: the engine in a subprocess whose file-size limit is lowered (SIGXFSZ ignored,
    so that the write fails instead of killing the process)."""
    n = 300
    fake_server.set_config(latency_ms=10, latency_jitter_ms=10, seed=2)
    items = write_items(tmp_path / "items.jsonl", n)
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server, max_concurrency=CONCURRENCY)},
                       run={"grace_period_s": 5})
    out = tmp_path / "out"
    limit = 30_000

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    p = subprocess.run([PY, "-m", "engine", "run", str(cfg), "--items", str(items), "--output", str(out)],
                       cwd=str(REPO), env=engine_env(), capture_output=True, timeout=120,
                       stdin=subprocess.DEVNULL, preexec_fn=small_files)
    err = [ln for ln in p.stderr.decode().splitlines() if ln.strip()]
    path = out / "responses" / "fake.jsonl"
    assert p.returncode == 4, err
    assert "Traceback" not in p.stderr.decode()
    last = err[-1]
    assert last.startswith(f"error: could not write {path}: File too large (EFBIG); the run stopped sending at once")
    assert last.endswith("raise the file-size limit (ulimit -f) or free space, then rerun the same command")
    assert path.stat().st_size == limit
    lines = count_lines(path)
    unsaved = int(last.split("(")[2].split(" ")[0]) if "could not be saved" in last else 0
    sent = fake_server.stats()["requests"]
    assert isinstance(sent, int)
    # Every request sent is a record on disk, one the run could not save, or (at most the in-flight
    # limit) one still unanswered when the grace period ended; those not saved are at most what was
    # in flight and what waited for the writer when the disk failed.
    assert lines + unsaved <= sent <= lines + unsaved + CONCURRENCY and unsaved <= 2 * CONCURRENCY, \
        (sent, lines, unsaved)
    doc = orjson.loads((out / "run.json").read_bytes())
    assert doc["status"] == "storage_failed" and "EFBIG" in doc["failure"]

    res = run_engine("run", cfg, "--items", items, "--output", out)
    assert res.rc == 0, res.stderr
    recs = check_complete(out, "fake", expected_texts(cfg, items, "fake"))
    assert len(recs) == n
    assert fake_server.stats()["requests"] == sent + n - lines  # each missing item asked once more
    assert "failure" not in orjson.loads((out / "run.json").read_bytes())
    verify_clean(out)


def _settled_ok(srv: FakeServerProcess) -> int:
    """The server's answered count once the requests that reached it before the kill are through
    (each waits out its latency, up to 20 ms, before it counts)."""
    last = -1
    while True:
        now = srv.stats()["ok"]
        assert isinstance(now, int)
        if now == last:
            return now
        last = now
        time.sleep(0.2)


def test_kill9_loses_at_most_what_was_in_flight_or_waiting_for_the_writer(
        tmp_path: Path, fake_server: FakeServerProcess, engine_procs: Any) -> None:
    """The same bound seen from outside: answers the server sent that are not on disk when the
    engine is killed are at most max_concurrency in flight plus max_concurrency waiting for the
    writer; the rerun asks only for what is missing and ends exact."""
    n = 600
    fake_server.set_config(latency_ms=10, latency_jitter_ms=10, seed=4)
    items = write_items(tmp_path / "items.jsonl", n)
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server, max_concurrency=CONCURRENCY)})
    out = tmp_path / "out"
    path = out / "responses" / "fake.jsonl"
    p = engine_procs("run", cfg, "--items", items, "--output", out)
    wait_for_lines(path, n // 3, p, timeout=60)
    p.kill9()
    answered = _settled_ok(fake_server)
    on_disk = count_lines(path)  # whole lines: a torn last one is cut by the rerun
    assert 0 <= answered - on_disk <= 2 * CONCURRENCY, (answered, on_disk)
    res = run_engine("run", cfg, "--items", items, "--output", out)
    assert res.rc == 0, res.stderr
    assert fake_server.stats()["ok"] == answered + n - on_disk
    check_complete(out, "fake", expected_texts(cfg, items, "fake"))
    verify_clean(out)


def test_retry_errors_rewrite_that_the_disk_refuses_keeps_the_checkpoint(tmp_path: Path) -> None:
    """--retry-errors rewrites the responses file without its fatal records; under a file-size
    limit that rewrite fails with EFBIG: one StorageError, the file as it was, no temp file."""
    path = tmp_path / "r.jsonl"
    before = write_records(path, [rec(i, error=i % 2 == 1) for i in range(40)])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 4, hard))
    try:
        with pytest.raises(StorageError) as ei:
            scan_responses(path, drop_errors=True)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert ei.value.exit_code == 4 and "File too large (EFBIG)" in str(ei.value)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]



class LosingDisk:
    """os.fsync for the run's responses file on a disk whose fsync fails (EIO) once the file is past
    `fail_past` bytes, and that then loses what no fsync covered (as a power cut or a dropped dirty
    page does): `durable` is the file's size when the last fsync that returned began. Other files
    sync normally."""

    def __init__(self, fail_past: int) -> None:
        self.fail_past = fail_past
        self.durable = 0
        self._fsync = os.fsync

    def __call__(self, fd: int) -> None:
        if "/responses/" not in os.readlink(f"/proc/self/fd/{fd}"):
            return self._fsync(fd)
        size = os.fstat(fd).st_size
        if size > self.fail_past:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        self._fsync(fd)
        self.durable = max(self.durable, size)
        return None


def test_a_judgment_is_only_ever_for_a_response_durably_on_disk(
        tmp_path: Path, thread_server: ThreadServer, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The judge stage takes a response once an fsync covering it returned. Otherwise a response
    judged before its fsync failed, and then lost, would leave a judgment that outlives it: the next
    run answers the same key anew and never judges that answer. The target and the judge share one
    fake server; the responses file's fsync fails (EIO) and what it did not cover is then cut away."""
    thread_server.server.set_config(latency_ms=4, latency_jitter_ms=4, seed=4)
    out = tmp_path / "out"
    models = {"target": fake_model(thread_server.url, max_concurrency=CONCURRENCY),
              "judge": fake_model(thread_server.url, model="judge-model", max_concurrency=CONCURRENCY)}
    cfg = write_config(tmp_path / "c.toml", models, run={"grace_period_s": 5, "samples": 40, "output": str(out)},
                       extra='\n[judge]\nmodels = ["judge"]\n\n[pillars."crisis/identification"]\nlimit = 1\n\n'
                             '[pillars."crisis/severity"]\nlimit = 1\n')
    disk = LosingDisk(fail_past=100_000)  # some 200 into the 840 judged escalation answers
    monkeypatch.setattr(os, "fsync", disk)
    args = ("run", cfg, "--models", "target", "--pillars", "crisis", "--no-progress")
    rc, err = _run_in_process(capsys, *args)
    assert rc == 4, err
    assert "Input/output error (EIO)" in err[-1] and "/responses/target.jsonl" in err[-1]
    monkeypatch.undo()
    path = out / "responses" / "target.jsonl"
    written = path.stat().st_size
    with open(path, "r+b") as f:  # what no fsync covered is lost
        f.truncate(disk.durable)
    responses = {r.key for r in iter_records(path)}
    judged = [j.response_key for j in iter_whole(out / "judgments" / "judge.jsonl", judgment_decoder)]
    assert written > disk.durable and judged, (written, disk.durable, len(judged))
    assert set(judged) <= responses, f"{len(set(judged) - responses)} judgments of responses lost from the disk"

    rc, err = _run_in_process(capsys, *args)
    assert rc == 0, err
    esc = {r.key for r in iter_records(path) if r.subtask == "escalation"}
    judged_now = [j.response_key for j in iter_records(out / "judgments" / "judge.jsonl", judgment_decoder)
                  if j.try_ == 0]
    assert sorted(judged_now) == sorted(esc)  # each escalation response judged once, nothing else
    verify_clean(out)


def iter_whole(path: Path, decoder: Any) -> list[Any]:
    """The whole lines of a checkpoint a failed write may have torn at its end."""
    data = path.read_bytes() if path.exists() else b""
    return decoder.decode_lines(data[: data.rfind(b"\n") + 1])
