"""`adapter = "vllm-offline"`: in-process `vllm.LLM`, fed in chunks.

The lane's workers (`max_concurrency`, default `offline_chunk`) each hand one request to `send`;
requests are gathered into chunks of `offline_chunk` (a partial chunk goes after GATHER_S) and
each chunk is one `LLM.chat` call in a worker thread. Every request of a chunk returns when the
chunk completes, so its records are written together and an interrupted run loses at most the
chunk in flight. Bodies are the same OpenAI-shaped dicts as the server path, and their sampling
settings map to `SamplingParams` the same way the server maps them (max_tokens, temperature,
top_p, seed, stop, JSON-schema guided decoding). The model's vLLM settings (max_model_len,
gpu_memory_utilization, dtype, seed, and `extra_args` written as for `vllm serve`) become
`vllm.LLM` keyword arguments.

`CUDA_VISIBLE_DEVICES` is process-wide, so offline lanes run one at a time in a process (a lock);
for many models on many GPUs, `adapter = "vllm"` (one server process per model) rotates better.
A chunk that fails as a whole (e.g. one prompt longer than max_model_len) is retried request by
request so that only the offending requests fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.util
import json
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Protocol

from adapters.openai_compat import openai_body
from adapters.registry import BuildContext, Built, adapter
from adapters.vllm import (
    SHAPING,
    VllmOptions,
    check_chat_template,
    check_offline_cache,
    explain_failure,
    options_of,
    vllm_gpus,
    vllm_resources,
    vllm_version,
)
from engine.core.adapter import Adapter, AdapterError
from engine.core.config import ModelConfig
from engine.core.errors import ConfigError
from engine.core.records import FinishReason, GenParams, Message, Response, Usage

MISSING = "adapter `vllm-offline` needs vLLM installed: pip install 'trustmh-engine[vllm]' (it needs a GPU)"


class VllmOfflineOptions(VllmOptions, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The same keys as `vllm` (one model entry works in both modes); the workers fill one chunk."""

    def default_concurrency(self) -> int:
        return self.offline_chunk


GATHER_S = 0.05  # a partial chunk waits this long for more requests (workers hand theirs in within ms)
_PROCESS_LOCK: asyncio.Lock | None = None  # one offline lane at a time per process (per loop)


def _lock() -> asyncio.Lock:
    global _PROCESS_LOCK
    if _PROCESS_LOCK is None:
        _PROCESS_LOCK = asyncio.Lock()
    return _PROCESS_LOCK


class _Completion(Protocol):
    text: str


class _RequestOutput(Protocol):
    """What `LLM.chat` returns per request (vLLM's RequestOutput, as far as it is read here)."""

    @property
    def outputs(self) -> Sequence[_Completion]: ...


class _LLM(Protocol):
    def chat(self, messages: list[object], sampling_params: list[object],
             **kw: object) -> Iterable[_RequestOutput]: ...


def sampling_kwargs(body: Mapping[str, object]) -> dict[str, object]:
    """SamplingParams keyword arguments from an OpenAI-shaped body (pure)."""
    kw: dict[str, object] = {}
    for src, dst in (("max_tokens", "max_tokens"), ("max_completion_tokens", "max_tokens"),
                     ("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"), ("stop", "stop")):
        if body.get(src) is not None:
            kw[dst] = body[src]
    return kw


def _json_schema(body: Mapping[str, object]) -> object:
    """The JSON schema of an OpenAI `response_format` (None: free text)."""
    rf = body.get("response_format")
    if not isinstance(rf, dict) or rf.get("type") != "json_schema":
        return None
    spec = rf.get("json_schema")
    return spec.get("schema") if isinstance(spec, dict) else None


def _sampling_params(vllm: ModuleType, body: Mapping[str, object]) -> object:
    kw = sampling_kwargs(body)
    schema = _json_schema(body)
    if schema is not None:
        try:
            from vllm.sampling_params import GuidedDecodingParams  # lazy (optional dependency); vLLM <= 0.10

            kw["guided_decoding"] = GuidedDecodingParams(json=schema)
        except ImportError:
            try:
                from vllm.sampling_params import StructuredOutputsParams  # lazy, as above; newer vLLM

                kw["structured_outputs"] = StructuredOutputsParams(json=schema)
            except ImportError:
                pass
    return vllm.SamplingParams(**kw)


