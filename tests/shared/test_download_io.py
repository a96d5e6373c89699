"""What makes a download cheap on the receiving side: shared.alloc (malloc tuned for large messages,
checked in fresh interpreters: the setting is process-wide, applied once) and shared.files.start_writeback."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Four 1 MiB message buffers alive at once, then freed (a download's queue of received chunks), 50
# times; prints whether tuning applied and the minor page faults of those 50 rounds.
ROUNDS = r"""
import resource, sys
from shared.alloc import tune_for_large_messages
applied = tune_for_large_messages() if sys.argv[1] == "tune" else None
def rounds(n):
    for _ in range(n):
        held = [b"\x01" * (1 << 20) for _ in range(4)]
        del held
rounds(2)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds(50)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _rounds(mode, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    clean.update(env, PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", ROUNDS, mode], stdout=subprocess.PIPE, check=True, env=clean,
                         universal_newlines=True).stdout.split()
    return out[0], int(out[1])


def _glibc():
    import platform
    return platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _glibc(), reason="glibc only")
def test_tuned_malloc_reuses_message_buffers_instead_of_faulting_fresh_pages():
    _, default_faults = _rounds("default")
    applied, tuned_faults = _rounds("tune")
    assert applied == "True"
    # with glibc's defaults the freed buffers are trimmed and faulted back every round (~50,000 pages
    # here); tuned, they are reused
    assert default_faults > 20 * 4 * 256 // 2
    assert tuned_faults < 256, (tuned_faults, default_faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_operator_malloc_settings_win():
    applied, _ = _rounds("tune", MALLOC_TOP_PAD_="131072")
    assert applied == "False"
    applied, _ = _rounds("tune", GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")
    assert applied == "False"
    applied, _ = _rounds("tune", COSMO_MALLOC_TUNING="0")
    assert applied == "False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux only")
def test_start_writeback_starts_the_disk_write_and_leaves_the_data_alone(tmp_path):
    from shared.files import start_writeback
    data = os.urandom(3 << 20)
    path = str(tmp_path / "f.bin")
    with open(path, "wb", buffering=0) as f:
        f.write(data)
        assert start_writeback(f.fileno(), 0, len(data))
        assert start_writeback(f.fileno(), 1 << 20, 1 << 20)  # a part of the file
        os.fsync(f.fileno())
    with open(path, "rb") as f:
        assert f.read() == data
    with open(path, "rb") as f:
        fd = f.fileno()
    assert not start_writeback(fd, 0, 1)  # a closed descriptor: refused (EBADF), nothing raised
