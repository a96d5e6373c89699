#!/bin/bash
# temporary GPU check for DDP stage 1 (deleted after use)
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python3 -c "import torch,sys;print(sys.version, torch.__version__, torch.cuda.get_device_name(0), torch.distributed.is_nccl_available())"
T=/tmp/g; mkdir -p $T
python3 - <<'PY'
from shared.data import make_synthetic
make_synthetic(num_subjects=8, windows_per_subject=60, num_classes=4, modalities=(("a", 64, 3), ("b", 64, 3)), informativeness=(1.0, 0.6), seed=1).save("/tmp/g/syn")
open("/tmp/g/cfg.yaml", "w").write("epochs: 3\nbatch_size: 32\nlr: 0.01\nfusion: grid\ninput_views: 2\njitter: 0.0\nscale: 0.0\nencoder_dropout: 0.0\nnum_views: 4\n")
PY
A="--dataset /tmp/g/syn.npz --config /tmp/g/cfg.yaml --labels-per-class 4 --no-progress"
python3 -m cloud.ddp_pretrain $A --device cuda:0 --out $T/one 2>&1 | tail -2
for be in nccl gloo; do
  echo "== 2 ranks on cuda:0, backend $be"
  timeout 240 python3 -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 29611 -m cloud.ddp_pretrain $A -v --device cuda:0 --backend $be --out $T/$be 2>&1 | grep -v "^\*\|OMP_NUM" | tail -12
  python3 - $T/one $T/$be <<'PY'
import sys, torch, os
from shared.training import load_encoder_bundle
a, b = sys.argv[1:]
if not os.path.isfile(b + "/encoders.pt"): print("no encoders.pt in", b); sys.exit()
print("losses one", [round(h["loss"], 6) for h in torch.load(a + "/stage1_last.pt")["history"]])
print("losses two", [round(h["loss"], 6) for h in torch.load(b + "/stage1_last.pt")["history"]])
m = 0
for ea, eb in zip(load_encoder_bundle(a + "/encoders.pt"), load_encoder_bundle(b + "/encoders.pt")):
    for (k, va), vb in zip(ea.state_dict().items(), eb.state_dict().values()):
        m = max(m, float((va.double() - vb.double()).abs().max() / max(1.0, float(va.abs().max()))))
print("max weight diff (rel)", m)
PY
done
echo "== CPU tests on this machine's torch"
python3 -m pytest tests/shared/test_ddp.py -q -p no:cacheprovider --durations=5 2>&1 | tail -12
