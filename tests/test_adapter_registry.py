"""The adapter registry and the per-adapter config: what run.json records for a config, and every
model's fingerprint, stay byte for byte what main wrote before the registry (fixtures computed on
main at e730f57), so old run directories resume; each adapter takes only its own keys."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from adapters import registry
from adapters.embedded import EmbeddedOptions
from adapters.vllm import VllmOptions
from engine.config import config_to_builtins, default_config, load_config, parse_config
from engine.core.config import AdapterOptions, ModelConfig
from engine.core.errors import ConfigError
from engine.runstate import model_fingerprint

PIN = Path(__file__).parent / "fixtures" / "config_pin"


def _run_json_bytes(doc: object) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)  # as write_run_json


@pytest.mark.parametrize("tag", ["default", "models"])
def test_run_json_config_and_fingerprints_are_pinned(tag: str) -> None:
    cfg = default_config() if tag == "default" else load_config(PIN / "models.toml")
    assert _run_json_bytes(config_to_builtins(cfg)) == (PIN / f"{tag}.config.json").read_bytes()
    fingerprints = {n: model_fingerprint(m) for n, m in cfg.models.items()}
    assert fingerprints == orjson.loads((PIN / f"{tag}.fingerprints.json").read_bytes())
    # What verify, score, judge and merge read back from run.json is the same config.
    assert parse_config(orjson.loads((PIN / f"{tag}.config.json").read_bytes()), "run.json", stored=True) == cfg


def test_lane_defaults_come_from_the_adapter() -> None:
    cfg = load_config(PIN / "models.toml")
    got = {n: (m.concurrency(), m.context_window()) for n, m in cfg.models.items()}
    assert got == {"gpt": (8, None), "local": (256, 4096), "off": (64, 2048), "emb": (2, 1024), "claude": (16, None),
                   "gem": (16, None), "rec": (16, None)}
    assert {n: registry.entry(m.adapter).local for n, m in cfg.models.items()} == {
        "gpt": False, "local": True, "off": True, "emb": True, "claude": False, "gem": False, "rec": False}


def test_keys_of_another_adapter_are_an_error_naming_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"models": {"g": {"adapter": "openai", "base_url": "http://h/v1", "slots": 4}}}, "c.toml")
    msg = str(exc.value)
    assert "unknown key `models.g.slots` for adapter `openai`" in msg and "allowed here:" in msg
    assert "base_url" in msg and "slots" not in msg.split("allowed here:")[1]
    # A stored config (run.json) carries every format-1 key for every model: read back, not refused.
    stored = config_to_builtins(parse_config({"models": {"g": {"adapter": "openai", "base_url": "http://h/v1"}}}, "c"))
    assert stored["models"]["g"]["slots"] == 4
    assert parse_config(stored, "run.json", stored=True).models["g"].options == AdapterOptions()


def test_unknown_adapter_lists_the_registered_ones() -> None:
    with pytest.raises(ConfigError, match=r"models.m.adapter: unknown adapter `nope` \(known: anthropic, embedded, "):
        parse_config({"models": {"m": {"adapter": "nope"}}}, "c.toml")


def test_required_keys_and_option_checks() -> None:
    with pytest.raises(ConfigError, match=r"models.r.path: required for adapter `replay`"):
        parse_config({"models": {"r": {"adapter": "replay"}}}, "c.toml")
    with pytest.raises(ConfigError, match=r"models.e.tensor_parallel_size: must be >= 1"):
        parse_config({"models": {"e": {"adapter": "embedded", "tensor_parallel_size": 0}}}, "c.toml")


def test_a_name_registered_twice_is_an_error() -> None:
    with pytest.raises(ConfigError, match="adapter `openai` is registered twice"):
        @registry.adapter("openai")
        def again(ctx: registry.BuildContext[AdapterOptions]) -> registry.Built:
            raise AssertionError


def test_entry_answers_placement_questions() -> None:
    vllm = ModelConfig(adapter="vllm", options=VllmOptions(tensor_parallel_size=2))
    assert registry.entry("vllm").lane_gpus(vllm, pinned=False) == 2
    remote = ModelConfig(adapter="vllm", base_url="http://gpu:8000/v1", options=VllmOptions(tensor_parallel_size=2))
    assert registry.entry("vllm").lane_gpus(remote, pinned=False) == 0
    emb = ModelConfig(adapter="embedded", options=EmbeddedOptions(threads=3))
    assert [registry.entry("embedded").lane_gpus(emb, pinned=p) for p in (False, True)] == [0, 1]
    assert registry.entry("embedded").lane_resources(emb) == registry.Resources(cpus=3)
    with pytest.raises(ConfigError, match="takes VllmOptions"):
        registry.entry("vllm").lane_gpus(ModelConfig(adapter="vllm"), pinned=False)
