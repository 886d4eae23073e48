#!/usr/bin/env bash
# GPU check of `python -m engine bench` (issue 19 item 4), ready to run on a machine with one NVIDIA
# GPU, network access (the models download from the Hugging Face hub) and `pip install '.[vllm]'`:
#
#   1. starts a small model (--model) through the managed `vllm` lane's own opener
#      (benchmarks/gpu_serve.py: the adapter registry's `vllm` entry, as a run starts it);
#   2. writes N synthetic prompts of --input-len tokens of that model's tokenizer (the engine's
#      `synthetic_prompts` with `--tokenizer`), the one prompt file both clients read;
#   3. loads the server with `engine bench` and with `vllm bench serve` (the same prompts, rate,
#      output length, ignore_eos, seed; `--tokenizer` the model's local folder), one after the other
#      after a warm-up;
#   4. a short 2-model pillar run (--pillars crisis, 2 items per subtask) on the offline lane
#      (`vllm-offline`: --model and --model2, one after the other), judged through the server;
#   5. stops the server and prints the ratios engine / vllm (request and output throughput, median
#      TTFT, TPOT, ITL, E2EL) against the acceptance bounds (throughput within 5%, TTFT median within
#      10%), and the pillar run's outcome.
#
# About 5-8 minutes with the defaults, model downloads and loads included. Everything lands in --out
# (default: a new folder under /tmp): prompts.jsonl, engine.json, vllm.json (vllm's result JSON),
# the logs, the pillar run's directory, summary.txt.
#
# Exit codes: 0 all steps ran (the ratios are printed, not asserted); 1 a step failed (its log is
# named); 2 this machine cannot run it (no NVIDIA GPU, no vLLM) or a bad argument: one line.
# --dry-run prints the commands the check would run and validates the pillar-run config with
# `engine plan`, without a GPU or vLLM (CI runs it: tests/test_gpu_check.py).
#
# It has not run on a GPU yet (no GPU machine with vLLM and network was at hand when it was written).

set -uo pipefail

die() { printf 'gpu_check: %s\n' "$*" >&2; exit 2; }

usage() {
    cat <<'EOF'
usage: benchmarks/gpu_check.sh [--model ID] [--model2 ID] [--python PY] [--request-rate R]
                               [--num-prompts N] [--input-len T] [--output-len T] [--out DIR] [--dry-run]

  --model ID         served model and first offline model (default Qwen/Qwen2.5-0.5B-Instruct)
  --model2 ID        second offline model of the pillar run (default HuggingFaceTB/SmolLM2-360M-Instruct)
  --python PY        interpreter with vLLM and this engine installed (default: $PYTHON, else python3)
  --request-rate R   Poisson arrivals per second for both clients, or inf (default 8)
  --num-prompts N    measured requests per client (default 200)
  --input-len T      prompt tokens (default 256)
  --output-len T     reply tokens, with ignore_eos (default 128)
  --out DIR          where the results go (default: a new folder under /tmp)
  --dry-run          print the commands and check the pillar-run config; needs no GPU
EOF
}

here="${BASH_SOURCE[0]%/*}"
[ "$here" = "${BASH_SOURCE[0]}" ] && here=.
ROOT="$(cd "$here/.." && pwd)" || die "cannot find the repository root from $0"
. "$ROOT/benchmarks/check_args.sh"

MODEL=Qwen/Qwen2.5-0.5B-Instruct
MODEL2=HuggingFaceTB/SmolLM2-360M-Instruct
PY="${PYTHON:-python3}"
RATE=8
NUM=200
IN_LEN=256
OUT_LEN=128
OUT=""
DRY=0

while [ $# -gt 0 ]; do
    case "$1" in
        --model|--model2|--python|--request-rate|--num-prompts|--input-len|--output-len|--out)
            [ $# -ge 2 ] && [ -n "$2" ] || die "$1: needs a value (see --help)"
            case "$1" in
                --model) MODEL=$2 ;;
                --model2) MODEL2=$2 ;;
                --python) PY=$2 ;;
                --request-rate) RATE=$2 ;;
                --num-prompts) NUM=$2 ;;
                --input-len) IN_LEN=$2 ;;
                --output-len) OUT_LEN=$2 ;;
                --out) OUT=$2 ;;
            esac
            shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

need_whole "--num-prompts:$NUM" "--input-len:$IN_LEN" "--output-len:$OUT_LEN"
need_rate "$RATE"

# -- can this machine run it? (one line and exit 2 when not) ------------------------------------------
if [ "$DRY" = 0 ]; then
    command -v nvidia-smi >/dev/null 2>&1 \
        || die "no NVIDIA GPU: nvidia-smi is not on PATH; run this on a machine with one NVIDIA GPU, network access and pip install '.[vllm]' (--dry-run shows the commands)"
    gpus="$(nvidia-smi -L 2>/dev/null)" || gpus=""
    [[ $gpus == *"GPU "* ]] \
        || die "no NVIDIA GPU visible (nvidia-smi -L lists none); check the driver and CUDA_VISIBLE_DEVICES (--dry-run shows the commands)"
    VLLM_VERSION="$("$PY" -c 'import vllm; print(vllm.__version__)' 2>/dev/null)" \
        || die "vLLM is not importable by $PY: pip install '.[vllm]' into it, or pass --python (--dry-run shows the commands)"
