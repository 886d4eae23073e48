"""benchmarks/gpu_check.sh (issue 19 item 4) without a GPU: the shell parses, a machine without an
NVIDIA GPU gets one line and exit 2, bad arguments likewise, and --dry-run prints commands that the
engine's own parser accepts (and vllm bench serve's with the same prompts and rate as engine
bench), with a pillar-run config that `engine plan` accepts. The check itself needs a GPU."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import _parser
from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
BASH = shutil.which("bash") or "/bin/bash"


def check(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([BASH, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120)


def test_the_script_parses() -> None:
    res = subprocess.run([BASH, "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(("smi", "message"), [
    (None, "gpu_check: no NVIDIA GPU: nvidia-smi is not on PATH; *"),
    ("echo 'No devices were found'; exit 6", "gpu_check: no NVIDIA GPU visible (nvidia-smi -L lists none); *"),
])
def test_no_gpu_is_one_line_and_exit_2(tmp_path: Path, smi: str | None, message: str) -> None:
    """PATH holds nothing (or only an nvidia-smi that lists no GPU): the check stops before it
    needs any other command."""
    if smi is not None:
        (tmp_path / "nvidia-smi").write_text(f"#!{BASH}\n{smi}\n")
        (tmp_path / "nvidia-smi").chmod(0o755)
    res = check("--out", str(tmp_path / "out"), path=str(tmp_path))
    lines = res.stderr.splitlines()
    assert res.returncode == 2 and len(lines) == 1 and not res.stdout, res.stderr
    head = message.split("*")[0]
    assert lines[0].startswith(head) and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--num-prompts", "0"], "gpu_check: --num-prompts: expected a whole number >= 1, got '0'"),
    (["--input-len", "x"], "gpu_check: --input-len: expected a whole number >= 1, got 'x'"),
    (["--request-rate", "0"], "gpu_check: --request-rate: expected a positive number or inf, got '0'"),
    (["--request-rate", "-3"], "gpu_check: --request-rate: expected a positive number or inf, got '-3'"),
    (["--model"], "gpu_check: --model: needs a value (see --help)"),
    (["--bogus"], "gpu_check: unknown argument '--bogus' (see --help)"),
])
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    res = check(*args)
    assert res.returncode == 2 and res.stderr.splitlines() == [message], res.stderr


def _commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def test_dry_run_builds_commands_the_engine_accepts(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = check("--dry-run", "--out", str(out), "--request-rate", "2.5", "--num-prompts", "40", "--output-len", "32")
    assert res.returncode == 0, res.stderr
    serve, warm, bench, vllm, run = _commands(res.stdout)
    assert serve[1].endswith("benchmarks/gpu_serve.py") and "--extra-args=--enforce-eager" in serve
    parser = _parser()
    for argv in (warm, bench, run):
        assert argv[:3] == [sys.executable, "-m", "engine"]
        parser.parse_args(argv[3:])  # a flag the CLI does not know would exit 2 here
    b = parser.parse_args(bench[3:])
    assert (b.request_rate, b.num_prompts, b.output_len, b.ignore_eos) == (2.5, 40, 32, True)
    assert b.result_file == str(out / "engine.json") and b.items == str(out / "prompts.jsonl")

    def value(argv: list[str], flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert vllm[1:6] == ["-m", "vllm.entrypoints.cli.main", "bench", "serve", "--backend"]
    # The same server, prompts, rate, count and output length as engine bench.
    assert value(vllm, "--base-url") == b.base_url and value(vllm, "--model") == b.model
    assert value(vllm, "--dataset-path") == b.items and value(vllm, "--request-rate") == "2.5"
    assert value(vllm, "--num-prompts") == "40" and value(vllm, "--custom-output-len") == "32"
    assert "--ignore-eos" in vllm and value(vllm, "--endpoint") == "/v1/chat/completions"
    assert value(vllm, "--temperature") == "0"  # engine bench sends temperature 0; vllm 0.33 leaves it to the server
    assert value(vllm, "--percentile-metrics") == "ttft,tpot,itl,e2el"  # the engine reports all four
    assert run[3] == "run" and (out / "pillar.toml").is_file()
    assert "GPU placement" in (out / "plan.txt").read_text()  # the pillar-run config plans
