"""engine/store: torn tails, corrupt lines, the resume scan, the writer and the output lock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from engine.core.errors import CheckpointError, LockedError
from engine.core.records import ErrorInfo, Record, Response, record_encoder
from engine.store.checkpoint import JsonlWriter, iter_records, repair_torn_tail, scan_responses
from engine.store.lock import OutputLock
from tests.conftest import (
    check_complete,
    expected_texts,
    fake_model,
    read_jsonl,
    run_cli,
    verify_clean,
    wait_for_lines,
    write_config,
    write_items,
)


def rec(i: int, error: bool = False) -> Record:
    key = f"{i:032x}"
    return Record(key=key, model="m", pillar="custom", subtask="custom", item_id=f"q{i}", sample=0, attempts=1,
                  response=None if error else Response(text=f"t{i}", finish_reason="stop"),
                  error=ErrorInfo(kind="fatal", status=400, message="bad") if error else None)


def write_records(path: Path, recs: list[Record]) -> bytes:
    data = b"".join(record_encoder.encode(r) + b"\n" for r in recs)
    path.write_bytes(data)
    return data


# -- torn tail --------------------------------------------------------------------------------------


def test_repair_torn_tail(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    good = write_records(p, [rec(i) for i in range(5)])
    assert repair_torn_tail(p) == 0
    p.write_bytes(good + b'{"key":"0000000000000000000000000000000a","mod')
    assert repair_torn_tail(p) == len(b'{"key":"0000000000000000000000000000000a","mod')
    assert p.read_bytes() == good
    p.write_bytes(b'{"key":"00')  # a file that is one torn line
    assert repair_torn_tail(p) == 10 and p.read_bytes() == b""
    assert repair_torn_tail(p) == 0  # empty


def test_repair_torn_tail_longer_than_a_block(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    good = write_records(p, [rec(1)])
    p.write_bytes(good + b"x" * 200_000)
    assert repair_torn_tail(p) == 200_000
    assert p.read_bytes() == good


def test_scan_reports_torn_tail_and_keys(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    good = write_records(p, [rec(i) for i in range(10)] + [rec(10, error=True)])
    p.write_bytes(good + b'{"key":"000')
    res = scan_responses(p)
    assert res.torn_bytes == 11
    assert res.records == 11 and res.errors == 1
    assert set(res.done) == {f"{i:032x}" for i in range(11)}
    assert p.read_bytes() == good


# -- corrupt lines -----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    b"garbage that is not json",
    b'{"key":"00000000000000000000000000000003","model":"m","pi',  # a torn line followed by more lines
    b'{"no_key": 1}',
    b"",
    b'{"key":"short"}',
])
def test_scan_corrupt_middle_line_names_file_and_line(tmp_path: Path, bad: bytes) -> None:
    p = tmp_path / "r.jsonl"
    lines = [record_encoder.encode(rec(i)) for i in range(6)]
    lines[3] = bad
    data = b"\n".join(lines) + b"\n"
    p.write_bytes(data)
    with pytest.raises(CheckpointError) as ei:
        scan_responses(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}:4: ")
    assert "\n" not in msg
    assert p.read_bytes() == data  # a scan never rewrites a corrupt file


def test_scan_line_numbers_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.store.jsonl as jsonl

    monkeypatch.setattr(jsonl, "CHUNK", 1000)  # many small chunks
    p = tmp_path / "r.jsonl"
    lines = [record_encoder.encode(rec(i)) for i in range(200)]
    lines[157] = b"oops"
    p.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(CheckpointError, match=rf"^{p}:158: "):
        scan_responses(p)


def test_iter_records_damage_after_key_is_a_clear_error(tmp_path: Path) -> None:
    """The resume scan reads only keys; a line damaged after its key must still be a one-line
    error naming file:line when records are decoded (verify), not a traceback."""
    p = tmp_path / "r.jsonl"
    lines = [record_encoder.encode(rec(i)) for i in range(4)]
    lines[2] = lines[2].replace(b'"model":"m"', b'"model":m')
    p.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(CheckpointError, match=rf"^{p}:3: not a valid record"):
        list(iter_records(p))


def test_scan_drop_errors_rewrites_without_fatal_records(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    write_records(p, [rec(0), rec(1, error=True), rec(2), rec(3, error=True)])
    res = scan_responses(p, drop_errors=True)
    assert res.errors == 2 and res.records == 2
    assert set(res.done) == {f"{i:032x}" for i in (0, 2)}
    assert [r["item_id"] for r in read_jsonl(p)] == ["q0", "q2"]
    assert not list(tmp_path.glob("*.tmp"))


# -- writer -----------------------------------------------------------------------------------------


def test_writer_appends_whole_lines_and_flushes_on_close(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "r.jsonl"
    seen: list[int] = []

    async def main() -> None:
        w = JsonlWriter(p, on_written=lambda batch: seen.append(len(batch)))
        w.start()
        for i in range(10_000):
            w.put(rec(i))
            if i % 1000 == 0:
                await asyncio.sleep(0)
        await w.close()
        assert w.written == 10_000

    asyncio.run(main())
    data = p.read_bytes()
    assert data.endswith(b"\n")
    recs = list(iter_records(p))
    assert [r.item_id for r in recs] == [f"q{i}" for i in range(10_000)]
    assert sum(seen) == 10_000
    # Appends to an existing file.
    asyncio.run(_write_more(p))
    assert len(list(iter_records(p))) == 10_001


async def _write_more(p: Path) -> None:
    w = JsonlWriter(p)
    w.start()
    w.put(rec(99_999))
    await w.close()


# -- lock ------------------------------------------------------------------------------------------


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    a = OutputLock(tmp_path)
    a.acquire()
    b = OutputLock(tmp_path)
    with pytest.raises(LockedError) as ei:
        b.acquire()
    assert "in use by another run" in str(ei.value) and str(tmp_path) in str(ei.value)
    a.release()
    b.acquire()
    b.release()


# -- through the CLI --------------------------------------------------------------------------------


def test_run_repairs_torn_last_line_and_reports_it(tmp_path: Path, fake_server) -> None:
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server)})
    items = write_items(tmp_path / "items.jsonl", 30)
    out = tmp_path / "out"
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert res.rc == 0, res.stderr
    path = out / "responses" / "fake.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    # A crash in the middle of writing the last record: drop it, leave half of it.
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert res.rc == 0, res.stderr
    assert "torn last line" in res.stderr and str(path) in res.stderr
    check_complete(out, "fake", expected_texts(cfg, items, "fake"))
    verify_clean(out)


def test_run_refuses_corrupt_middle_line_with_file_and_line(tmp_path: Path, fake_server) -> None:
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server)})
    items = write_items(tmp_path / "items.jsonl", 12)
    out = tmp_path / "out"
    assert run_cli("run", cfg, "--items", items, "--output", out).rc == 0
    path = out / "responses" / "fake.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[6] = lines[6][:40] + b"\n"  # torn mid-file: a later append followed it
    before = b"".join(lines)
    path.write_bytes(before)
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert res.rc != 0
    errs = res.err_lines()
    assert len(errs) == 1, res.stderr
    assert errs[0].startswith("error: ") and f"{path}:7:" in errs[0], errs
    assert "Traceback" not in res.stderr
    assert path.read_bytes() == before


def test_verify_reports_damaged_line_clearly(tmp_path: Path, fake_server) -> None:
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server)})
    items = write_items(tmp_path / "items.jsonl", 5)
    out = tmp_path / "out"
    assert run_cli("run", cfg, "--items", items, "--output", out).rc == 0
    path = out / "responses" / "fake.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"model":"fake"', b'"model":fake')
    path.write_bytes(b"".join(lines))
    res = run_cli("verify", out)
    assert res.rc != 0
    assert "Traceback" not in res.stderr
    assert f"{path}:2:" in res.stderr


def test_second_run_on_same_output_refuses_then_kill9_releases_lock(tmp_path: Path, fake_server,
                                                                     engine_procs) -> None:
    fake_server.set_config(latency_ms=400)
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server, max_concurrency=2)})
    items = write_items(tmp_path / "items.jsonl", 60)
    out = tmp_path / "out"
    first = engine_procs("run", cfg, "--items", items, "--output", out)
    path = out / "responses" / "fake.jsonl"
    wait_for_lines(path, 2, first)
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert res.rc != 0
    errs = res.err_lines()
    assert len(errs) == 1, res.stderr
    assert errs[0].startswith("error: ") and "in use by another run" in errs[0]
    assert str(first.pid) in errs[0]
    assert first.alive()  # the first run is untouched
    first.kill9()
    # The kernel dropped the lock with the process: the resume starts right away.
    fake_server.set_config(latency_ms=0)
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert res.rc == 0, res.stderr
    check_complete(out, "fake", expected_texts(cfg, items, "fake"))
    verify_clean(out)


def test_torn_errors_file_tail_is_cut_before_appending(tmp_path: Path, fake_server) -> None:
    """A kill -9 can tear the last line of errors/<model>.jsonl too; the next run must not append
    whole lines after the torn one (that would leave a corrupt line in the middle)."""
    fake_server.set_config(fail_first_n=1)  # one failed attempt per item: an errors line each
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server)})
    items = write_items(tmp_path / "items.jsonl", 6)
    out = tmp_path / "out"
    assert run_cli("run", cfg, "--items", items, "--output", out, "--limit", "3").rc == 0
    err_path = out / "errors" / "fake.jsonl"
    data = err_path.read_bytes()
    assert data.count(b"\n") == 3
    err_path.write_bytes(data[:-25])  # the last line torn
    assert run_cli("run", cfg, "--items", items, "--output", out).rc == 0
    lines = err_path.read_bytes().splitlines()
    assert len(lines) == 2 + 3
    for line in lines:
        orjson.loads(line)
    verify_clean(out)


def test_chunks_reassemble_the_file_at_any_block_size(tmp_path, monkeypatch) -> None:
    """The resume scan reads in blocks and never concatenates them: every block size must still
    yield exactly the file's lines, with the right line numbers."""
    import random

    import engine.store.jsonl as jsonl

    rnd = random.Random(1)
    for trial in range(200):
        lines = [b"x" * rnd.randint(0, 30) for _ in range(rnd.randint(0, 20))]
        data = b"".join(line + b"\n" for line in lines) + (b"tail" if rnd.random() < 0.3 else b"")
        path = tmp_path / f"f{trial}.jsonl"
        path.write_bytes(data)
        monkeypatch.setattr(jsonl, "CHUNK", rnd.randint(1, 40))
        parts = list(jsonl.chunks(path))
        assert b"".join(c for _, c, _ in parts) == data
        expected_first = 1
        for first, chunk, n in parts:
            assert first == expected_first and n == chunk.count(b"\n")
            expected_first += n
