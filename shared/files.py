"""Small file helpers without heavy imports (the edge's serving path uses them; no torch here)."""
import ctypes
import functools
import json
import os
from typing import Any, Callable


def write_text(path: str, text: str) -> None:
    """Write ``text`` atomically (temp file + rename): a reader sees the whole file or none (ready files)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
    """Write JSON atomically and durably (temp file, fsync, rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def cached_json(path: str, fn: Callable[[], Any]) -> Any:
    """The JSON at ``path`` if it exists, else ``fn()``, written there atomically (a resumable run's
    cache: a run that finished is read back, never redone)."""
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    out = fn()
    write_json(path, out)
    return out


SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writeback of the range's dirty pages, do not wait


@functools.lru_cache(maxsize=None)
def _sync_file_range() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def start_writeback(fd: int, offset: int, nbytes: int) -> bool:
    """Start writing the dirty pages of ``nbytes`` bytes of ``fd`` from ``offset`` to disk, without
    waiting (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, what RocksDB's ``bytes_per_sync`` does):
    a file written in a stream then reaches the disk while it is written, and the final ``fsync`` has
    little left to wait for. Not a durability guarantee (``fsync`` still is). False where unavailable."""
    fn = _sync_file_range()
    return fn is not None and fn(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE) == 0


__all__ = ["cached_json", "start_writeback", "write_json", "write_text"]
