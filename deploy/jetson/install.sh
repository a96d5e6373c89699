#!/usr/bin/env bash
# Install the cosmo-har edge agent on an NVIDIA Jetson TX2 with JetPack 4.6.x
# (L4T R32.7.x, Ubuntu 18.04, Python 3.6.9, CUDA 10.2, TensorRT 8.2). See deploy/jetson/README.md.
#
# Usage: sudo deploy/jetson/install.sh [options] [PACKAGE]
#   PACKAGE         the cosmo-har repository (default: two levels above this script) or a prebuilt
#                   cosmo_har-*.whl (build it on any Python >= 3.7 machine: python3 -m pip wheel --no-deps -w dist .)
#   --prefix DIR    the venv to create (default /opt/cosmo-har/venv)
#   --user NAME     the service's system user (default cosmo-har)
#   --no-systemd    do not install the systemd unit / env file / user
#   --no-apt        do not apt-get install the system libraries
#   --force         skip the aarch64 + L4T R32 check
#   --dry-run       print every command instead of running it (nothing is changed)
#   -h, --help
# Environment:
#   TORCH_WHEEL     path or URL of NVIDIA's torch wheel (default: torch 1.10.0 for JetPack 4.6, cp36),
#                   or "system" to use a torch already visible to the system python (no install)
#   ORT_WHEEL       path or URL of an onnxruntime-gpu wheel from the Jetson Zoo (no default; unset = skip)
#   PYTHON          the interpreter the venv is made from (default /usr/bin/python3, i.e. 3.6.9)
#   BUILD_PYTHON    a Python >= 3.7 with pip, used only to build the wheel when PACKAGE is a folder
#   NV_TEGRA_RELEASE  the L4T release file to read (default /etc/nv_tegra_release)
#
# Everything is downloaded here, at install time; the installed package never downloads anything
# when it is imported or run.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# NVIDIA's torch 1.10.0 wheel for JetPack 4.6 (torch-1.10.0-cp36-cp36m-linux_aarch64.whl), the link
# given in NVIDIA's forum thread "PyTorch for Jetson".
TORCH_WHEEL_DEFAULT=https://nvidia.box.com/shared/static/fjtbno0vpo676a25cgvuqc1wty0fkkg6.whl
TORCH_WHEEL=${TORCH_WHEEL:-$TORCH_WHEEL_DEFAULT}
# onnxruntime-gpu for JetPack 4.6 is only on the Jetson Zoo (https://elinux.org/Jetson_Zoo#ONNX_Runtime):
#   onnxruntime_gpu-1.10.0-cp36-cp36m-linux_aarch64.whl  (JetPack 4.6, Python 3.6)
#   onnxruntime_gpu-1.11.0-cp36-cp36m-linux_aarch64.whl  (JetPack 4.6, Python 3.6; cp37-cp39 builds too)
# Download the one you want from that page and pass it as ORT_WHEEL=/path/to/the.whl (or its URL).
ORT_WHEEL=${ORT_WHEEL:-}
PYTHON=${PYTHON:-/usr/bin/python3}
BUILD_PYTHON=${BUILD_PYTHON:-}
NV_TEGRA_RELEASE=${NV_TEGRA_RELEASE:-/etc/nv_tegra_release}

PREFIX=/opt/cosmo-har/venv
SERVICE_USER=cosmo-har
PACKAGE=$(cd "$SCRIPT_DIR/../.." && pwd)
FORCE=0
DRY_RUN=0
DO_SYSTEMD=1
DO_APT=1

# Pins for Python 3.6 on JetPack 4.6 (the same as scripts/check_py36.sh). pip 21.3.1 is the last pip
# for Python 3.6 and the first step: Ubuntu 18.04's pip 9 knows no manylinux2014 wheels.
PIP_PIN=pip==21.3.1
SETUPTOOLS_PIN=setuptools==59.6.0
WHEEL_PIN=wheel==0.37.1  # the last releases for Python 3.6
PINS=(numpy==1.19.5 scipy==1.5.4 "PyYAML>=5.4,<6.1" "tqdm>=4.60,<4.65" dataclasses==0.8
      grpcio==1.48.2 protobuf==3.19.6 grpcio-health-checking==1.48.2 grpcio-reflection==1.48.2
      prometheus-client==0.17.1)
