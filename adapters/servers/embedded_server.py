"""Launcher for the embedded llama.cpp HTTP server (xllamacpp), run as its own process.

    python -m adapters.servers.embedded_server --model PATH --port N [--alias NAME] [--slots S]
        [--ctx-per-slot C] [--threads T] [--seed 0] [--http-threads H] [--log-level info]

`xllamacpp.Server(params)` loads the model, starts llama.cpp's own HTTP server on its threads
(OpenAI-compatible /v1/chat/completions, /v1/models, /health) and returns; dropping the object
shuts the HTTP server down. This module blocks until SIGTERM/SIGINT, then shuts down cleanly.

Defaults aim at reproducible output: per-slot KV cache (kv_unified off) and no prompt caching or
cache reuse, so a greedy answer is byte-identical alone or under concurrent load. The caller
passes the compute threads (the engine: every CPU the process may use, adapters.servers.llama).
It prints nothing itself; llama.cpp logs to stderr.
"""

from __future__ import annotations

import argparse
import signal
import sys

from adapters.servers.supervisor import set_parent_death_signal

# llama.cpp verbosity levels (common_params.verbosity / `-lv`): 1 error, 2 warn, 3 info, 4 debug.
LOG_LEVELS = {"error": 1, "warn": 2, "info": 3, "debug": 4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m adapters.servers.embedded_server", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="path to a GGUF file")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--alias", default="smollm2-135m", help="model name served by /v1/models")
    ap.add_argument("--slots", type=int, default=4, help="parallel sequences (continuous batching)")
    ap.add_argument("--ctx-per-slot", type=int, default=2048, help="context tokens per slot")
    ap.add_argument("--threads", type=int, default=1, help="compute threads (generation and prompt)")
    ap.add_argument("--seed", type=int, default=0, help="default sampling seed")
    ap.add_argument("--http-threads", type=int, default=0, help="HTTP worker threads (0 = auto)")
    ap.add_argument("--log-level", choices=sorted(LOG_LEVELS), default="info")
    args = ap.parse_args(argv)
    if args.slots < 1 or args.ctx_per_slot < 16 or args.threads < 1:
        ap.error("--slots and --threads must be >= 1, --ctx-per-slot >= 16")
    return args


def http_threads_for(slots: int, requested: int = 0) -> int:
    # llama.cpp's HTTP layer serves each open connection on a worker thread; threads are cheap,
    # so leave room for a client pool wider than the slot count (extra requests then queue in
    # llama.cpp's task queue, not in front of the HTTP layer).
    return requested if requested > 0 else max(16, 4 * slots)


def build_params(args: argparse.Namespace):  # -> xllamacpp.CommonParams
    import xllamacpp  # lazy: the optional `local` extra, imported only in the server process

    p = xllamacpp.CommonParams()
    p.model.path = args.model
    p.model_alias = {args.alias}  # a set in the bindings
    p.hostnames = [args.host]
    p.port = args.port
    p.n_parallel = args.slots
    p.n_ctx = args.slots * args.ctx_per_slot  # llama.cpp splits n_ctx evenly across slots
    p.kv_unified = False  # per-slot KV cache: batch neighbours cannot change a slot's numerics
    p.cache_prompt = False  # no prompt-prefix reuse: every request is computed from scratch
    p.n_cache_reuse = 0
    p.cache_ram_mib = 0  # no host-RAM prompt cache either
    p.cache_idle_slots = False
    p.ctx_shift = False  # a too-long prompt is an error (HTTP 400), never silently shifted
    p.fit_params = False  # do not let llama.cpp resize n_ctx etc. to fit memory
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.n_threads_http = http_threads_for(args.slots, args.http_threads)
    p.sampling.seed = args.seed
    p.ui = False  # no bundled web UI
    p.endpoint_slots = False
    p.endpoint_metrics = True
    p.verbosity = LOG_LEVELS[args.log_level]
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_parent_death_signal(signal.SIGTERM)
    # Block the stop signals before any llama.cpp thread exists: the threads inherit the mask, so
    # SIGTERM/SIGINT are only ever consumed by sigwait() below, in this thread.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    import xllamacpp  # lazy: the optional `local` extra, imported only in the server process

    try:
        server = xllamacpp.Server(build_params(args))  # returns once listening
    except RuntimeError as e:
        # llama.cpp has already logged the cause; keep the log tail free of a Python traceback.
        sys.stderr.write(f"embedded_server: {e}\n")
        return 1
    try:
        signal.sigwait(stop_signals)
    finally:
        del server  # the destructor stops the HTTP server and frees the model
    return 0


if __name__ == "__main__":
    sys.exit(main())
