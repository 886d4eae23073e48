"""A rerun with nothing left to do (engine/run/completion.py): run.json's completion record spares the
item count, the resume scan and the walk, and the rerun says and writes what the full path says;
every change to what the units are, or to the checkpoint, takes the full path instead."""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from engine import report
from engine.report import reuse
from engine.run import completion
from engine.testing.fakeserver import FakeServerProcess
from tests.conftest import PY, REPO, EngineResult, engine_env, fake_model, run_cli, verify_clean, write_config, write_items

SHORTCUT = "nothing left to do"
N = 30


@dataclass
class Done:
    """A finished --items run of N items against the fake server, and how to run it again."""

    tmp: Path
    srv: FakeServerProcess
    items: Path
    cfg: Path
    out: Path

    def run(self, *extra: str | Path, cfg: Path | None = None) -> EngineResult:
        return run_cli("run", cfg or self.cfg, "--items", self.items, "--output", self.out, "--no-progress", *extra)

    def sent(self) -> int:
        n = self.srv.stats()["requests"]
        assert isinstance(n, int)
        return n

    def doc(self) -> dict[str, object]:
        return orjson.loads((self.out / "run.json").read_bytes())

    @property
    def checkpoint(self) -> Path:
        return self.out / "responses" / "fake.jsonl"


def _done(tmp: Path, srv: FakeServerProcess, **model: object) -> Done:
    d = Done(tmp, srv, write_items(tmp / "items.jsonl", N), write_config(tmp / "c.toml", {"fake": fake_model(srv, **model)}),
             tmp / "out")
    res = d.run()
    assert res.rc in (0, 1), res.stderr
    assert SHORTCUT not in res.stderr
    return d


@pytest.fixture
def done(tmp_path: Path, fake_server: FakeServerProcess) -> Done:
    d = _done(tmp_path, fake_server)
    assert d.sent() == N and "fake" in d.doc()["completion"]  # type: ignore[operator]  # a JSON object
    return d


def _summary(res: EngineResult) -> list[str]:
    """What a run says, but for the shortcut's own line."""
    return [line for line in res.err_lines() if SHORTCUT not in line]


_TIMES = ("started_at", "ended_at", "wall_s", "requests_per_s", "output_tokens_per_s")


def _last_lane(d: Done) -> dict[str, object]:
    history = d.doc()["history"]
    assert isinstance(history, list)
    return {k: v for k, v in history[-1]["lanes"]["fake"].items() if k not in _TIMES}


def _without_completion(d: Done) -> None:
    doc = d.doc()
    del doc["completion"]
    (d.out / "run.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))


def test_unchanged_rerun_sends_nothing_walks_nothing_and_says_what_the_full_path_says(done: Done) -> None:
    short = done.run()
    assert short.rc == 0 and SHORTCUT in short.stderr, short.stderr
    assert done.sent() == N
    lane = _last_lane(done)
    assert lane["skipped"] == N and lane["planned"] == N and lane["done"] == 0 and lane["state"] == "complete"
    # The same rerun on the full path (no record): the same lines, the same lane statistics.
    _without_completion(done)
    full = done.run()
    assert full.rc == 0 and SHORTCUT not in full.stderr
    assert _summary(short) == _summary(full)
    assert _last_lane(done) == lane
    assert done.sent() == N
    verify_clean(done.out)
    # The full path recorded completion again: the next rerun is short again, and its report (read
    # from the kept report inputs) is the report of the records.
    again = done.run()
    assert again.rc == 0 and SHORTCUT in again.stderr
    kept = done.out / reuse.NAME
    assert kept.exists()
    shown = (done.out / "report.md").read_text()
    kept.unlink()
    assert report.render(report.report_for(done.out)[0], "md") == shown


def test_truncated_prompts_are_counted_as_the_walk_counts_them(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    items = tmp_path / "items.jsonl"
    items.write_bytes(b"".join(orjson.dumps({"id": f"q{i}", "prompt": ("long words " * 80 if i % 2 else "short")})
                               + b"\n" for i in range(10)))
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server, context_tokens=120, max_tokens=16)})
    d = Done(tmp_path, fake_server, items, cfg, tmp_path / "out")
    assert d.run().rc == 0
    short = d.run()
    assert SHORTCUT in short.stderr
    lane = _last_lane(d)
    assert lane["truncated"] == 5 and lane["skipped"] == 10
    _without_completion(d)
    full = d.run()
    assert SHORTCUT not in full.stderr and _summary(short) == _summary(full) and _last_lane(d) == lane
    assert d.sent() == 10