# NVIDIA's install notes for the torch wheel, plus the venv module and headers for source builds
APT_PACKAGES=(python3-pip python3-venv python3-dev libopenblas-base libopenmpi-dev libomp-dev wget)

SYSTEMD_UNIT=/etc/systemd/system/cosmo-edge-agent.service
ENV_DIR=/etc/cosmo-har
ENV_FILE=$ENV_DIR/edge-agent.env
STATE_DIR=/var/lib/cosmo-har

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'; }
die() { echo "install.sh: error: $*" >&2; exit 1; }
warn() { echo "install.sh: warning: $*" >&2; }
step() { echo "==> $*"; }
# run CMD...: run it, or print it under --dry-run
run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || die "--prefix needs a value"; PREFIX=$2; shift 2 ;;
    --prefix=*) PREFIX=${1#*=}; shift ;;
    --user) [ $# -ge 2 ] || die "--user needs a value"; SERVICE_USER=$2; shift 2 ;;
    --user=*) SERVICE_USER=${1#*=}; shift ;;
    --no-systemd) DO_SYSTEMD=0; shift ;;
    --no-apt) DO_APT=0; shift ;;
    --force) FORCE=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) PACKAGE=$1; shift ;;
  esac
done

# ---- 1. platform -----------------------------------------------------------------------------
step "checking the platform (aarch64, L4T R32 = JetPack 4.x)"
arch=$(uname -m)
l4t=""
if [ -r "$NV_TEGRA_RELEASE" ]; then
  l4t=$(head -n 1 "$NV_TEGRA_RELEASE")
fi
echo "    machine: $arch; $NV_TEGRA_RELEASE: ${l4t:-absent}"
if [ "$arch" != aarch64 ] || ! printf '%s\n' "$l4t" | grep -q '^# R32 '; then
  msg="this is not a Jetson on L4T R32 (JetPack 4.6.x): machine '$arch', L4T release '${l4t:-absent}'."
  msg="$msg The pins and NVIDIA's torch wheel here are for the TX2's JetPack 4.6 (aarch64, Python 3.6)."
  if [ "$FORCE" = 1 ]; then
    warn "$msg Going on because of --force."
  else
    die "$msg Run with --force to install anyway."
  fi
elif ! printf '%s\n' "$l4t" | grep -q 'REVISION: 7\.'; then
  warn "L4T R32 but not R32.7.x (JetPack 4.6.x): '$l4t'; the torch 1.10.0 wheel is built for JetPack 4.6"
fi

# ---- 2. what will be installed ---------------------------------------------------------------
if [ -f "$PACKAGE" ]; then
  case "$PACKAGE" in *.whl) ;; *) die "PACKAGE must be the repository folder or a .whl: $PACKAGE" ;; esac
elif [ -d "$PACKAGE" ]; then
  [ -f "$PACKAGE/pyproject.toml" ] || die "$PACKAGE has no pyproject.toml (not the cosmo-har repository?)"
else
  die "no such package path: $PACKAGE"
fi
if [ "$TORCH_WHEEL" = system ]; then
  torch_msg="torch: the one the system python already has (TORCH_WHEEL=system)"
else
  torch_msg="torch: $TORCH_WHEEL"
fi
if [ -n "$ORT_WHEEL" ]; then
  ort_msg="onnxruntime-gpu: $ORT_WHEEL"
else
  ort_msg="onnxruntime-gpu: skipped (ORT_WHEEL unset)"
fi
step "plan"
cat <<EOF
    venv:      $PREFIX (from $PYTHON, --system-site-packages: TensorRT's python bindings stay visible)
    $torch_msg
    $ort_msg
    pins:      $PIP_PIN $SETUPTOOLS_PIN $WHEEL_PIN ${PINS[*]}
    package:   $PACKAGE (pip install --no-deps, extra [edge])
    systemd:   $([ "$DO_SYSTEMD" = 1 ] && echo "$SYSTEMD_UNIT, $ENV_FILE, user $SERVICE_USER" || echo "skipped (--no-systemd)")
    dry run:   $([ "$DRY_RUN" = 1 ] && echo "yes: commands are printed, not run" || echo no)
EOF

if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ] && { [ "$DO_APT" = 1 ] || [ "$DO_SYSTEMD" = 1 ]; }; then
  die "apt-get and the systemd unit need root: run with sudo (or pass --no-apt --no-systemd)"
