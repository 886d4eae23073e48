#!/usr/bin/env python
"""Writes the prompts file that `engine bench` and `vllm bench serve` both read in the GPU and client
checks (gpu_check.sh, vllm_client_check.sh): N synthetic prompts of exactly LENGTH tokens of the
tokenizer in TOKENIZER_DIR, one {"id", "prompt"} object per line.

    python benchmarks/bench_prompts.py TOKENIZER_DIR N LENGTH OUT.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.bench.setup import synthetic_prompts  # noqa: E402 - after the path set-up above
from engine.tokens import load_tokenizer  # noqa: E402


def main(argv: list[str]) -> int:
    tokenizer_dir, n, length, path = argv[0], int(argv[1]), int(argv[2]), argv[3]
    tok = load_tokenizer(tokenizer_dir)
    with open(path, "w") as f:
        for i, msgs in enumerate(synthetic_prompts(n, length, seed=0, tokenizer=tok)):
            f.write(json.dumps({"id": f"p{i}", "prompt": msgs[0].content}) + "\n")
    print(f"{n} prompts of {length} tokens ({tok.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