def test_fatal_records_keep_the_exit_code_and_retry_errors_takes_the_full_path(tmp_path: Path,
                                                                               fake_server: FakeServerProcess) -> None:
    fake_server.set_config(echo={"number 2": 404})  # q2, q20..q29: fatal, never retried
    d = _done(tmp_path, fake_server)
    fatal = "11 fatal error(s), 0 out of retries"
    again = d.run()
    assert again.rc == 1 and SHORTCUT in again.stderr and fatal in again.err_lines()[-1], again.stderr
    allowed = d.run("--allow-failures")
    assert allowed.rc == 0 and SHORTCUT in allowed.stderr and "allowed by --allow-failures" in allowed.err_lines()[-1]
    assert d.sent() == N
    fake_server.set_config(echo={})
    retried = d.run("--retry-errors")
    assert retried.rc == 0 and SHORTCUT not in retried.stderr, retried.stderr
    assert d.sent() == N + 11
    verify_clean(d.out)
    # No fatal record left: --retry-errors has nothing to send, and the shortcut holds for it too.
    last = d.run("--retry-errors")
    assert last.rc == 0 and SHORTCUT in last.stderr and "0 fatal error(s)" in last.err_lines()[-1]
    assert d.sent() == N + 11


def _append_a_record(d: Done) -> None:
    line = d.checkpoint.read_bytes().splitlines()[0]
    rec = orjson.loads(line)
    rec["key"], rec["item_id"] = "f" * 32, "extra"
    with open(d.checkpoint, "ab") as f:
        f.write(orjson.dumps(rec) + b"\n")


def _cut_the_last_record(d: Done) -> None:
    lines = d.checkpoint.read_bytes().splitlines(keepends=True)
    d.checkpoint.write_bytes(b"".join(lines[:-1]))


def _same_bytes_new_file(d: Done) -> None:
    data = d.checkpoint.read_bytes()
    d.checkpoint.unlink()
    d.checkpoint.write_bytes(data)


def _other_concurrency(d: Done) -> None:
    d.cfg.write_text(d.cfg.read_text().replace('model = "fake-model"', 'model = "fake-model"\nmax_concurrency = 3'))


def _other_code(d: Done, monkeypatch: pytest.MonkeyPatch) -> None:
    # What editing a pillar's prompt builder or an adapter's body changes: the code digest.
    monkeypatch.setattr(completion, "code_digest", lambda: "another engine")