fi

# numpy/OpenBLAS on the TX2's Denver/A57 cores may die with "Illegal instruction" when OpenBLAS
# misdetects the core type; the ARMV8 kernels are safe. The systemd unit sets it too.
export OPENBLAS_CORETYPE=ARMV8

# ---- 3. system libraries ---------------------------------------------------------------------
if [ "$DO_APT" = 1 ]; then
  step "system libraries (apt)"
  run apt-get update
  run apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}"
fi

# ---- 4. venv ---------------------------------------------------------------------------------
step "venv at $PREFIX"
run mkdir -p "$(dirname "$PREFIX")"
run "$PYTHON" -m venv --system-site-packages "$PREFIX"
VPY=$PREFIX/bin/python
PIP=("$VPY" -m pip install --disable-pip-version-check)
run "${PIP[@]}" --upgrade "$PIP_PIN"
run "${PIP[@]}" --upgrade "$SETUPTOOLS_PIN" "$WHEEL_PIN"

# ---- 5. torch --------------------------------------------------------------------------------
# a box.com URL has no wheel file name, which pip needs: download it under its real name first
fetch_wheel() {  # fetch_wheel URL-OR-PATH NAME DESTDIR -> prints the local path
  local src=$1 name=$2 dest=$3
  case "$src" in
    http://*|https://*)
      run wget -q --show-progress -O "$dest/$name" "$src" >&2
      echo "$dest/$name" ;;
    *)
      [ "$DRY_RUN" = 1 ] || [ -f "$src" ] || die "no such wheel: $src"
      echo "$src" ;;
  esac
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
step "torch"
if [ "$TORCH_WHEEL" = system ]; then
  run "$VPY" -c 'import torch; print("torch", torch.__version__, "(system)")'
else
  torch_name=$(basename "$TORCH_WHEEL")
  case "$torch_name" in
    torch-*.whl) ;;
    *) torch_name=torch-1.10.0-cp36-cp36m-linux_aarch64.whl ;;  # the box.com link's real name
  esac
  torch_path=$(fetch_wheel "$TORCH_WHEEL" "$torch_name" "$tmp")
  # torch's own dependencies (numpy, typing_extensions, dataclasses) come with the pins below
  run "${PIP[@]}" --no-deps "$torch_path" typing_extensions==4.1.1
fi

# ---- 6. onnxruntime-gpu ----------------------------------------------------------------------
step "onnxruntime-gpu"
if [ -n "$ORT_WHEEL" ]; then
  ort_name=$(basename "$ORT_WHEEL")
  case "$ort_name" in onnxruntime*.whl) ;; *) die "ORT_WHEEL must name an onnxruntime_gpu-*.whl: $ORT_WHEEL" ;; esac
  ort_path=$(fetch_wheel "$ORT_WHEEL" "$ort_name" "$tmp")
  run "${PIP[@]}" "$ort_path"
else
  warn "ORT_WHEEL is not set: onnxruntime is not installed. PyPI has no onnxruntime (CPU or GPU) for" \
       "aarch64 + Python 3.6; get onnxruntime_gpu-1.10.0 or 1.11.0 (cp36) from the Jetson Zoo and rerun" \
       "with ORT_WHEEL=/path/to/the.whl. Without it the agent uses its torch path."
fi

# ---- 7. pins ---------------------------------------------------------------------------------
step "Python 3.6 pins"
run "${PIP[@]}" "${PINS[@]}"

