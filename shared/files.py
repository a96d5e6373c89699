"""Small file helpers without heavy imports (the edge's serving path uses them; no torch here)."""
import json
import os
from typing import Any


def write_json(path: str, obj: Any) -> None:
    """Write JSON atomically and durably (temp file, fsync, rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


__all__ = ["write_json"]
