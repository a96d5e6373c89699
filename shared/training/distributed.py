"""Data-parallel stage 1 under ``torchrun``: process-group setup, differentiable collectives, sync BN.

Launch with ``torchrun`` (or ``python -m torch.distributed.run``), which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``init_from_env`` turns that into a process group
(NCCL on GPUs, gloo on CPU). Without those variables (or with ``WORLD_SIZE=1``) everything here is a
no-op and the training loops run exactly as in a single process.

Gradient convention. The collectives with gradients (``gather_with_grad``, ``all_reduce_with_grad``)
treat the job's objective as the *sum* of the ranks' losses, as ``torch.distributed.nn`` does: the
backward of a gather all-reduces (sums) the incoming gradients over the ranks and keeps this rank's
slice. When every rank computes the same global loss ``L`` over gathered features, that objective is
``world_size * L`` and DDP's gradient *averaging* divides it back: the parameter gradients are exactly
those of ``L`` in one process on the global batch (``tests/shared/test_ddp.py`` checks it). Do not
also multiply the loss by ``world_size``.

Works on torch 1.10 (Python 3.6): only ``all_gather``, ``all_reduce``, ``broadcast``, ``barrier`` and
the object collectives of 1.8 are used; DDP is imported lazily, so builds without distributed support
(``torch.distributed.is_available() == False``) can still import this module.
"""
import logging
import os
from typing import Any, List, Optional

