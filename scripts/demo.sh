#!/usr/bin/env bash
# The end-to-end demo on real data (UCI HAPT, acc + gyro, 6 activities, subject-wise split):
#   cloud: `cloud-server serve` on loopback; a pretrain job (Cosmo stage 1 on the unlabeled training
#          windows, quality scoring, ONNX export checked against torch, publish) submitted over gRPC;
#   edge:  the published version downloaded with the client helper (resumable, sha256-verified,
#          atomic install), then Cosmo stage 2 with 1 % labels and accuracy / macro-F1 on the windows
#          of 9 held-out subjects.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/demo}
SEED=${SEED:-0}
rm -rf "$OUT"
mkdir -p "$OUT"
BIN=.venv/bin
$BIN/cloud-server -v serve --data-dir "$OUT/cloud" --listen 127.0.0.1:0 --ready-file "$OUT/port" \
  2> "$OUT/cloud-server.log" &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$OUT/port" ] && break; sleep 0.2; done
[ -s "$OUT/port" ] || { echo "cloud-server did not start; see $OUT/cloud-server.log"; exit 1; }
ADDR=127.0.0.1:$(cat "$OUT/port")
echo "== cloud-server serving on $ADDR (log: $OUT/cloud-server.log)"
echo "== submit a pretrain job on UCI HAPT (1 % of the training windows held out as the edge's labels)"
$BIN/cloud-server submit pretrain --server "$ADDR" --dataset hapt \
  --config-json "{\"label_rate\": 0.01, \"seed\": $SEED, \"model_name\": \"cosmo-hapt\"}" --wait
echo "== download the published version (client helper)"
$BIN/cloud-server download --server "$ADDR" --name cosmo-hapt --out "$OUT/edge/models"
kill -TERM $SERVER
wait $SERVER || true
trap - EXIT
echo "== cloud-server stopped; edge: the device's labels (same seed and split as the cloud's hold-out)"
$BIN/edge-agent labels --dataset hapt --label-rate 0.01 --seed "$SEED" --out "$OUT/edge/labels"
echo "== edge: Cosmo stage 2 on 1 % labels"
$BIN/edge-agent finetune --model "$OUT/edge/models/cosmo-hapt/v1" --labels "$OUT/edge/labels" \
  --out "$OUT/edge/finetuned" --seed "$SEED"
