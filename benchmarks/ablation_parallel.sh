#!/usr/bin/env bash
# Run benchmarks.ablation as parallel processes (one per seed for stage 1, one per seed x label
# setting for stage 2) into one results folder, then write the report from the cached runs.
# For machines with many cores or a GPU; on a 2-core machine run ablation.py directly.
#   usage: benchmarks/ablation_parallel.sh OUT [extra ablation.py args, e.g. --hapt FILE]
set -euo pipefail
OUT=${1:?usage: $0 OUT [ablation.py args]}
shift
PY=${PY:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$HERE/..${PYTHONPATH:+:$PYTHONPATH}"  # python -m benchmarks.ablation from any folder
SEEDS=${SEEDS:-"0 1 2"}
THREADS1=${THREADS1:-4}
THREADS2=${THREADS2:-1}
mkdir -p "$OUT/logs"
pids=()
for s in $SEEDS; do
  "$PY" -m benchmarks.ablation --out "$OUT" --seeds "$s" --settings --threads "$THREADS1" "$@" \
    > "$OUT/logs/stage1_seed$s.log" 2>&1 & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
pids=()
for s in $SEEDS; do
  for st in "1/class" "5/class" "1%" "5%"; do
    "$PY" -m benchmarks.ablation --out "$OUT" --seeds "$s" --settings "$st" --threads "$THREADS2" --no-report "$@" \
      > "$OUT/logs/stage2_seed${s}_${st//[\/%]/_}.log" 2>&1 & pids+=($!)
  done
done
for p in "${pids[@]}"; do wait "$p"; done
# shellcheck disable=SC2086
"$PY" -m benchmarks.ablation --out "$OUT" --seeds $SEEDS "$@"
