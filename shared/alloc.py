"""glibc malloc settings for a process that sends or receives large gRPC messages (Download chunks).

Each Download message (1 MiB by default, at most 3 MiB) is a fresh buffer on both ends: the server builds
one per chunk, and the receiving grpcio assembles each in a growing ``bytearray`` and copies it into
``bytes``. With glibc's default, adaptive thresholds, freeing such buffers often shrinks the heap (trim)
or unmaps them, and the next ones fault fresh zeroed pages from the kernel again: measured on loopback
(2 cores, ``benchmarks/transfer.py``), 30,000-79,000 minor page faults per GB received and 0.45-0.55
CPU s per GB in the receiving client. With buffers of that size served from the heap and up to
``KEEP_BYTES`` of freed heap kept for reuse, it is 4-3,400 faults (median 30) and about 0.35 s per GB;
tuned on the server as well (six paired runs of a bare 256 MiB stream), the server spent 0.52-0.60 CPU
s per GB against 0.52-0.63 and the stream ran at a median 1,885 against 1,650 MB/s.

``tune_for_large_messages`` applies this once per process: ``shared.client.download_file`` calls it (so
``edge-agent`` gets it when it pulls a model) and so does ``cloud-server serve``. It costs at most
``KEEP_BYTES`` of resident memory per malloc arena that held such buffers, and does nothing where it
does not apply: not glibc, or the operator chose malloc settings already (``MALLOC_*_`` variables or
``GLIBC_TUNABLES``), which win, or set ``COSMO_MALLOC_TUNING=0``.
"""
import ctypes
import functools
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # mallopt parameters, <malloc.h>
MMAP_THRESHOLD_BYTES = 4 << 20  # above the largest Download message (3 MiB + header): those come from the heap
KEEP_BYTES = 8 << 20  # freed heap kept for the next messages (trim threshold, top pad): the memory it may cost
OPERATOR_VARS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_")


@functools.lru_cache(maxsize=None)
def tune_for_large_messages() -> bool:
    """Apply the settings above to this process (the first call does, later calls return its result;
    applying them twice is harmless). True when they are in effect; False on a non-glibc C library or
    when the operator's own malloc settings are in the environment or ``COSMO_MALLOC_TUNING=0``."""
    if os.environ.get("COSMO_MALLOC_TUNING", "1") == "0":
        return False
    if any(v in os.environ for v in OPERATOR_VARS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        log.debug("malloc settings left as the environment sets them")
        return False
    try:
        libc = ctypes.CDLL(None)
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    gnu_get_libc_version.restype = ctypes.c_char_p
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, KEEP_BYTES), (M_TOP_PAD, KEEP_BYTES)))
    log.debug("glibc %s malloc tuned for large messages: %s", gnu_get_libc_version().decode(), ok)
    return ok
