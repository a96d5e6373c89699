"""Content hashes for lineage: of JSON-able objects (configs) and of datasets."""
import hashlib
import json
from typing import Any

import numpy as np

from .data.dataset import MultimodalDataset


def stable_hash(obj: Any) -> str:
    """sha256 of a JSON-able object (sorted keys), for lineage."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def dataset_hash(ds: MultimodalDataset) -> str:
    h = hashlib.sha256()
    for m, a in ds.x.items():
        h.update(m.encode())
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(ds.labels.tobytes())
    h.update(ds.subjects.tobytes())
    return h.hexdigest()


__all__ = ["dataset_hash", "stable_hash"]