def engine_args_kwargs(extra_args: Sequence[str]) -> dict[str, object]:
    """`extra_args` written for `vllm serve` as `vllm.LLM` keyword arguments (pure), so one model
    entry works in both modes: `--enforce-eager` -> enforce_eager=True, `--max-num-seqs 64` ->
    max_num_seqs=64, `--kv-cache-dtype=fp8` -> kv_cache_dtype="fp8"; values are read as JSON
    where they parse (numbers, true/false), else kept as strings."""
    kw: dict[str, object] = {}
    args = list(extra_args)
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise ConfigError(f"extra_args: `{a}` is not an option (vllm-offline maps `--name [value]` to vllm.LLM(name=value))")
        key, eq, val = a[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                val, i = args[i + 1], i + 1
            else:
                kw[key] = True
                i += 1
                continue
        try:
            kw[key] = json.loads(val)
        except ValueError:
            kw[key] = val
        i += 1
    return kw


def llm_kwargs(name: str, cfg: ModelConfig) -> dict[str, object]:
    o = options_of(cfg)
    kw: dict[str, object] = {"model": cfg.model or name, "tensor_parallel_size": o.tensor_parallel_size}
    for key, value in (("max_model_len", o.max_model_len), ("gpu_memory_utilization", o.gpu_memory_utilization),
                       ("dtype", o.dtype), ("seed", cfg.seed)):
        if value is not None:
            kw[key] = value
    kw.update(engine_args_kwargs(o.extra_args))
    return kw


class OfflineChat:
    def __init__(self, name: str, cfg: ModelConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.model = options_of(cfg).served_model_name or cfg.model or name
        self.chunk = options_of(cfg).offline_chunk
        self.llm: _LLM | None = None
        self.vllm: ModuleType | None = None
        self.template: str | None = None
        self.chunks: list[int] = []  # sizes of the LLM.chat calls made (run.json, tests)
        self.last_chunk_at: float | None = None  # wall time the last chunk finished (run.json)
        self._pending: list[tuple[dict[str, object], asyncio.Future[Response]]] = []
        self._chunks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._run_lock = asyncio.Lock()

    def build_body(self, messages: tuple[Message, ...], params: GenParams) -> dict[str, object]:
        return openai_body(self.model, messages, params)

    async def send(self, body: dict[str, object], timeout: float) -> Response:
        if self.llm is None:
            raise AdapterError("fatal", f"{self.name}: the vLLM engine is not loaded")
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending.append((body, fut))
        if len(self._pending) >= self.chunk:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(GATHER_S, self._flush)
        return await fut  # a chunk runs until done: the per-attempt timeout does not apply

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending[: self.chunk], self._pending[self.chunk:]
        if batch:
            # The loop keeps only weak references to tasks: hold each chunk's task until it is done.
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._chunks.add(task)
            task.add_done_callback(self._chunks.discard)
        if self._pending:
            self._timer = asyncio.get_running_loop().call_later(GATHER_S, self._flush)

    async def _run(self, batch: list[tuple[dict[str, object], asyncio.Future[Response]]]) -> None:
        async with self._run_lock:
            t0 = time.perf_counter()
            try:
                outs = await asyncio.to_thread(self._chat, [b for b, _ in batch])
                results: list[Response | AdapterError] = [self._response(o, time.perf_counter() - t0) for o in outs]
            except Exception as exc:
                if len(batch) == 1:
                    results = [_classify(exc)]
                else:
                    results = []
                    for body, _ in batch:
                        try:
                            (o,) = await asyncio.to_thread(self._chat, [body])
                            results.append(self._response(o, time.perf_counter() - t0))
                        except Exception as one:
                            results.append(_classify(one))
            self.last_chunk_at = time.time()
            for (_, fut), res in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(res, AdapterError):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    def _chat(self, bodies: Sequence[dict[str, object]]) -> list[_RequestOutput]:
        llm, vllm = self.llm, self.vllm
        if llm is None or vllm is None:
            raise AdapterError("fatal", f"{self.name}: the vLLM engine is not loaded")
        self.chunks.append(len(bodies))
        kw: dict[str, object] = {"use_tqdm": False}
        if self.template is not None:
            kw["chat_template"] = self.template
        return list(llm.chat([b["messages"] for b in bodies], [_sampling_params(vllm, b) for b in bodies], **kw))

    def _response(self, out: _RequestOutput, latency: float) -> Response:
        c = out.outputs[0]
        finish: FinishReason = "length" if getattr(c, "finish_reason", None) == "length" else "stop"
        usage = Usage(prompt_tokens=len(getattr(out, "prompt_token_ids", None) or ()),
                      completion_tokens=len(getattr(c, "token_ids", None) or ()))
        return Response(text=c.text, finish_reason=finish, usage=usage, latency_s=round(latency, 6),
                        server_model=self.model)

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _classify(exc: BaseException) -> AdapterError:
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    if "out of memory" in low:
        return AdapterError("transient", text[:500])
    return AdapterError("fatal", text[:500])


class OfflineEngine:
    """Loads `vllm.LLM` in this process for the lane, on the GPUs it is given (one lane at a time:
    CUDA_VISIBLE_DEVICES is process-wide); `info` is run.json's `servers.<model>`."""

    takes_gpus: bool = True

    def __init__(self, name: str, cfg: ModelConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.info: dict[str, object] = {}

    @asynccontextmanager
    async def __call__(self, adapter: Adapter, gpus: Sequence[str] | None = None) -> AsyncIterator[OfflineChat]:
        name, cfg = self.name, self.cfg
        assert isinstance(adapter, OfflineChat)
        async with _lock():
            if gpus is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
            import vllm  # lazy: heavy optional dependency, and it must see CUDA_VISIBLE_DEVICES set above

            kw = llm_kwargs(name, cfg)
            self.info.update({"llm_kwargs": kw, "vllm_version": vllm_version() or getattr(vllm, "__version__", None),
                              "offline_chunk": options_of(cfg).offline_chunk})
            try:
                adapter.llm = await asyncio.to_thread(vllm.LLM, **kw)
            except Exception as exc:
                hint = explain_failure(str(exc))
                raise RuntimeError(f"models.{name}: vllm.LLM failed to load{f' ({hint})' if hint else ''}: "
                                   f"{type(exc).__name__}: {exc}") from None
            adapter.vllm = vllm
            template = options_of(cfg).chat_template
            if template:
                adapter.template = await asyncio.to_thread(_read_text, template)
            try:
                yield adapter
            finally:
                self.info["chunks"] = len(adapter.chunks)
                self.info["last_chunk_at"] = adapter.last_chunk_at  # stopped_at also counts vLLM's shutdown
                adapter.llm = None
                await asyncio.to_thread(_free_gpu_memory)


@adapter("vllm-offline", options=VllmOfflineOptions, local=True, gpus=vllm_gpus, resources=vllm_resources,
         shaping=SHAPING)
def build_vllm_offline(ctx: BuildContext[VllmOfflineOptions]) -> Built:
    name, cfg = ctx.name, ctx.model
    if ctx.with_secrets and importlib.util.find_spec("vllm") is None:
        raise ConfigError(f"models.{name}: {MISSING}")
    if ctx.with_secrets:
        check_chat_template(name, ctx.options)
    try:
        engine_args_kwargs(ctx.options.extra_args)
    except ConfigError as exc:
        raise ConfigError(f"models.{name}.{exc}") from None
    if ctx.with_secrets:
        check_offline_cache(name, cfg)
    return Built(OfflineChat(name, cfg), OfflineEngine(name, cfg))


def _read_text(path: str) -> str:
    return Path(path).expanduser().read_text("utf-8")


def _free_gpu_memory() -> None:
    """Best effort: vLLM keeps state in the process; the next offline lane needs the memory back."""
    gc.collect()
    with contextlib.suppress(Exception):
        from vllm.distributed.parallel_state import (  # lazy: optional dependency, loaded by now
            destroy_distributed_environment,
            destroy_model_parallel,
        )

        destroy_model_parallel()
        destroy_distributed_environment()
    with contextlib.suppress(Exception):
        import torch  # lazy: optional dependency (vLLM's)

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