# ---- 8. the package --------------------------------------------------------------------------
step "cosmo-har (edge extra, --no-deps)"
if [ -d "$PACKAGE" ]; then
  # the build backend (setuptools >= 61, PEP 621 metadata) needs Python >= 3.7: the wheel is pure
  # Python (py3-none-any), so build it with another interpreter and install it into the 3.6 venv
  if [ -z "$BUILD_PYTHON" ]; then
    for c in python3.8 python3.7 python3.9 python3.10; do
      if command -v "$c" >/dev/null 2>&1 && "$c" -m pip --version >/dev/null 2>&1; then
        BUILD_PYTHON=$c
        break
      fi
    done
  fi
  if [ -z "$BUILD_PYTHON" ]; then
    if [ "$DRY_RUN" = 1 ]; then
      BUILD_PYTHON=python3.8
    else
      die "building the cosmo-har wheel needs Python >= 3.7 with pip (setuptools >= 61 has no Python 3.6)." \
          "Either 'apt-get install python3.8 python3.8-venv' and rerun with BUILD_PYTHON=python3.8, or build" \
          "it elsewhere: 'python3 -m pip wheel --no-deps -w dist $PACKAGE' and pass dist/cosmo_har-*.whl here."
    fi
  fi
  run "$BUILD_PYTHON" -m pip wheel --disable-pip-version-check --no-deps -w "$tmp/dist" "$PACKAGE"
  if [ "$DRY_RUN" = 1 ]; then
    whl="$tmp/dist/cosmo_har-VERSION-py3-none-any.whl"
  else
    whl=$(ls "$tmp"/dist/cosmo_har-*.whl)
  fi
else
  whl=$PACKAGE
fi
run "${PIP[@]}" --no-deps "${whl}[edge]"
run "$VPY" -m pip check
run "$VPY" -c 'import edge.cli, shared; print("cosmo-har edge imports OK")'

# ---- 9. systemd ------------------------------------------------------------------------------
if [ "$DO_SYSTEMD" = 1 ]; then
  step "systemd unit"
  if ! id -u "$SERVICE_USER" >/dev/null 2>&1; then
    run useradd --system --home-dir "$STATE_DIR" --shell /usr/sbin/nologin "$SERVICE_USER"
  fi
  # video: /dev/nvhost-* (the GPU) on L4T
  run usermod -a -G video "$SERVICE_USER"
  run install -d -o "$SERVICE_USER" -g "$SERVICE_USER" -m 0750 "$STATE_DIR"
  run install -d -m 0755 "$ENV_DIR"
  if [ -e "$ENV_FILE" ]; then
    echo "    keeping the existing $ENV_FILE"
  else
    run install -m 0640 -g "$SERVICE_USER" "$SCRIPT_DIR/edge-agent.env.example" "$ENV_FILE"
  fi
  unit_src=$SCRIPT_DIR/cosmo-edge-agent.service
  if [ "$DRY_RUN" = 1 ]; then
    echo "+ write $SYSTEMD_UNIT from $unit_src (venv $PREFIX, user $SERVICE_USER)"
  else
    sed -e "s#/opt/cosmo-har/venv#$PREFIX#g" -e "s#^User=cosmo-har#User=$SERVICE_USER#" \
        -e "s#^Group=cosmo-har#Group=$SERVICE_USER#" "$unit_src" > "$SYSTEMD_UNIT"
    chmod 0644 "$SYSTEMD_UNIT"
  fi
  run systemctl daemon-reload
fi

# ---- 10. next steps --------------------------------------------------------------------------
step "done$([ "$DRY_RUN" = 1 ] && echo ' (dry run: nothing was changed)')"
cat <<EOF
Next steps:
  1. Edit $ENV_FILE (COSMO_CLOUD, COSMO_LABELS, COSMO_STATE).
  2. Check the stack:  $VPY -m pip install pytest==6.2.5  (the last pytest for Python 3.6), then
     COSMO_PYTHON=$VPY $SCRIPT_DIR/check.sh
     (with a shipped model: $SCRIPT_DIR/check.sh --model-dir DIR --labels-dir DIR --finetuned PT --expected ACC)
  3. Optional, for benchmarks: sudo nvpmodel -m 0 && sudo jetson_clocks   (record both: see check.sh)
  4. sudo systemctl enable --now cosmo-edge-agent && journalctl -u cosmo-edge-agent -f
Set OPENBLAS_CORETYPE=ARMV8 in any shell that runs $VPY by hand (numpy "Illegal instruction" otherwise).
EOF
