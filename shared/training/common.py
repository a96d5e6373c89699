"""Helpers shared by the training loops: seeding, devices, batching, metrics, config loading."""
import hashlib
import json
import logging
import os
import random
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterator, List, Optional, Type, TypeVar

import numpy as np
import torch
import yaml
from dataclasses import asdict, fields, is_dataclass

from ..data.dataset import MultimodalDataset
from ..errors import ConfigError, clip
from ..files import write_json  # noqa: F401  (re-exported: the training code's JSON writer)

log = logging.getLogger(__name__)
T = TypeVar("T")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; ``"cuda"`` fails fast when CUDA is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device {!r} requested but CUDA is not available (torch {})".format(name, torch.__version__))
    try:
        return torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError("device {}: expected auto, cpu, cuda or cuda:N".format(clip(name))) from None


def to_tensors(ds: MultimodalDataset, idx: Optional[np.ndarray] = None,
               device: torch.device = torch.device("cpu")) -> List[torch.Tensor]:
    """Windows of every modality as float tensors ``[B, T_j, C_j]`` (all windows, or those at ``idx``)."""
    return [torch.from_numpy(a if idx is None else a[idx]).to(device) for a in ds.x.values()]


def iterate_batches(n: int, batch_size: int, shuffle: bool, rng: Optional[np.random.RandomState] = None,
                    drop_last: bool = False) -> Iterator[np.ndarray]:
    order = (rng or np.random).permutation(n) if shuffle else np.arange(n)
    stop = n - (n % batch_size) if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        yield order[i:i + batch_size]


def augment(xs: List[torch.Tensor], jitter: float, scale: float) -> List[torch.Tensor]:
    """Per-window random scaling ``N(1, scale)`` per channel and additive Gaussian jitter ``N(0, jitter)``.

    Applied to normalized windows (so sigmas are in standard-deviation units).
    """
    if jitter <= 0 and scale <= 0:
        return xs
    out = []
    for x in xs:
        if scale > 0:
            x = x * (1.0 + scale * torch.randn(x.shape[0], 1, x.shape[2], device=x.device))
        if jitter > 0:
            x = x + jitter * torch.randn_like(x)
        out.append(x)
    return out


def accuracy_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> Dict[str, Any]:
    """Accuracy, macro-F1 (mean over classes present in y_true or y_pred) and the confusion matrix."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(np.float64)
    prec_den, rec_den = cm.sum(0), cm.sum(1)
    f1 = []
    for c in range(num_classes):
        if prec_den[c] + rec_den[c] == 0:
            continue
        p = tp[c] / prec_den[c] if prec_den[c] else 0.0
        r = tp[c] / rec_den[c] if rec_den[c] else 0.0
        f1.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
    return {"accuracy": float(tp.sum() / max(1, len(y_true))), "macro_f1": float(np.mean(f1)) if f1 else 0.0,
            "confusion": cm.tolist()}


def config_from_dict(cls: Type[T], d: Optional[Dict[str, Any]], where: str = "config") -> T:
    """Build frozen dataclass ``cls`` from ``d``; unknown keys and wrong types are rejected by name."""
    d = dict(d or {})
    known = OrderedDict((f.name, f) for f in fields(cls))
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError("{}: unknown keys {} (known: {})".format(where, unknown, list(known)))
    defaults = cls()
    out = {}
    for k, v in d.items():
        cur = getattr(defaults, k)
        try:
            if isinstance(cur, bool):
                if not isinstance(v, bool):
                    raise TypeError("expected true/false")
            elif isinstance(cur, int):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise TypeError("expected an integer")
            elif isinstance(cur, float):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise TypeError("expected a number")
                v = float(v)
            elif isinstance(cur, str):
                if not isinstance(v, str):
                    raise TypeError("expected a string")
            elif isinstance(cur, tuple):
                if not isinstance(v, (list, tuple)):
                    raise TypeError("expected a list")
                v = tuple(v)
            elif isinstance(cur, dict):
                if not isinstance(v, dict):
                    raise TypeError("expected an object")
        except TypeError as e:
            raise ConfigError("{}: field {!r}: {}, got {}".format(where, k, e, clip(v))) from e
        out[k] = v
    cfg = cls(**out)
    check = getattr(cfg, "check", None)
    if check is not None:
        check()
    return cfg


def load_config(cls: Type[T], path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> T:
    """Config from a YAML file (optional) with ``overrides`` (e.g. CLI flags) applied on top."""
    d = {}  # type: Dict[str, Any]
    if path:
        if not os.path.isfile(path):
            raise ConfigError("{}: config file not found".format(path))
        with open(path) as f:
            try:
                loaded = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ConfigError("{}: invalid YAML: {}".format(path, e)) from e
        if not isinstance(loaded, dict):
            raise ConfigError("{}: expected a mapping of config keys".format(path))
        d.update(loaded)
    d.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(cls, d, where=path or cls.__name__)


def config_dict(cfg: Any) -> Dict[str, Any]:
    if not is_dataclass(cfg):
        raise TypeError("not a dataclass: {!r}".format(cfg))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


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


def cached_json(path: str, fn: Callable[[], Any]) -> Any:
    """The JSON at ``path`` if it exists, else ``fn()``, written there atomically (a resumable run's
    cache: a run that finished is read back, never redone)."""
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    out = fn()
    write_json(path, out)
    return out


def save_torch_atomic(obj: Any, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)

