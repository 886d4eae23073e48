"""A stand-in for `vllm serve MODEL [options]` in tests: accepts vLLM's command line, prints it and
CUDA_VISIBLE_DEVICES to its log, then serves the fake OpenAI server (engine/testing/fakeserver.py) on the
given host and port, answering as `--served-model-name` (or MODEL).

Test-only flags (pass them through `extra_args`): `--stub-load-s S` sleeps before listening (a
slow load); `--stub-oom` prints a CUDA out-of-memory error and exits 1 while loading.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--stub-load-s", type=float, default=0.0)
    p.add_argument("--stub-oom", action="store_true")
    args, _rest = p.parse_known_args(argv)
    print("STUB ARGV " + " ".join(argv), flush=True)
    print("STUB CUDA_VISIBLE_DEVICES=" + os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"), flush=True)
    print(f"STUB START {time.time():.6f}", flush=True)
    if args.stub_oom:
        print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
        return 1
    time.sleep(args.stub_load_s)
    from engine.testing.fakeserver import main as serve

    return serve(["--host", args.host, "--port", str(args.port),
                  "--served-model", args.served_model_name or args.model])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
