"""deploy/jetson/: the shell scripts parse (and pass shellcheck where it is installed), check.sh degrades
to "absent" off a Jetson, install.sh refuses a non-L4T machine without --force and changes nothing under
--dry-run, and the systemd unit carries the keys the agent needs.

Runs on any machine (the platform checks are pointed at files that do not exist) and on Python 3.6.
"""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JETSON = os.path.join(ROOT, "deploy", "jetson")
SCRIPTS = sorted(os.path.join(JETSON, f) for f in os.listdir(JETSON) if f.endswith(".sh"))
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")


def _run(args, env=None, timeout=120):
    e = dict(os.environ)
    e.update(env or {})
    # Python 3.6: no capture_output / text
    return subprocess.run(args, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout)


def _unit():
    keys = {}
    section = None
    with open(os.path.join(JETSON, "cosmo-edge-agent.service")) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
                continue
            k, _, v = line.partition("=")
            keys.setdefault((section, k), []).append(v)
    return keys


def test_scripts_exist():
    names = {os.path.basename(s) for s in SCRIPTS}
    assert {"install.sh", "check.sh"} <= names
    for f in ("cosmo-edge-agent.service", "edge-agent.env.example", "Dockerfile.l4t", "README.md"):
        assert os.path.isfile(os.path.join(JETSON, f)), f


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_bash_syntax(script):
    r = _run([BASH, "-n", script])
    assert r.returncode == 0, r.stderr
    with open(script) as f:
        text = f.read()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck():
    r = _run(["shellcheck"] + SCRIPTS)
    assert r.returncode == 0, r.stdout + r.stderr


def test_check_sh_off_jetson(tmp_path):
    """The probes print "absent" for what is missing and exit 0; the test subset is switched off."""
    r = _run([BASH, os.path.join(JETSON, "check.sh")],
             env={"COSMO_CHECK_TESTS": "0", "COSMO_PYTHON": sys.executable,
                  "NV_TEGRA_RELEASE": str(tmp_path / "no_nv_tegra_release"),
                  "COSMO_SYSFS_ROOT": str(tmp_path)})
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "L4T: absent" in out
    assert "INA3221 power rails: absent" in out
    if shutil.which("nvpmodel") is None:
        assert "nvpmodel: absent" in out
    if shutil.which("jetson_clocks") is None:
        assert "jetson_clocks: absent" in out
    if shutil.which("tegrastats") is None:
        assert "tegrastats: absent" in out
    assert "python {}.{}".format(*sys.version_info[:2]) in out
    assert "torch" in out and "onnxruntime" in out
    assert "skipped (COSMO_CHECK_TESTS=0)" in out
    assert "check.sh: OK" in out