fi

ensure_out gpu-check

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
URL_FILE="$OUT/server.url"
SERVED=local

# The commands, built once: --dry-run prints them, a real run runs them.
SERVE=("$PY" "$ROOT/benchmarks/gpu_serve.py" --model "$MODEL" --served-model-name "$SERVED"
       --url-file "$URL_FILE" --log-dir "$OUT" --max-model-len 2048 --gpu-memory-utilization 0.3
       "--extra-args=--enforce-eager")
engine_bench() {  # $1: server root, then extra arguments
    local url=$1; shift
    printf '%q ' "$PY" -m engine bench --base-url "$url" --model "$SERVED" --items "$OUT/prompts.jsonl" \
        --output-len "$OUT_LEN" --ignore-eos --seed 0 "$@"
}
vllm_bench() {  # $1: server root, $2: the model's local tokenizer folder
    # openai-chat over /v1/chat/completions as engine bench; the custom dataset reads the engine's
    # prompt file ({"prompt": ...} per line) and sends each prompt as the user message, untemplated
    # (--skip-chat-template: the server applies the chat template, as for the engine's requests);
    # E2EL percentiles asked for, as engine bench always reports them (vllm's default leaves them out);
    # --temperature 0 as engine bench sends (vllm bench serve no longer sets it: the server's default).
    printf '%q ' "$PY" -m vllm.entrypoints.cli.main bench serve --backend openai-chat --base-url "$1" \
        --endpoint /v1/chat/completions --model "$SERVED" --tokenizer "$2" --dataset-name custom \
        --dataset-path "$OUT/prompts.jsonl" --custom-output-len "$OUT_LEN" --skip-chat-template \
        --num-prompts "$NUM" --request-rate "$RATE" --ignore-eos --temperature 0 --seed 0 \
        --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 90,99 \
        --save-result --result-dir "$OUT" --result-filename vllm.json
}
PILLAR_CFG="$OUT/pillar.toml"
PILLAR=("$PY" -m engine run "$PILLAR_CFG" --models first,second --pillars crisis --limit 2 --no-progress)

write_pillar_config() {  # $1: server root (the judge)
    local m
    {
        printf '[run]\noutput = "%s"\ngpus = [0]\n\n' "$OUT/pillar-run"
        for m in first second; do
            local id=$MODEL
            [ "$m" = second ] && id=$MODEL2
            printf '[models.%s]\nadapter = "vllm-offline"\nmodel = "%s"\nmax_model_len = 2048\n' "$m" "$id"
            printf 'gpu_memory_utilization = 0.3\nextra_args = ["--enforce-eager"]\nmax_tokens = 64\n'
            printf 'temperature = 0.0\nseed = 0\n\n'
        done
        printf '[models.judge]\nadapter = "openai"\nbase_url = "%s/v1"\nmodel = "%s"\nmax_concurrency = 16\n\n' "$1" "$SERVED"
        printf '[judge]\nmodels = ["judge"]\n'
    } >"$PILLAR_CFG"
}

if [ "$DRY" = 1 ]; then
    url="http://127.0.0.1:PORT"
    write_pillar_config "$url"
    echo "# 1. server (the managed vllm lane's opener), ready when $URL_FILE appears"
    printf '%q ' "${SERVE[@]}"; echo
    echo "# 2. prompts: $NUM x $IN_LEN tokens of $MODEL's tokenizer -> $OUT/prompts.jsonl"
    echo "# 3. warm-up, then engine bench and vllm bench serve at rate $RATE"
    engine_bench "$url" --num-prompts 16 --request-rate inf; echo
    engine_bench "$url" --num-prompts "$NUM" --request-rate "$RATE" --result-file "$OUT/engine.json"; echo
    vllm_bench "$url" "<local folder of $MODEL>"; echo
    echo "# 4. pillar run on the offline lane ($PILLAR_CFG)"
    printf '%q ' "${PILLAR[@]}"; echo
    # The config the check would run, validated here: no GPU or vLLM needed to plan it.
    "$PY" -m engine plan "$PILLAR_CFG" --models first,second --pillars crisis --limit 2 >"$OUT/plan.txt" 2>&1 \
        || { cat "$OUT/plan.txt" >&2; printf 'gpu_check: the pillar-run config does not plan (above)\n' >&2; exit 1; }
    echo "# pillar-run config plans: $OUT/plan.txt"
    exit 0
fi

