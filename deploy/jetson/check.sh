#!/usr/bin/env bash
# Check a Jetson TX2 (JetPack 4.6.x) for the cosmo-har edge agent: platform, power mode, clocks, CUDA via
# torch, onnxruntime providers, TensorRT, energy meters; then the edge test subset and, given a model,
# scripts/check_tx2_stack.py. Every probe prints "absent" when its tool is missing, so this also runs on
# a machine that is not a Jetson (there only the tests and the stack check can fail it).
#
# Usage: deploy/jetson/check.sh [--onnx MODEL.onnx]
#            [--model-dir DIR --labels-dir DIR --finetuned PT --expected ACCURACY]
#   --onnx FILE      open a real onnxruntime session on FILE and print session.get_providers()
#                    (a CUDA provider that fails to load falls back to CPU silently: this shows it)
#   --model-dir ... --expected ...   the four arguments of scripts/check_tx2_stack.py (all or none)
# Environment:
#   COSMO_PYTHON        interpreter to probe and test with (default /opt/cosmo-har/venv/bin/python when
#                       present, else python3)
#   COSMO_CHECK_TESTS   1 (default) runs the test subset, 0 skips it
#   COSMO_TEST_ARGS     pytest arguments, as shell words (default below: edge + shared, no slow, no DDP)
#   NV_TEGRA_RELEASE    L4T release file (default /etc/nv_tegra_release)
#   COSMO_SYSFS_ROOT    prefix for the INA3221 sysfs glob (default empty, i.e. the real /sys)
# Exit status: 0 unless the test subset or the stack check failed (or an argument was wrong).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)

if [ -n "${COSMO_PYTHON:-}" ]; then
  PY=$COSMO_PYTHON
elif [ -x /opt/cosmo-har/venv/bin/python ]; then
  PY=/opt/cosmo-har/venv/bin/python
else
  PY=python3
fi
CHECK_TESTS=${COSMO_CHECK_TESTS:-1}
# the tests that need only the TX2 stack: not test_agent.py (it imports cloud/, the Python 3.10+ tier),
# not test_models.py (ONNX export and onnxruntime), not DDP, not the packaged HAPT copy (a data extra)
DEFAULT_TEST_ARGS='tests/edge tests/shared -m "not slow" -k "not ddp and not packaged"
  --ignore=tests/edge/test_agent.py --ignore=tests/shared/test_models.py'
TEST_ARGS=${COSMO_TEST_ARGS:-$DEFAULT_TEST_ARGS}
NV_TEGRA_RELEASE=${NV_TEGRA_RELEASE:-/etc/nv_tegra_release}
INA_DIR=${COSMO_SYSFS_ROOT:-}/sys/bus/i2c/drivers/ina3221x
# numpy/OpenBLAS "Illegal instruction" on the TX2 otherwise (harmless elsewhere)
export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-ARMV8}

