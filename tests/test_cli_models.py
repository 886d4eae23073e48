"""Models named on the command line (`run`/`plan --model ADAPTER:MODEL --model-arg KEY=VALUE
--judge ADAPTER:MODEL`, engine/command_config.py): the tables they make, how they join a config,
the parser's rules, and one run against the fake providers that resumes and verifies like a run
of a config file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters import registry
from engine import cli
from engine.command_config import model_key, model_table, resolve
from engine.core.errors import ConfigError
from engine.testing.fake_providers import AnthropicFake, GeminiFake, reply_text, run_in_thread
from tests.conftest import ThreadServer, fake_model, read_jsonl, run_cli, verify_clean, write_config, write_items

M, A = "--model", "--model-arg"


def test_keys_are_the_last_path_part() -> None:
    assert model_key("Qwen/Qwen3-8B") == "Qwen3-8B"
    assert model_key("gpt-4o-mini") == "gpt-4o-mini"
    assert model_key("ft:gpt-4o:org:x1") == "ft-gpt-4o-org-x1"
    assert model_table(M, "vllm:Qwen/Qwen3-8B", [])[0] == "Qwen3-8B"
    assert model_table(M, "vllm:Qwen/Qwen3-8B", ["key=qwen"])[0] == "qwen"


def test_provider_defaults_come_from_the_registry_entry() -> None:
    """The conventional key variable and the lowest paid tier's limits are the adapter's registry
    facts; a base_url of its own (a self-hosted server) takes none of them."""
    for adapter, var in (("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY"), ("gemini", "GEMINI_API_KEY")):
        caps = registry.entry(adapter).caps
        name, table = model_table(M, f"{adapter}:some-model", [])
        assert name == "some-model" and table["adapter"] == adapter and table["model"] == "some-model"
        assert table["api_key_env"] == var == caps.default_api_key_env
        assert table["requests_per_minute"] == caps.default_requests_per_minute > 0
        assert table["tokens_per_minute"] == caps.default_tokens_per_minute > 0
    assert model_table(M, "openai:gpt-4o-mini", [])[1]["base_url"] == "https://api.openai.com/v1"
    _, own = model_table(M, "openai:my-model", ["base_url=http://host:8000/v1"])
    assert own == {"adapter": "openai", "model": "my-model", "base_url": "http://host:8000/v1"}
    _, local = model_table(M, "vllm:Qwen/Qwen3-8B", [])
    assert local == {"adapter": "vllm", "model": "Qwen/Qwen3-8B"}


def test_model_args_are_toml_scalars_and_override_defaults() -> None:
    _, t = model_table(M, "openai:gpt-4o", ["max_tokens=256", "temperature=0.7", "tokens_per_minute=450000",
                                             "extra=true", 'model="1.5"', "api_key_env=MY_VAR"])
    assert t["max_tokens"] == 256 and t["temperature"] == 0.7 and t["tokens_per_minute"] == 450000
    assert t["extra"] is True and t["model"] == "1.5" and t["api_key_env"] == "MY_VAR"


def test_without_a_config_the_run_has_exactly_the_models_named() -> None:
    r = resolve(None, [[M, "openai:gpt-4o-mini"], [M, "anthropic:claude-sonnet-4-5"], [M, "vllm:Qwen/Qwen3-8B"],
                       [M, "openai:my-model", "base_url=http://host:8000/v1"]])
    assert list(r.cfg.models) == ["gpt-4o-mini", "claude-sonnet-4-5", "Qwen3-8B", "my-model"] == list(r.targets)
    assert r.cfg.judge.models == ()
    assert r.cfg.models["my-model"].base_url == "http://host:8000/v1" and r.cfg.models["my-model"].api_key_env is None
    assert r.cfg.models["gpt-4o-mini"].requests_per_minute == 500
    assert r.source.startswith("--model openai:gpt-4o-mini --model anthropic:")
    # Neither a config nor --model: the shipped default; --judge alone keeps the default's models.
    default = resolve(None, [])
    assert default.source == "default" and default.targets == tuple(default.cfg.models)
    judged = resolve(None, [["--judge", "openai:gpt-4.1"]])
    assert judged.targets == default.targets and judged.cfg.judge.models == ("gpt-4.1",)


def test_with_a_config_the_models_are_added(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", {"local": fake_model("http://127.0.0.1:9/v1"),
                                             "judge0": fake_model("http://127.0.0.1:9/v1")},
                       extra='\n[judge]\nmodels = ["judge0"]\nrubrics = { "esconv-support-1to5" = "judge0" }\n')
    r = resolve(str(cfg), [[M, "openai:gpt-4o-mini"]])
    assert list(r.cfg.models) == ["local", "judge0", "gpt-4o-mini"] == list(r.targets)
    assert r.cfg.judge.models == ("judge0",) and r.source == f"{cfg} + --model openai:gpt-4o-mini"
    # --judge: the only judge (the config's rubric assignments go with the old one); not a target.
    j = resolve(str(cfg), [[M, "openai:gpt-4o-mini"], ["--judge", "openai:gpt-4.1"]])
    assert j.cfg.judge.models == ("gpt-4.1",) and j.cfg.judge.rubrics == {} and "gpt-4.1" not in j.targets
    assert resolve(str(cfg), [["--judge", "local"]]).cfg.judge.models == ("local",)
    # A target named again as the judge is one model.
    same = resolve(None, [[M, "openai:gpt-4.1"], ["--judge", "openai:gpt-4.1"]])
    assert same.targets == ("gpt-4.1",) and same.cfg.judge.models == ("gpt-4.1",)
    with pytest.raises(ConfigError, match="models key `local` is taken by the config; add --model-arg key="):
        resolve(str(cfg), [[M, "openai:local"]])
    with pytest.raises(ConfigError, match="--judge nope: not a models key"):
        resolve(str(cfg), [["--judge", "nope"]])


@pytest.mark.parametrize(("named", "message"), [
    ([[M, "gpt-4o"]], "expected ADAPTER:MODEL"),
    ([[M, "opnai:gpt-4o"]], "unknown adapter `opnai` (known: anthropic,"),
    ([[M, "openai:gpt-4o", "max_tokens"]], "a --model-arg without KEY=: expected KEY=VALUE"),
    ([[M, "openai:gpt-4o", "colour=red"]], "unknown key `models.gpt-4o.colour` for adapter `openai`"),
    ([[M, "openai:gpt-4o", "max_tokens=many"]], "key `models.gpt-4o.max_tokens`: expected `int | null`, got `str`"),
    ([[M, "openai:gpt-4o", "key=a b"]], "`a b` cannot be a models key"),
    ([[M, "openai:gpt-4o"], [M, "openai:gpt-4o", "max_tokens=9"]], "models key `gpt-4o` is taken"),
])
def test_bad_model_flags_are_one_clear_line(named: list[list[str]], message: str) -> None:
    with pytest.raises(ConfigError) as ei:
        resolve(None, named)
    assert message in str(ei.value) and "\n" not in str(ei.value)


def test_parser_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ns = cli._parser().parse_args(["run", M, "openai:a", A, "max_tokens=1", "--judge", "openai:j", A, "seed=2",
                                   M, "vllm:Q/b", "--models", "a"])
    assert ns.named_models == [[M, "openai:a", "max_tokens=1"], ["--judge", "openai:j", "seed=2"], [M, "vllm:Q/b"]]
    assert ns.models == "a"
    for argv in (["run", "--mod", "openai:a"], ["plan", "--mode", "openai:a"], ["run", A, "x=1"]):
        with pytest.raises(SystemExit) as ei:
            cli._parser().parse_args(argv)
        assert ei.value.code == 2
    assert "--model-arg needs a --model" in capsys.readouterr().err
    # A judged subtask without a judge is refused as before, now with the command-line way out.
    rc = cli.main(["run", M, "openai:x", A, "base_url=http://127.0.0.1:9/v1", "--pillars", "ethics",
                   "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "no judge is configured" in err and "--judge ADAPTER:MODEL" in err
    assert not (tmp_path / "o").exists()


def _run_args(aurl: str, gurl: str, ourl: str, items: Path, out: Path) -> list[str | Path]:
    fast = [A, "backoff_base_s=0.05", A, "max_tokens=32"]
    return ["run", M, "anthropic:claude-sonnet-4-5", A, f"base_url={aurl}", A, "api_key_env=ANTHROPIC_API_KEY", *fast,
            M, "gemini:gemini-2.5-flash", A, f"base_url={gurl}", A, "api_key_env=GEMINI_API_KEY", *fast,
            M, "openai:fake-model", A, f"base_url={ourl}", A, "key=local", *fast,
            "--items", items, "--output", out]


def test_named_models_run_resume_and_verify_against_the_fake_providers(tmp_path: Path) -> None:
    akey, gkey = "sk-ant-cli-KEYKEY-123456", "AIza-cli-KEYKEY-654321"
    afake, gfake = AnthropicFake(api_key=akey), GeminiFake(api_key=gkey)
    items = write_items(tmp_path / "items.jsonl", 5)
    prompts = {r["id"]: r["prompt"] for r in map(orjson.loads, items.read_bytes().splitlines())}
    out = tmp_path / "out"
    env = {"ANTHROPIC_API_KEY": akey, "GEMINI_API_KEY": gkey}
    osrv = ThreadServer()
    try:
        with run_in_thread(afake) as aurl, run_in_thread(gfake) as gurl:
            args = _run_args(aurl, gurl, osrv.url, items, out)
            plan = run_cli("plan", *args[1:])
            assert plan.rc == 0, plan.stderr
            assert all(m in plan.stdout for m in ("claude-sonnet-4-5", "gemini-2.5-flash", "local"))
            res = run_cli(*args, env=env)
            assert res.rc == 0, res.stderr
            sent = (afake.count, gfake.count, osrv.stats()["requests"])
            again = run_cli(*args, env=env)  # the same command resumes: nothing is sent
            assert again.rc == 0, again.stderr
            assert (afake.count, gfake.count, osrv.stats()["requests"]) == sent == (5, 5, 5)
    finally:
        osrv.stop()
    doc: dict[str, Any] = orjson.loads((out / "run.json").read_bytes())
    assert list(doc["config"]["models"]) == ["claude-sonnet-4-5", "gemini-2.5-flash", "local"]
    assert doc["spec"]["models"] == ["claude-sonnet-4-5", "gemini-2.5-flash", "local"]
    assert doc["config"]["models"]["claude-sonnet-4-5"]["api_key_env"] == "ANTHROPIC_API_KEY"
    assert doc["config_source"].startswith("--model anthropic:claude-sonnet-4-5 --model gemini:")
    for name, provider in (("claude-sonnet-4-5", AnthropicFake.provider), ("gemini-2.5-flash", GeminiFake.provider)):
        recs = read_jsonl(out / "responses" / f"{name}.jsonl")
        assert sorted(r["response"]["text"] for r in recs) == sorted(reply_text(provider, p) for p in prompts.values())
    assert len(read_jsonl(out / "responses" / "local.jsonl")) == 5
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert akey.encode() not in blob and gkey.encode() not in blob
    verify_clean(out)