def test_check_sh_ina3221_rails(tmp_path):
    """The INA3221 glob finds any iio:device index and prints each rail's name and power."""
    dev = tmp_path / "sys" / "bus" / "i2c" / "drivers" / "ina3221x" / "0-0041" / "iio:device7"
    dev.mkdir(parents=True)
    for n, (name, mw) in enumerate([("VDD_IN", 3056), ("VDD_SYS_CPU", 459)]):
        (dev / "rail_name_{}".format(n)).write_text(name + "\n")
        (dev / "in_power{}_input".format(n)).write_text("{}\n".format(mw))
    r = _run([BASH, os.path.join(JETSON, "check.sh")],
             env={"COSMO_CHECK_TESTS": "0", "COSMO_PYTHON": str(tmp_path / "no-python"),
                  "COSMO_SYSFS_ROOT": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "python: absent" in r.stdout and "onnxruntime: absent" in r.stdout
    assert "VDD_IN 3056 mW" in r.stdout and "VDD_SYS_CPU 459 mW" in r.stdout


def test_check_sh_rejects_partial_stack_args():
    r = _run([BASH, os.path.join(JETSON, "check.sh"), "--model-dir", "/nonexistent"],
             env={"COSMO_CHECK_TESTS": "0"})
    assert r.returncode == 2 and "go together" in r.stderr


def test_systemd_unit_keys():
    u = _unit()
    exec_start = u[("Service", "ExecStart")][0]
    assert exec_start.startswith("/") and "edge-agent run" in exec_start
    for var in ("--cloud ${COSMO_CLOUD}", "--labels ${COSMO_LABELS}", "--state-dir ${COSMO_STATE}"):
        assert var in exec_start
    assert u[("Service", "Restart")] == ["on-failure"]
    assert ("Service", "RestartSec") in u
    assert u[("Service", "EnvironmentFile")] == ["/etc/cosmo-har/edge-agent.env"]
    assert "OPENBLAS_CORETYPE=ARMV8" in u[("Service", "Environment")]
    assert u[("Service", "User")] != ["root"]
    assert "network-online.target" in u[("Unit", "After")][0]
    assert u[("Install", "WantedBy")] == ["multi-user.target"]
    with open(os.path.join(JETSON, "edge-agent.env.example")) as f:
        env = f.read()
    for var in ("COSMO_CLOUD=", "COSMO_LABELS=", "COSMO_STATE="):
        assert "\n" + var in env


def test_env_example_is_safe_by_default():
    """The shipped settings, parsed by the real CLI: the Inference service is not reachable from other
    hosts (loopback or a unix socket), or it has credentials; never --insecure."""
    from edge.cli import build_parser
    from shared.rpc.auth import is_loopback
    with open(os.path.join(JETSON, "edge-agent.env.example")) as f:
        args = [line.split("=", 1)[1] for line in f if line.startswith("COSMO_AGENT_ARGS=")][0].split()
    a = build_parser().parse_args(["run", "--cloud", "c:1", "--labels", "l", "--state-dir", "s"] + args)
    assert not a.insecure
    assert is_loopback(a.listen) or a.listen_token_file or a.listen_tls_cert


def test_dockerfile():
    with open(os.path.join(JETSON, "Dockerfile.l4t")) as f:
        text = f.read()
    assert "\nFROM nvcr.io/nvidia/l4t-pytorch:r32.7.1-pth1.10-py3\n" in text
    assert 'ENTRYPOINT ["edge-agent"]' in text and "--runtime nvidia" in text
    for pin in ("numpy==1.19.5", "grpcio==1.48.2", "protobuf==3.19.6"):
        assert pin in text


def test_install_sh_refuses_non_l4t(tmp_path):
    prefix = tmp_path / "venv"
    r = _run([BASH, os.path.join(JETSON, "install.sh"), "--dry-run", "--prefix", str(prefix)],
             env={"NV_TEGRA_RELEASE": str(tmp_path / "no_nv_tegra_release")})
    assert r.returncode == 1
    assert "not a Jetson on L4T R32" in r.stderr and "--force" in r.stderr
    assert "==> plan" not in r.stdout
    assert not prefix.exists()


def test_install_sh_force_dry_run(tmp_path):
    prefix = tmp_path / "venv"
    r = _run([BASH, os.path.join(JETSON, "install.sh"), "--dry-run", "--force", "--prefix", str(prefix)],
             env={"NV_TEGRA_RELEASE": str(tmp_path / "no_nv_tegra_release"), "TORCH_WHEEL": "", "ORT_WHEEL": ""})
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "Going on because of --force" in r.stderr
    assert "ORT_WHEEL is not set" in r.stderr
    assert "venv --system-site-packages " + str(prefix) in out
    assert "fjtbno0vpo676a25cgvuqc1wty0fkkg6.whl" in out  # NVIDIA's torch 1.10.0 wheel, the default
    for pin in ("numpy==1.19.5", "grpcio==1.48.2", "protobuf==3.19.6", "grpcio-health-checking==1.48.2",
                "grpcio-reflection==1.48.2", "scipy==1.5.4", "dataclasses"):
        assert pin in out
    assert "--no-deps" in out and "[edge]" in out.replace("\\[edge\\]", "[edge]")
    assert "cosmo-edge-agent.service" in out and "systemctl daemon-reload" in out
    assert "dry run: nothing was changed" in out
    assert not prefix.exists()


def test_install_sh_wheel_overrides(tmp_path):
    whl = tmp_path / "onnxruntime_gpu-1.11.0-cp36-cp36m-linux_aarch64.whl"
    whl.write_text("")
    r = _run([BASH, os.path.join(JETSON, "install.sh"), "--dry-run", "--force", "--no-systemd", "--no-apt",
              "--prefix", str(tmp_path / "venv")],
             env={"NV_TEGRA_RELEASE": str(tmp_path / "none"), "TORCH_WHEEL": "system", "ORT_WHEEL": str(whl)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(TORCH_WHEEL=system)" in r.stdout and "nvidia.box.com" not in r.stdout
    assert str(whl) in r.stdout and "ORT_WHEEL is not set" not in r.stderr
    assert "+ apt-get" not in r.stdout and "+ systemctl" not in r.stdout


def test_install_sh_unknown_option():
    r = _run([BASH, os.path.join(JETSON, "install.sh"), "--bogus"])
    assert r.returncode == 1 and "unknown option --bogus" in r.stderr
