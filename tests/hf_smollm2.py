"""A Hugging Face model folder of the embedded model (SmolLM2-135M-Instruct), for real-vLLM runs
on a machine without a GPU or internet: vLLM loads Hugging Face folders, and the only weights here
are the embedded GGUF. transformers de-quantizes the GGUF (Q4_1) into float32 weights; they are
saved with the tokenizer and its chat template (ChatML).

    python -m tests.hf_smollm2 [OUT]     # default: $TRUSTMH_CACHE/models/smollm2-135m-hf

Needs torch, transformers, gguf and accelerate (the vLLM environment has the first two).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path


def default_dir() -> Path:
    from engine.core.paths import cache_root

    return cache_root() / "models" / "smollm2-135m-hf"


def convert(out: Path | None = None) -> Path:
    """The folder (made once; a finished folder has config.json and model.safetensors)."""
    out = out or default_dir()
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapters.servers.model_files import find_smollm2_gguf

    gguf = find_smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):  # the weights are already de-quantized
        del cfg.quantization_config
    # A GGUF-loaded model refuses save_pretrained; a plain one with the same weights does not.
    model = type(loaded)(cfg)
    model.load_state_dict(loaded.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    print(convert(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