# -- the check ------------------------------------------------------------------------------------------
step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }
fail() { printf 'gpu_check: %s\n' "$*" >&2; exit 1; }
SERVE_PID=""
cleanup() { [ -n "$SERVE_PID" ] && kill -TERM "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null; }
trap cleanup EXIT
START=$SECONDS

step "1. vLLM $VLLM_VERSION: starting $MODEL through the managed vllm lane"
"${SERVE[@]}" >"$OUT/gpu_serve.log" 2>&1 &
SERVE_PID=$!
until [ -s "$URL_FILE" ]; do
    kill -0 "$SERVE_PID" 2>/dev/null || fail "the server did not start: $(tail -n 3 "$OUT/gpu_serve.log"); log: $OUT/$SERVED.log"
    [ $((SECONDS - START)) -lt 480 ] || fail "the server was not ready after 480 s; log: $OUT/$SERVED.log"
    sleep 1
done
URL="$(<"$URL_FILE")"
echo "ready at $URL after $((SECONDS - START)) s"

step "2. prompts"
if [ -d "$MODEL" ]; then TOKENIZER="$(cd "$MODEL" && pwd)"; else
    TOKENIZER="$("$PY" -c 'import sys; from huggingface_hub import snapshot_download as s; print(s(sys.argv[1], local_files_only=True))' "$MODEL")" \
        || fail "cannot find $MODEL in the local Hugging Face cache after the server loaded it"
fi
"$PY" "$ROOT/benchmarks/bench_prompts.py" "$TOKENIZER" "$NUM" "$IN_LEN" "$OUT/prompts.jsonl" \
    || fail "could not write the prompts"

step "3. warm-up, engine bench, vllm bench serve (rate $RATE, $NUM prompts)"
eval "$(engine_bench "$URL" --num-prompts 16 --request-rate inf)" >"$OUT/warmup.log" 2>&1 || fail "warm-up failed: $OUT/warmup.log"
eval "$(engine_bench "$URL" --num-prompts "$NUM" --request-rate "$RATE" --result-file "$OUT/engine.json")" \
    2>&1 | tee "$OUT/engine-bench.log" | tail -n 30
[ -s "$OUT/engine.json" ] || fail "engine bench wrote no result: $OUT/engine-bench.log"
eval "$(vllm_bench "$URL" "$TOKENIZER")" 2>&1 | tee "$OUT/vllm-bench.log" | tail -n 30
[ -s "$OUT/vllm.json" ] || fail "vllm bench serve wrote no result: $OUT/vllm-bench.log"

step "4. pillar run: 2 models on the offline lane, judged through the server"
write_pillar_config "$URL"
T0=$SECONDS
"${PILLAR[@]}" >"$OUT/pillar-run.log" 2>&1
PILLAR_RC=$?
PILLAR_S=$((SECONDS - T0))
tail -n 5 "$OUT/pillar-run.log"

step "5. stopping the server"
cleanup; SERVE_PID=""

"$PY" - "$OUT" "$PILLAR_RC" "$PILLAR_S" "$((SECONDS - START))" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out, rc, pillar_s, total_s = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
e, v = (json.loads((out / f).read_text()) for f in ("engine.json", "vllm.json"))
print(f"\n{'metric':<26}{'engine':>12}{'vllm':>12}{'engine/vllm':>13}")
for key in ("completed", "request_throughput", "output_throughput", "median_ttft_ms", "median_tpot_ms",
            "median_itl_ms", "median_e2el_ms", "p99_e2el_ms"):
    a, b = float(e.get(key) or 0), float(v.get(key) or 0)
    print(f"{key:<26}{a:>12.2f}{b:>12.2f}{(a / b if b else float('nan')):>13.3f}")
thr = e["request_throughput"] / v["request_throughput"] if v["request_throughput"] else 0.0
ttft = e["median_ttft_ms"] / v["median_ttft_ms"] if v["median_ttft_ms"] else 0.0
print(f"request throughput within 5%: {'MET' if abs(thr - 1) <= 0.05 else 'NOT MET'} ({thr:.3f}); "
      f"median TTFT within 10%: {'MET' if abs(ttft - 1) <= 0.10 else 'NOT MET'} ({ttft:.3f})")
print(f"engine send lag p50/p99: {e.get('send_lag_p50_ms')} / {e.get('send_lag_p99_ms')} ms; "
      f"client CPU {e.get('client_cpu_fraction')}")
run = out / "pillar-run"
counts = {p.stem: sum(1 for _ in p.open()) for p in sorted((run / "responses").glob("*.jsonl"))} if run.is_dir() else {}
print(f"pillar run (vllm-offline, 2 models, crisis, 2 items per subtask): exit {rc}, {pillar_s} s, responses {counts}")
print(f"total {total_s} s (goal <= 480 s incl. model loads); files in {out}")
EOF
[ "$PILLAR_RC" = 0 ] || fail "the pillar run exited $PILLAR_RC: $OUT/pillar-run.log"
exit 0
