#!/usr/bin/env bash
# Create ./.venv (Python >= 3.10) and install cosmo-har with everything the demo and tests need.
# torch is pinned to the local CPU wheel: an unpinned torch would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.cosmo-har-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install -qq --upgrade pip
.venv/bin/python -m pip install -qq "torch==2.13.0"
.venv/bin/python -m pip install -qq -e ".[cloud,edge,data,dev,text]"
echo "$want" > "$stamp"