# (change, requests the full path then sends)
CHANGES: dict[str, tuple[Callable[..., None], int]] = {
    "a record appended to the checkpoint": (_append_a_record, 0),
    "the last record cut from the checkpoint": (_cut_the_last_record, 1),
    "the checkpoint replaced by a copy": (_same_bytes_new_file, 0),
    "a config key that does not shape requests (max_concurrency)": (_other_concurrency, 0),
    "the engine's code": (_other_code, 0),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_takes_the_full_path(done: Done, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    fn, resend = CHANGES[change]
    if fn is _other_code:
        fn(done, monkeypatch)
    else:
        fn(done)
    res = done.run()
    assert res.rc == 0 and SHORTCUT not in res.stderr, res.stderr
    assert done.sent() == N + resend
    # ... which records completion again: the next rerun (same change in place) is short.
    res = done.run()
    assert res.rc == 0 and SHORTCUT in res.stderr, res.stderr
    assert done.sent() == N + resend


def test_fresh_starts_over_and_records_completion_again(done: Done) -> None:
    res = done.run("--fresh")
    assert res.rc == 0 and SHORTCUT not in res.stderr and done.sent() == 2 * N
    res = done.run()
    assert res.rc == 0 and SHORTCUT in res.stderr and done.sent() == 2 * N


def test_an_edited_item_or_request_setting_is_refused_as_before(done: Done) -> None:
    text = done.items.read_text()
    done.items.write_text(text.replace("question number 5:", "question number five:"))
    res = done.run()
    assert res.rc == 2 and "different data" in res.stderr and SHORTCUT not in res.stderr
    done.items.write_text(text)
    other = write_config(done.tmp / "t.toml", {"fake": fake_model(done.srv, temperature=0.5)})
    res = done.run(cfg=other)
    assert res.rc == 2 and "other request settings" in res.stderr and SHORTCUT not in res.stderr
    assert done.sent() == N


# The run process dies (os._exit: no cleanup, as kill -9) right after its records are on disk and
# before run.json is written at the end: run.json is then the one written at the start, which has
# no completion record.
_DIE_AT_THE_END = textwrap.dedent("""
    import os, sys
    from engine import shards
    from engine.cli import main
    write = shards.write_state
    def dying(out, shard, doc):
        if doc.status != "running":
            os._exit(137)
        write(out, shard, doc)
    shards.write_state = dying
    sys.exit(main(sys.argv[1:]))
""")


def test_killed_between_the_records_and_run_json_takes_the_full_path(done: Done) -> None:
    _cut_the_last_record(done)
    argv = ["run", str(done.cfg), "--items", str(done.items), "--output", str(done.out), "--no-progress"]
    p = subprocess.run([PY, "-c", _DIE_AT_THE_END, *argv], cwd=str(REPO), env=engine_env(), capture_output=True,
                       timeout=120)
    assert p.returncode == 137, p.stderr.decode(errors="replace")
    assert done.sent() == N + 1
    assert done.doc()["status"] == "running" and "completion" not in done.doc()
    res = done.run()
    assert res.rc == 0 and SHORTCUT not in res.stderr and f"{N} already done" in res.stderr, res.stderr
    assert done.sent() == N + 1
    verify_clean(done.out)
    assert SHORTCUT in done.run().stderr


def _severity_data(folder: Path, first_post: str) -> Path:
    """A data dir holding only crisis/severity's file (own synthetic rows): a `--pillars crisis` run
    of it has no judged subtask, so its lane is recorded."""
    (folder / "cssrs-reddit").mkdir(parents=True)
    rows = [("u0", first_post, "Ideation"), ("u1", "a second synthetic post", "Behavior"),
            ("u2", "a third synthetic post", "Supportive")]
    (folder / "cssrs-reddit" / "500_Reddit_users_posts_labels.csv").write_text(
        "User,Post,Label\n" + "".join(f"{u},\"['{p}']\",{label}\n" for u, p, label in rows))
    return folder


def _pillar_run(tmp: Path, srv: FakeServerProcess, data: Path) -> Callable[[], EngineResult]:
    cfg = write_config(tmp / "c.toml", {"fake": fake_model(srv)})
    return lambda: run_cli("run", cfg, "--pillars", "crisis", "--data-dir", data, "--output", tmp / "out", "--no-progress")


def test_a_dataset_folder_linked_into_the_data_dir_counts(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    # `ln -s /big/disk/cssrs-reddit data/`: the fingerprint read the data dir without following the
    # link, so an edited post behind it was skipped by the shortcut (the full path sends it).
    _severity_data(tmp_path / "elsewhere", "a first synthetic post")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cssrs-reddit").symlink_to(tmp_path / "elsewhere" / "cssrs-reddit", target_is_directory=True)
    (tmp_path / "data" / "loop").symlink_to(tmp_path / "data", target_is_directory=True)  # walked once, not forever
    run = _pillar_run(tmp_path, fake_server, tmp_path / "data")
    assert run().rc == 0 and fake_server.stats()["requests"] == 3
    assert SHORTCUT in run().stderr
    _severity_data(tmp_path / "edited", "an edited first post")
    csv = "cssrs-reddit/500_Reddit_users_posts_labels.csv"
    (tmp_path / "elsewhere" / csv).write_bytes((tmp_path / "edited" / csv).read_bytes())
    res = run()
    assert res.rc == 0 and SHORTCUT not in res.stderr, res.stderr
    assert fake_server.stats()["requests"] == 4


def test_the_same_data_in_another_folder_is_refused_as_on_the_full_path(tmp_path: Path,
                                                                       fake_server: FakeServerProcess) -> None:
    # The data fingerprint a resume checks names the data dir's folder: the same bytes reached
    # through a re-pointed link are refused (exit 2) by the full path, and so by a rerun that has a
    # completion record.
    for name in ("a", "b"):
        _severity_data(tmp_path / name, "a first synthetic post")
    link = tmp_path / "data"
    link.symlink_to(tmp_path / "a", target_is_directory=True)
    run = _pillar_run(tmp_path, fake_server, link)
    assert run().rc == 0
    link.unlink()
    link.symlink_to(tmp_path / "b", target_is_directory=True)
    res = run()
    assert res.rc == 2 and "different data" in res.stderr and SHORTCUT not in res.stderr, res.stderr
    link.unlink()
    link.symlink_to(tmp_path / "a", target_is_directory=True)
    assert SHORTCUT in run().stderr and fake_server.stats()["requests"] == 3


def test_an_item_value_messagepack_cannot_hold_leaves_the_report_as_it_was(tmp_path: Path,
                                                                          fake_server: FakeServerProcess) -> None:
    # JSON holds any integer, MessagePack none past 64 bits: the report inputs are then not kept,
    # and the report is written (it failed with OverflowError).
    items = tmp_path / "items.jsonl"
    items.write_bytes(b'{"id": "q0", "prompt": "hello", "metadata": {"n": 123456789012345678901234567890}}\n')
    d = Done(tmp_path, fake_server, items, write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server)}),
             tmp_path / "out")
    res = d.run()
    assert res.rc == 0 and "error:" not in res.stderr, res.stderr
    assert (d.out / "report.md").exists() and not (d.out / reuse.NAME).exists()
    again = run_cli("report", d.out)
    assert again.rc == 0, again.stderr


