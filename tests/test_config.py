"""Bad input of every kind: one clear line on stderr, a non-zero exit, and the records already on
disk left byte for byte as they were."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.config import load_config, parse_config
from engine.core.errors import ConfigError
from engine.testing.fakeserver import FakeServerProcess
from tests.conftest import (
    EngineResult,
    FixedPortServer,
    check_complete,
    expected_texts,
    fake_model,
    free_port,
    read_jsonl,
    run_cli,
    verify_clean,
    write_config,
    write_items,
)


class Setup:
    """A finished run (made once per module, copied per test) plus helpers to break its input."""

    def __init__(self, tmp: Path, srv: Any, template: Path) -> None:
        self.tmp = tmp
        self.srv = srv
        self.out = tmp / "out"
        shutil.copytree(template / "out", self.out)
        shutil.copy(template / "items.jsonl", tmp / "items.jsonl")
        self.items = tmp / "items.jsonl"
        self.cfg = write_config(tmp / "good.toml", {"fake": fake_model(srv)})
        self.responses = self.out / "responses" / "fake.jsonl"
        self.before = self.responses.read_bytes()
        self.run_json = (self.out / "run.json").read_bytes()

    def config(self, name: str, **model: Any) -> Path:
        body = fake_model(self.srv)
        for k, v in model.items():
            if v is None:
                body.pop(k, None)
            else:
                body[k] = v
        return write_config(self.tmp / name, {"fake": body})

    def assert_intact(self) -> None:
        assert self.responses.read_bytes() == self.before
        assert (self.out / "run.json").read_bytes() == self.run_json


@pytest.fixture(scope="module")
def module_server() -> Iterator[FakeServerProcess]:
    with FakeServerProcess() as srv:
        yield srv


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, module_server: FakeServerProcess) -> Path:
    tmp = tmp_path_factory.mktemp("config_template")
    items = write_items(tmp / "items.jsonl", 10)
    cfg = write_config(tmp / "good.toml", {"fake": fake_model(module_server)})
    res = run_cli("run", cfg, "--items", items, "--output", tmp / "out")
    assert res.rc == 0, res.stderr
    return tmp


@pytest.fixture
def setup(tmp_path: Path, module_server: FakeServerProcess, template: Path) -> Setup:
    return Setup(tmp_path, module_server, template)


def one_error_line(res: EngineResult) -> str:
    assert res.rc != 0, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.err_lines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


Case = Callable[[Setup], tuple[list[Any], dict[str, str] | None, list[str]]]

CASES: dict[str, Case] = {
    "missing adapter": lambda s: (["run", s.config("c.toml", adapter=None)], None,
                                  ["missing required key", "models.fake.adapter"]),
    "wrong type": lambda s: (["run", s.config("c.toml", max_concurrency="x")], None,
                             ["models.fake.max_concurrency", "expected `int", "got `str`"]),
    "unknown key": lambda s: (["run", s.config("c.toml", max_concurency=4)], None,
                              ["unknown key", "models.fake.max_concurency"]),
    "unknown adapter": lambda s: (["run", s.config("c.toml", adapter="nope")], None,
                                  ["unknown adapter", "nope"]),
    "unknown run key": lambda s: (["run", write_config(s.tmp / "c.toml", {"fake": fake_model(s.srv)},
                                                       run={"limt": 3})], None, ["unknown key", "run.limt"]),
    "not toml": lambda s: (["run", _write(s.tmp / "c.toml", "[models.fake\nadapter=")], None, ["not valid TOML"]),
    "no config file": lambda s: (["run", s.tmp / "nope.toml"], None, ["cannot read config", "nope.toml"]),
    "missing items file": lambda s: (["run", s.cfg, "--items", s.tmp / "missing.jsonl"], None,
                                     ["missing.jsonl"]),
    "items is a directory": lambda s: (["run", s.cfg, "--items", s.tmp], None, [str(s.tmp)]),
    "malformed item line": lambda s: (["run", s.cfg, "--items", _bad_items(s.tmp)], None,
                                      ["bad_items.jsonl:3:"]),
    "item without prompt": lambda s: (["run", s.cfg, "--items", _write(s.tmp / "np.jsonl", '{"id": 1}\n')], None,
                                      ["np.jsonl:1:", "messages"]),
    "duplicate item ids": lambda s: (["run", s.cfg, "--items", _write(s.tmp / "dup.jsonl",
                                                                      '{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n')],
                                     None, ["appears more than once"]),
    "missing key env var": lambda s: (["run", s.config("c.toml", api_key_env="TRUSTMH_TEST_UNSET_KEY")],
                                      None, ["TRUSTMH_TEST_UNSET_KEY", "not set"]),
    "pillars with items": lambda s: (["run", s.cfg, "--pillars", "safety"], None, ["--pillars", "--items"]),
    "unknown --models": lambda s: (["run", s.cfg, "--models", "ghost"], None, ["ghost"]),
    "negative limit": lambda s: (["run", s.cfg, "--limit", "-1"], None, ["--limit"]),
    "openai without base_url": lambda s: (["run", s.config("c.toml", base_url=None)], None,
                                          ["base_url", "required"]),
}


def _write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def _bad_items(tmp: Path) -> Path:
    return _write(tmp / "bad_items.jsonl", '{"id": 1, "prompt": "a"}\n{"id": 2, "prompt": "b"}\n{"id": 3, "prompt": }\n')


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_nonzero_records_intact(setup: Setup, case: str) -> None:
    args, env, needles = CASES[case](setup)
    if case == "pillars with items":
        args = args + ["--items", setup.items]
    if args[0] == "run" and "--items" not in args:
        args = args + ["--items", setup.items]
    res = run_cli(*args, "--output", setup.out, env=env)
    line = one_error_line(res)
    for n in needles:
        assert n in line, (n, line)
    setup.assert_intact()


def test_key_env_var_is_not_part_of_the_request_shape(setup: Setup) -> None:
    res = run_cli("run", setup.config("k.toml", api_key_env="TRUSTMH_TEST_KEY"), "--items", setup.items,
                     "--output", setup.out, env={"TRUSTMH_TEST_KEY": "k-1234567890abcdef"})
    # The model id/endpoint did not change, so the key env var alone is no new request shape.
    assert res.rc == 0, res.stderr
    verify_clean(setup.out)


def test_validate_command(tmp_path: Path) -> None:
    good = write_config(tmp_path / "g.toml", {"a": {"adapter": "openai", "base_url": "http://127.0.0.1:9/v1"}})
    res = run_cli("validate", good)
    assert res.rc == 0 and "ok" in res.stdout
    bad = write_config(tmp_path / "b.toml", {"a": {"adapter": "openai", "base_url": "http://x", "temprature": 1}})
    line = one_error_line(run_cli("validate", bad))
    assert "models.a.temprature" in line


def test_dead_server_clear_lane_message_then_resume(tmp_path: Path) -> None:
    """Connection refused on every attempt: errors are recorded, the lane stops early with one clear
    message naming what it could not reach, the exit is non-zero (no traceback), the records on disk
    stay as they were, and the same command completes the run once the server is back."""
    port = free_port()
    srv = FixedPortServer(port).start()
    try:
        items = write_items(tmp_path / "items.jsonl", 60)
        out = tmp_path / "out"
        cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(srv, max_attempts=3, max_concurrency=4)})
        assert run_cli("run", cfg, "--items", items, "--output", out, "--limit", "5").rc == 0
        responses = out / "responses" / "fake.jsonl"
        before = responses.read_bytes()
    finally:
        srv.stop()
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert res.rc == 1, res.stderr
    assert "Traceback" not in res.stderr
    stop_lines = [ln for ln in res.err_lines() if "stopped" in ln and "cannot connect" in ln]
    assert len(stop_lines) == 1 and srv.url in stop_lines[0], res.stderr
    assert responses.read_bytes() == before
    errs = read_jsonl(out / "errors" / "fake.jsonl")
    assert errs and all(e["error"]["kind"] == "transient" for e in errs)
    assert any(e.get("final") for e in errs)
    assert len(errs) < 55 * 3  # the lane stopped instead of trying every item
    doc = orjson.loads((out / "run.json").read_bytes())
    assert doc["status"] == "incomplete" and "cannot connect" in doc["lanes"]["fake"]["message"]
    srv2 = FixedPortServer(port).start()
    try:
        res = run_cli("run", cfg, "--items", items, "--output", out)
        assert res.rc == 0, res.stderr
        assert responses.read_bytes().startswith(before)
        check_complete(out, "fake", expected_texts(cfg, items, "fake"))
        verify_clean(out)
    finally:
        srv2.stop()


# -- parse_config directly --------------------------------------------------------------------------


def test_parse_config_rejects_typos_everywhere() -> None:
    base = {"models": {"m": {"adapter": "openai", "base_url": "http://x/v1"}}}
    parse_config(base, "t")
    for raw, needle in [
        ({**base, "judge": {"modles": ["m"]}}, "judge.modles"),
        ({**base, "data": {"dri": "x"}}, "data.dri"),
        ({**base, "run": {"samples": 0}}, "samples"),
        ({**base, "judge": {"models": ["ghost"]}}, "ghost"),
        ({"models": {"bad name": {"adapter": "openai", "base_url": "http://x"}}}, "bad name"),
        ({"models": {"m": {"adapter": "openai", "base_url": "http://x", "tpm_accounting": "x"}}}, "tpm_accounting"),
        ({"models": {"m": {"adapter": "openai", "base_url": "http://x", "max_concurrency": 0}}}, "max_concurrency"),
        ({"models": {"m": {"adapter": "openai", "base_url": "http://x", "requests_per_minute": -1}}}, "requests_per_minute"),
        ({"models": {"m": {"adapter": "replay"}}}, "path"),
        ({"models": "x"}, "models"),
    ]:
        with pytest.raises(ConfigError) as ei:
            parse_config(raw, "t")
        assert needle in str(ei.value), (needle, str(ei.value))
        assert "\n" not in str(ei.value)


def test_load_config_reads_toml(tmp_path: Path) -> None:
    p = write_config(tmp_path / "c.toml", {"m": {"adapter": "openai", "base_url": "http://x/v1", "temperature": 0.5,
                                               "max_concurrency": 3}}, run={"limit": 2, "samples": 2})
    cfg = load_config(p)
    assert cfg.run.limit == 2 and cfg.run.samples == 2
    m = cfg.models["m"]
    assert m.temperature == 0.5 and m.concurrency() == 3 and m.model == ""
