"""Argument checks (raising ``InvalidArgument`` naming the field) and JSON/time helpers of the registry."""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared.errors import DataError, clip
from shared.manifest import check_file_path, sha256_file

from .errors import InvalidArgument
from .limits import ALIAS_RE, NAME_RE


def _utc_now() -> str:
    return _utc_ago(0.0)


def _check_name(name: Any, field: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidArgument(field, "model name {} must match {}".format(clip(name), NAME_RE.pattern))
    return name


def _check_alias(alias: Any, field: str = "alias") -> str:
    # All-digit aliases are refused so that "3" is never ambiguous between a version and an alias.
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias) or alias.isdigit():
        raise InvalidArgument(field, "alias {} must match {} and not be all digits".format(clip(alias), ALIAS_RE.pattern))
    return alias


def _check_version(version: Any, field: str = "version") -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidArgument(field, "version {} must be an int >= 1".format(clip(version)))
    return version


def _check_text(value: Any, field: str, max_len: int = 1024, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value) or len(value) > max_len:
        raise InvalidArgument(field, "{} must be a {}string of at most {} characters".format(
            clip(value), "" if empty else "non-empty ", max_len))
    return value


def _check_rel_path(path: Any, field: str) -> str:
    """A file's name inside a version (``shared.manifest.check_file_path``), as ``InvalidArgument``."""
    try:
        return check_file_path(path, field)
    except DataError as e:
        raise InvalidArgument(field, str(e).split(": ", 1)[1]) from None


def _plain_json(value: Any, field: str) -> Any:
    """A deep copy of ``value`` as plain JSON types; ``InvalidArgument`` names the first bad field.

    numpy arrays and scalars (anything with ``tolist``) are converted; NaN and infinities are refused
    because the stored manifest must be strict JSON for every client.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(field, "{} is not a finite number (JSON has no NaN/Infinity)".format(value))
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidArgument(field, "key {} is not a string".format(clip(k)))
            out[k] = _plain_json(v, "{}.{}".format(field, k))
        return out
    if isinstance(value, (list, tuple)):
        return [_plain_json(v, "{}[{}]".format(field, i)) for i, v in enumerate(value)]
    if hasattr(value, "tolist"):
        return _plain_json(value.tolist(), field)
    raise InvalidArgument(field, "{} is not JSON-serializable".format(type(value).__name__))


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def _hash_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file."""
    return sha256_file(str(path)), path.stat().st_size


def _fsync_dir(path: Path) -> None:
    """Make a rename or create in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)



def _utc_ago(seconds: float) -> str:
    """The timestamp ``seconds`` ago, in ``_utc_now``'s format (so the strings compare like the times)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - seconds))
