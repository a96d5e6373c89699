"""Helpers shared by the training loops (torch): seeding, devices, batching, optimizers,
checkpoint writing. Metrics are in ``shared.metrics``, configs in ``shared.config``, hashes in
``shared.hashing``, JSON files in ``shared.files``, augmentations in
``shared.training.augment``."""
import logging
import os
import random
from typing import Any, Iterator, List, Optional

import numpy as np
import torch

from ..data.dataset import MultimodalDataset
from ..errors import ConfigError, clip

log = logging.getLogger(__name__)


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


OPTIMIZERS = ("sgd", "adam", "adagrad")


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float = 0.0,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    """The one optimizer factory of every trainer: ``sgd`` (with ``momentum``), ``adam`` or ``adagrad``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    raise ConfigError("optimizer {!r}: expected one of {}".format(name, ", ".join(OPTIMIZERS)))


def save_torch_atomic(obj: Any, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)