ONNX=""
MODEL_DIR="" LABELS_DIR="" FINETUNED="" EXPECTED=""
die() { echo "check.sh: error: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --onnx) [ $# -ge 2 ] || die "$1 needs a value"; ONNX=$2; shift 2 ;;
    --model-dir) [ $# -ge 2 ] || die "$1 needs a value"; MODEL_DIR=$2; shift 2 ;;
    --labels-dir) [ $# -ge 2 ] || die "$1 needs a value"; LABELS_DIR=$2; shift 2 ;;
    --finetuned) [ $# -ge 2 ] || die "$1 needs a value"; FINETUNED=$2; shift 2 ;;
    --expected) [ $# -ge 2 ] || die "$1 needs a value"; EXPECTED=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
stack_args=0
for v in "$MODEL_DIR" "$LABELS_DIR" "$FINETUNED" "$EXPECTED"; do
  [ -z "$v" ] || stack_args=$((stack_args + 1))
done
[ "$stack_args" = 0 ] || [ "$stack_args" = 4 ] || \
  die "--model-dir, --labels-dir, --finetuned and --expected go together (scripts/check_tx2_stack.py)"

section() { printf '\n== %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }
failures=()

section "machine"
echo "uname: $(uname -srm)"
if [ -r "$NV_TEGRA_RELEASE" ]; then
  echo "L4T: $(head -n 1 "$NV_TEGRA_RELEASE")"
else
  echo "L4T: absent ($NV_TEGRA_RELEASE)"
fi
if [ -r /proc/device-tree/model ]; then
  echo "model: $(tr -d '\0' < /proc/device-tree/model)"
fi

section "power mode and clocks"
if have nvpmodel; then
  echo "nvpmodel -q:"
  { timeout 10 nvpmodel -q 2>&1 || echo "  (nvpmodel -q failed: needs root?)"; } | sed 's/^/  /'
else
  echo "nvpmodel: absent"
fi
if have jetson_clocks; then
  echo "jetson_clocks --show:"
  { timeout 10 jetson_clocks --show 2>&1 || echo "  (jetson_clocks --show failed: needs root?)"; } | sed 's/^/  /'
else
  echo "jetson_clocks: absent"
fi

section "python stack ($PY)"
if ! have "$PY"; then
  echo "python: absent ($PY)"
  PY=""
else
  "$PY" - <<'PYEOF' || echo "python probe failed"
import sys
print("python {} ({})".format(sys.version.split()[0], sys.executable))
for name in ("numpy", "scipy", "grpc", "google.protobuf", "yaml"):
    try:
        mod = __import__(name, fromlist=["__version__"])
        print("{}: {}".format(name, getattr(mod, "__version__", "?")))
    except Exception as e:  # noqa: BLE001 - report anything, keep going
        print("{}: absent ({})".format(name, type(e).__name__))
try:
    import torch
except Exception as e:  # noqa: BLE001
    print("torch: absent ({})".format(type(e).__name__))
else:
    ok = torch.cuda.is_available()
    print("torch: {} (CUDA build {}, cuDNN {})".format(
        torch.__version__, torch.version.cuda,
        torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None))
    print("torch.cuda.is_available(): {}".format(ok))
    if ok:
        x = torch.randn(64, 64, device="cuda")
        print("CUDA device: {}; 64x64 matmul on it: sum {:.3f}".format(
            torch.cuda.get_device_name(0), float((x @ x).sum())))
try:
    import tensorrt
    print("tensorrt: {}".format(tensorrt.__version__))
except Exception as e:  # noqa: BLE001
    print("tensorrt: absent ({})".format(type(e).__name__))
PYEOF
fi

section "onnxruntime"
if [ -n "$PY" ]; then
  "$PY" - "$ONNX" <<'PYEOF' || echo "onnxruntime probe failed"
import sys
try:
    import onnxruntime as ort
except Exception as e:  # noqa: BLE001
    print("onnxruntime: absent ({})".format(type(e).__name__))
    sys.exit(0)
avail = ort.get_available_providers()
print("onnxruntime {}: get_available_providers() = {}".format(ort.__version__, avail))
model = sys.argv[1] if len(sys.argv) > 1 else ""
if not model:
    print("session providers: not checked (pass --onnx MODEL.onnx)")
    sys.exit(0)
want = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
sess = ort.InferenceSession(model, providers=want)
got = sess.get_providers()
print("session on {}: asked {}, got {}".format(model, want, got))
if "CUDAExecutionProvider" in want and "CUDAExecutionProvider" not in got:
    print("WARNING: the CUDA provider did not load; this session runs on the CPU")
PYEOF
else
  echo "onnxruntime: absent (no python)"
fi

section "energy meters"
if have tegrastats; then
  echo "tegrastats: $(command -v tegrastats)"
  line=$(timeout 3 tegrastats --interval 500 2>/dev/null | head -n 1 || true)
  echo "  one sample: ${line:-(none: needs root?)}"
else
  echo "tegrastats: absent"
fi
shopt -s nullglob
ina=("$INA_DIR"/*/iio:device*/in_power0_input)
shopt -u nullglob
if [ ${#ina[@]} -eq 0 ]; then
  echo "INA3221 power rails: absent ($INA_DIR/*/iio:device*/in_power0_input)"
else
  for f in "${ina[@]}"; do
    d=$(dirname "$f")
    for n in 0 1 2; do
      [ -r "$d/in_power${n}_input" ] || continue
      name=$(cat "$d/rail_name_$n" 2>/dev/null || echo "channel $n")
      echo "INA3221 $d: $name $(cat "$d/in_power${n}_input" 2>/dev/null || echo '?') mW"
    done
  done
fi

section "edge test subset"
if [ "$CHECK_TESTS" = 0 ]; then
  echo "skipped (COSMO_CHECK_TESTS=0)"
elif [ -z "$PY" ] || ! "$PY" -c 'import pytest' >/dev/null 2>&1; then
  echo "pytest: absent (pip install pytest==6.2.5 into the venv: the last pytest for Python 3.6)"
  failures+=("tests (no pytest)")
else
  test_args=()
  eval "test_args=($TEST_ARGS)"
  printf '%s -m pytest -q' "$PY"; printf ' %q' "${test_args[@]}"; printf '\n'
  # pytest 6 (Python 3.6) ignores pyproject's pythonpath option: PYTHONPATH does its job
  if ! (cd "$REPO" && PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} "$PY" -m pytest -q -p no:cacheprovider \
        -W ignore::pytest.PytestConfigWarning "${test_args[@]}"); then
    failures+=("tests")
  fi
fi

section "TX2 stack check (scripts/check_tx2_stack.py)"
if [ "$stack_args" = 0 ]; then
  echo "skipped (pass --model-dir, --labels-dir, --finetuned and --expected)"
elif ! "$PY" "$REPO/scripts/check_tx2_stack.py" "$MODEL_DIR" "$LABELS_DIR" "$FINETUNED" "$EXPECTED"; then
  failures+=("check_tx2_stack.py")
fi

section "summary"
if [ ${#failures[@]} -gt 0 ]; then
  echo "FAILED: ${failures[*]}"
  exit 1
fi
echo "check.sh: OK (probes above are informational)"