import torch
import torch.distributed as dist
from dataclasses import dataclass
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` (``local_rank`` on its node), its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise ConfigError("environment variable {}={!r} is not an integer".format(name, v)) from None


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def current(device: Optional[torch.device] = None) -> DistInfo:
    """``DistInfo`` of the initialized process group (or the single-process one when there is none).

    ``device``: the device asked for (e.g. ``pick_device(config.device)``); a bare ``cuda`` becomes
    ``cuda:LOCAL_RANK`` when distributed.
    """
    dev = device if device is not None else torch.device("cpu")
    if not is_distributed():
        return DistInfo(device=dev)
    local_rank = _env_int("LOCAL_RANK", 0)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=dev,
                    backend=str(dist.get_backend()))


def init_from_env(backend: str = "auto", device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment and return this rank's ``DistInfo``.

    ``backend``: ``"auto"`` (NCCL when the device is CUDA, else gloo), ``"nccl"`` or ``"gloo"``.
    ``device``: ``"auto"`` (``cuda:LOCAL_RANK`` when CUDA is present, else CPU), ``"cpu"`` or ``"cuda"``.
    Returns a non-distributed ``DistInfo`` (and initializes nothing) when ``WORLD_SIZE`` is unset or 1.
    Idempotent: a group that is already initialized is reused.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device == "auto":
        dev = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    elif device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device {!r} requested but CUDA is not available (torch {})".format(
                device, torch.__version__))
        dev = torch.device("cuda", local_rank) if device == "cuda" else torch.device(device)
    else:
        dev = torch.device(device)
    if world <= 1:
        return DistInfo(device=dev)
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE={} but this torch build ({}) has no torch.distributed".format(
            world, torch.__version__))
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ConfigError("distributed backend must be 'auto', 'nccl' or 'gloo', got {!r}".format(backend))
    if backend == "nccl" and dev.type != "cuda":
        raise ConfigError("backend 'nccl' needs a CUDA device, got device {!r}".format(str(dev)))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # NCCL and the object collectives use the current device
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", world_size=world, rank=rank)
    info = DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=dev,
                    backend=str(dist.get_backend()))
    log.info("distributed: rank %d/%d (local %d) on %s, backend %s", info.rank, info.world_size,
             info.local_rank, info.device, info.backend)
    return info


def cleanup() -> None:
    """Leave the process group (no-op when none is initialized)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.contiguous()
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # d(sum of the ranks' losses) / d(gathered tensor)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


class _AllReduceWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = x.contiguous().clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x [b, ...]`` concatenated along dim 0 in rank order -> ``[world_size * b, ...]``.

    Differentiable (see the module docstring for the gradient convention); every rank must pass the
    same shape. Returns ``x`` itself when not distributed.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over the ranks, differentiable; ``x`` itself when not distributed."""
    if not is_distributed():
        return x
    return _AllReduceWithGrad.apply(x)


class DistBatchNorm(_BatchNorm):
    """Batch norm whose batch statistics are reduced over all ranks, written with plain collectives.

    ``torch.nn.SyncBatchNorm`` only runs on GPUs (torch 1.10 to 2.x); this one runs anywhere gloo
    does, so CPU data-parallel training normalizes with the statistics of the *global* batch, as a
    single process on that batch would. Two-pass (mean, then centred sum of squares) for accuracy;
    the running variance uses the unbiased global variance, like ``nn.BatchNorm``. Outside training,
    or when not distributed, it is ``nn.BatchNorm``. Any input ``[N, C, *]``.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError("expected an input [N, C, *], got shape {}".format(tuple(input.shape)))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        c = input.shape[1]
        dims = [0] + list(range(2, input.dim()))
        shape = [1, c] + [1] * (input.dim() - 2)
        count = input.new_tensor([float(input.numel() // c)])
        s = all_reduce_with_grad(torch.cat([input.sum(dims), count]))
        n = s[c].detach()
        mean = s[:c] / n
        centred = input - mean.view(shape)
        var = all_reduce_with_grad((centred * centred).sum(dims)) / n
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                factor = 0.0 if self.momentum is None else float(self.momentum)
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
                    if self.momentum is None:
                        factor = 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * (n / (n - 1).clamp(min=1))
                self.running_mean.mul_(1 - factor).add_(mean.detach() * factor)
                self.running_var.mul_(1 - factor).add_(unbiased * factor)
        return out


def convert_dist_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm*`` in ``module`` by a ``DistBatchNorm`` sharing its parameters and buffers."""
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, DistBatchNorm):
        out = DistBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_dist_batchnorm(child))
    return out


def sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Batch norm over the global batch: ``nn.SyncBatchNorm`` on CUDA with NCCL, else ``DistBatchNorm``.

    (``nn.SyncBatchNorm`` needs CUDA tensors and a backend with CUDA all-gather; ``DistBatchNorm``
    only needs ``all_reduce``, which gloo has for CPU and CUDA tensors.) Returns ``module`` unchanged
    when not distributed.
    """
    if not is_distributed():
        return module
    if device.type == "cuda" and sync_batchnorm_kind(device) == "nn.SyncBatchNorm":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return convert_dist_batchnorm(module)


def sync_batchnorm_kind(device: torch.device) -> str:
    """Which batch norm ``sync_batchnorm`` uses here: ``"nn.SyncBatchNorm"``, ``"DistBatchNorm"`` or ``"none"``."""
    if not is_distributed():
        return "none"
    return "nn.SyncBatchNorm" if device.type == "cuda" and str(dist.get_backend()) == "nccl" else "DistBatchNorm"


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel(module)`` on this rank's device (``module`` itself when not distributed).

    Every parameter must take part in each step's loss (``find_unused_parameters=False``); DDP
    broadcasts rank 0's parameters and buffers at construction and averages the gradients.
    """
    if not is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        return DistributedDataParallel(module, device_ids=[device.index], output_device=device.index,
                                       find_unused_parameters=False)
    return DistributedDataParallel(module, find_unused_parameters=False)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled; tensors in it should be on the CPU)."""
    if not is_distributed():
        return obj
    box = [obj]  # type: List[Any]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()  # type: List[Any]
    dist.all_gather_object(out, obj)
    return out


def broadcast_flag(flag: bool, device: torch.device, src: int = 0) -> bool:
    """Rank ``src``'s boolean on every rank."""
    if not is_distributed():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.broadcast(t, src=src)
    return bool(t.item())


__all__ = ["DistBatchNorm", "DistInfo", "all_gather_object", "all_reduce_with_grad", "barrier", "broadcast_flag",
           "broadcast_object", "cleanup", "convert_dist_batchnorm", "current", "gather_with_grad",
           "init_from_env", "is_distributed", "sync_batchnorm", "sync_batchnorm_kind", "wrap_ddp"]
