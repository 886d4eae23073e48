#!/usr/bin/env python
"""Holds one vLLM server up for benchmarks/gpu_check.sh, started the way a run's managed `vllm`
lane starts it: the adapter registry builds the `vllm` model and its server opener (VllmServer:
the same `vllm serve` command line, log file, start-up timeout, failure hints and stop), so what
`engine bench` and `vllm bench serve` load is what a run would load.

    python benchmarks/gpu_serve.py --model Qwen/Qwen2.5-0.5B-Instruct --served-model-name local \
        --url-file OUT/url --log-dir OUT

Writes the server root (http://127.0.0.1:PORT) to --url-file once /health answers, then holds the
server until SIGTERM or SIGINT and stops it (the whole process group). A start that fails prints the
opener's one-line reason and exits 1. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters import registry  # noqa: E402
from adapters.vllm import VllmOptions  # noqa: E402
from engine.core.config import ModelConfig  # noqa: E402
from engine.core.errors import EngineError  # noqa: E402


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(adapter="vllm", model=args.model, seed=0, options=VllmOptions(
        served_model_name=args.served_model_name, max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization, extra_args=tuple(args.extra_args.split()),
        startup_timeout_s=args.startup_timeout_s,
        vllm_command=tuple(args.vllm_command.split()) if args.vllm_command else None))


async def serve(args: argparse.Namespace) -> int:
    built = registry.make_adapter(args.served_model_name, model_config(args), Path(args.log_dir))
    if built.server is None:
        raise EngineError("the vllm adapter built no server opener")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with built.server(built.adapter, None) as server:
        root = f"http://127.0.0.1:{server.port}"  # type: ignore[attr-defined]  # VllmServer yields a ManagedServer
        tmp = Path(args.url_file + ".tmp")
        tmp.write_text(root + "\n")
        tmp.replace(args.url_file)  # whole or absent: the script polls for it
        await stop.wait()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="Hugging Face id or folder")
    ap.add_argument("--served-model-name", default="local")
    ap.add_argument("--url-file", required=True)
    ap.add_argument("--log-dir", required=True, help="the server's log goes to DIR/<served-model-name>.log")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    ap.add_argument("--extra-args", default="", help="more `vllm serve` arguments, space-separated")
    ap.add_argument("--startup-timeout-s", type=float, default=420.0)
    ap.add_argument("--vllm-command", default="", help="the launch command instead of `vllm serve` (the `vllm_command` "
                    "key), e.g. `python tests/vllm_stub.py` to try this script without a GPU")
    args = ap.parse_args()
    try:
        return asyncio.run(serve(args))
    except EngineError as exc:
        sys.stderr.write(f"gpu_serve: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
