#!/usr/bin/env bash
# The end-to-end demo on real data (UCI HAPT, acc + gyro, 6 activities, subject-wise split):
#   cloud: Cosmo stage 1 on the unlabeled training windows + modality quality scoring
#   edge:  Cosmo stage 2 with 1 % labels, then accuracy and macro-F1 on held-out test subjects.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/demo}
SEED=${SEED:-0}
.venv/bin/cloud-server pretrain --dataset hapt --label-rate 0.01 --seed "$SEED" --out "$OUT/cloud" --no-resume "$@"
.venv/bin/edge-agent finetune --model "$OUT/cloud" --labels "$OUT/cloud/edge_data" --out "$OUT/edge" --seed "$SEED"
