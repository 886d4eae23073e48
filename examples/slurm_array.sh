#!/usr/bin/env bash
# TrustMH-Bench on a Slurm cluster: N array tasks run one shard each into one output directory on
# a shared filesystem, then a dependent job merges them (and scores, and writes the report).
#
#   bash examples/slurm_array.sh                    # on the login node: submits the array + the merge
#   N=8 CONFIG=configs/trustmh-12x8.toml OUT=/shared/runs/sweep bash examples/slurm_array.sh
#
# (`sbatch examples/slurm_array.sh` runs the array alone, N = the --array size; merge yourself.)
# Resubmitting is safe: a shard resumes from its own files (exactly-once), and merge can be rerun.
# A shard whose array task failed is reported by merge (exit 1); rerun just that task with
#   N=4 sbatch --array=<I> examples/slurm_array.sh   then   python -m engine merge "$OUT".
#
# Local models (vllm, embedded) go whole to one shard each (the config's local models, sorted by
# name, dealt round-robin), so give the tasks the GPUs those models need; API units are spread by
# request hash. Adjust the #SBATCH lines to your site.
#
#SBATCH --job-name=trustmh-shard
#SBATCH --array=1-4
#SBATCH --cpus-per-task=4
#SBATCH --gpus-per-task=1
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail

N=${N:-${SLURM_ARRAY_TASK_COUNT:-4}}
CONFIG=${CONFIG:-configs/trustmh-12x8.toml}
OUT=${OUT:-runs/trustmh-12x8}
DATA=${DATA:-}            # e.g. /shared/trustmh-data (python -m engine data fetch --to ...)
PY=${PY:-python}

if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
  # Not inside the array: submit it (N tasks) and the merge that waits for all of them.
  jid=$(sbatch --parsable --array=1-"$N" --export=ALL,N="$N",CONFIG="$CONFIG",OUT="$OUT",DATA="$DATA" "$0")
  sbatch --dependency=afterany:"$jid" --job-name=trustmh-merge --cpus-per-task=1 \
         --output="slurm-%j-merge.out" --wrap "$PY -m engine merge '$OUT' && $PY -m engine verify '$OUT'"
  echo "submitted array $jid ($N shards) and its merge"
  exit 0
fi

# No bars in a log file: a start line, a status line every 60 s (progress per stage, rate, 429s,
# errors, ETA) and the summary go to the job's output instead.
args=(run "$CONFIG" --output "$OUT" --shard "${SLURM_ARRAY_TASK_ID}/${N}" --no-progress --status-every 60)
if [ -n "$DATA" ]; then
  args+=(--data-dir "$DATA")
fi
exec "$PY" -m engine "${args[@]}"
