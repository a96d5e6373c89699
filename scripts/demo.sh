#!/usr/bin/env bash
# The end-to-end demo on real data (UCI HAPT: 30 subjects, smartphone acc + gyro at 50 Hz, 6
# activities, subject-wise split), the full cloud -> edge loop on loopback:
#   cloud: `cloud-server serve`; a pretrain job submitted over gRPC (Cosmo stage 1 on the unlabeled
#          training windows, quality scoring, ONNX export checked against torch, publish);
#   edge:  `edge-agent run` follows the registry, pulls the new version (resumable, sha256-verified),
#          fine-tunes it on its 1 % labels (Cosmo stage 2), exports and verifies ONNX, hot-swaps it into
#          its Inference service and reports to the cloud; then an app on the device sends the windows
#          of 9 held-out subjects to Predict and gets their accuracy, with and without the gyroscope.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=${OUT:-runs/demo}
SEED=${SEED:-0}
rm -rf "$OUT"
mkdir -p "$OUT"
BIN=.venv/bin
PIDS=()
trap 'for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done' EXIT
wait_port() { for _ in $(seq 300); do [ -s "$1" ] && return 0; sleep 0.2; done; echo "no port in $1"; exit 1; }

$BIN/cloud-server -v serve --data-dir "$OUT/cloud" --listen 127.0.0.1:0 --ready-file "$OUT/cloud.port" \
  2> "$OUT/cloud-server.log" & PIDS+=($!)
wait_port "$OUT/cloud.port"
CLOUD=127.0.0.1:$(cat "$OUT/cloud.port")
echo "== cloud-server on $CLOUD (log: $OUT/cloud-server.log)"

echo "== edge: the device's labels (1 % of the training windows; the cloud holds the same ones out)"
$BIN/edge-agent labels --dataset hapt --label-rate 0.01 --seed "$SEED" --out "$OUT/edge/labels"
$BIN/edge-agent -v run --cloud "$CLOUD" --name cosmo-hapt --labels "$OUT/edge/labels" --state-dir "$OUT/edge/state" \
  --listen 127.0.0.1:0 --ready-file "$OUT/edge.port" --seed "$SEED" --edge-id demo-edge \
  > "$OUT/edge-agent.out" 2> "$OUT/edge-agent.log" & PIDS+=($!)
wait_port "$OUT/edge.port"
EDGE=127.0.0.1:$(cat "$OUT/edge.port")
echo "== edge-agent running; Inference service on $EDGE (log: $OUT/edge-agent.log)"

echo "== cloud: submit a pretrain job on UCI HAPT and follow it"
$BIN/cloud-server submit pretrain --server "$CLOUD" --dataset hapt \
  --config-json "{\"label_rate\": 0.01, \"seed\": $SEED, \"model_name\": \"cosmo-hapt\"}" --wait

echo "== edge: the agent pulls, fine-tunes, verifies and swaps in the new version; an app asks for predictions"
$BIN/edge-agent predict --server "$EDGE" --windows "$OUT/edge/labels/test.npz" --n 100000 --wait 900
echo "== the same windows with the gyroscope switched off (dynamic sensor selection)"
$BIN/edge-agent predict --server "$EDGE" --windows "$OUT/edge/labels/test.npz" --n 100000 --drop gyro --show 2
$BIN/edge-agent info --state-dir "$OUT/edge/state" --name cosmo-hapt
echo "== cloud: what the edge reported"
$BIN/python - "$OUT/cloud" <<'PY'
import sys
from cloud.registry import Registry
for r in Registry(sys.argv[1]).list_reports():
    stages = ", ".join("{} {:.1f} s".format(s["stage"], s["wall_seconds"]) for s in r["stages"])
    metrics = ", ".join("{} {:.4f}".format(k, v) for k, v in sorted(r["metrics"].items()))
    print("{} {} v{}: {}; {}; {}".format(r["edge_id"], r["name"], r["version"], stages, metrics, r["execution_provider"]))
PY