def test_a_completion_record_of_another_shape_takes_the_full_path(done: Done) -> None:
    # Another engine's record (a field of the checkpoint identity missing, one unknown): the run
    # reads run.json and takes the full path; it refused the whole run.json before.
    doc = done.doc()
    record = doc["completion"]["fake"]  # type: ignore[index]  # a JSON object
    del record["checkpoint"]["ctime_ns"]
    record["checkpoint"]["generation"] = 7
    (done.out / "run.json").write_bytes(orjson.dumps(doc))
    res = done.run()
    assert res.rc == 0 and SHORTCUT not in res.stderr and f"{N} already done" in res.stderr, res.stderr
    assert SHORTCUT in done.run().stderr and done.sent() == N


def test_a_run_with_plugin_adapter_modules_is_never_recorded(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    # A plugin's code is outside the fingerprint, and it may change how a built-in adapter builds bodies.
    items = write_items(tmp_path / "items.jsonl", N)
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server)},
                       run={"adapter_modules": [__name__]})
    out = tmp_path / "out"
    for _ in range(2):
        res = run_cli("run", cfg, "--items", items, "--output", out, "--no-progress")
        assert res.rc == 0 and SHORTCUT not in res.stderr, res.stderr
        assert "completion" not in orjson.loads((out / "run.json").read_bytes())
    assert fake_server.stats()["requests"] == N
