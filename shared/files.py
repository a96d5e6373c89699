"""Small file helpers without heavy imports (the edge's serving path uses them; no torch here)."""
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


__all__ = ["cached_json", "write_json", "write_text"]
