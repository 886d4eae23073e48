"""A stand-in `vllm` package for tests of `adapter = "vllm-offline"` (put tests/fake_vllm on
PYTHONPATH): `LLM.chat` answers "offline:<model>:<last user message>" and appends each call's batch
size and CUDA_VISIBLE_DEVICES to $FAKE_VLLM_LOG. A prompt containing "TOO-LONG" fails the whole
batch, like vLLM does for a prompt longer than max_model_len. $FAKE_VLLM_CHAT_S makes each call take
that many seconds (a slow chunk, for kill tests)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

__version__ = "0.0.0-fake"


class SamplingParams:
    def __init__(self, **kw: Any) -> None:
        self.kw = kw


@dataclass
class _Completion:
    text: str
    token_ids: list[int]
    finish_reason: str = "stop"


@dataclass
class _Output:
    prompt_token_ids: list[int]
    outputs: list[_Completion] = field(default_factory=list)


class LLM:
    def __init__(self, model: str, **kw: Any) -> None:
        self.model = model
        self.kw = kw
        self._log({"event": "load", "model": model, "kw": kw})

    def _log(self, row: dict[str, Any]) -> None:
        path = os.environ.get("FAKE_VLLM_LOG")
        if path:
            row["cuda"] = os.environ.get("CUDA_VISIBLE_DEVICES")
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def chat(self, messages: list[list[dict[str, str]]], sampling_params: Any = None, use_tqdm: bool = True,
             chat_template: str | None = None, **kw: Any) -> list[_Output]:
        self._log({"event": "chat", "model": self.model, "n": len(messages), "template": chat_template is not None})
        if os.environ.get("FAKE_VLLM_CHAT_S"):
            import time

            time.sleep(float(os.environ["FAKE_VLLM_CHAT_S"]))
        outs = []
        for conv, sp in zip(messages, sampling_params, strict=True):
            last = conv[-1]["content"]
            if "TOO-LONG" in last:
                raise ValueError("The decoder prompt is longer than the maximum model length")
            text = f"offline:{self.model}:{last}"[: 4 * sp.kw.get("max_tokens", 10**6)]
            outs.append(_Output(prompt_token_ids=[1] * len(last.split()),
                                outputs=[_Completion(text=text, token_ids=[1] * len(text.split()))]))
        return outs
