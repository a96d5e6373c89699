"""Cosmo stage 1: contrastive fusion pretraining of per-modality encoders on unlabeled windows.

For each batch: encode each modality (``h_j [B, S, F_j]``), project and L2-normalize (``r_j [B, D]``),
make P fused views per sample (``FusionViews``) and minimize ``ContrastiveFusionLoss``. Labels are
never read: pass only unlabeled windows (``splits.labeled_unlabeled`` removes the labeled ones).

Data-parallel: run the same ``pretrain`` under ``torchrun`` after ``distributed.init_from_env()``.
Each rank encodes its slice of every global batch (``batch_size`` is the global batch), the fused
views of all ranks are gathered with their gradients, and every rank computes the loss over the
global batch, so each sample's negatives come from all ranks; batch norm is synchronized over the
ranks. With deterministic fusion (``fusion="grid"``) and no augmentation or dropout, training on N
ranks follows the single-process run on the same data (``tests/shared/test_ddp.py``).
"""
import logging
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..contract import ENCODERS  # noqa: F401  (re-exported)
from ..models.bundle import encoder_bundle, load_encoder_bundle  # noqa: F401  (re-exported)
from ..data.dataset import ModalitySpec, MultimodalDataset
from ..errors import ConfigError, CosmoError, DataError
from ..losses import ContrastiveFusionLoss, FusionViews, PredictiveCodingLoss
from ..models.encoders import build_encoder
from ..models.heads import ProjectionHead
from .augment import Augment
from .common import iterate_batches, make_optimizer, pick_device, save_torch_atomic, seed_everything
from ..config import config_dict
from ..hparams import Stage1Config  # noqa: F401  (re-exported)
from .distributed import (all_gather_object, barrier, broadcast_flag, broadcast_object, current, gather_with_grad,
                          sync_batchnorm, sync_batchnorm_kind, wrap_ddp)

log = logging.getLogger(__name__)

CHECKPOINT = "stage1_last.pt"


def build_encoders(specs: Sequence[ModalitySpec], windows: Sequence[int], widths: Sequence[int],
                   dropout: float, out_steps: int) -> List[nn.Module]:
    """One encoder per modality: ``conv3d`` for skeleton layouts, ``conv1d`` otherwise."""
    encs = []
    for spec, t in zip(specs, windows):
        if spec.layout == "skeleton":
            encs.append(build_encoder("conv3d", joints=spec.joints, coords=spec.coords, window=t,
                                      widths=tuple(widths[:3]), dropout=dropout, out_steps=out_steps))
        else:
            encs.append(build_encoder("conv1d", in_channels=len(spec.channels), window=t, widths=tuple(widths),
                                      dropout=dropout, out_steps=out_steps))
    return encs


class Stage1Model(nn.Module):
    """Encoders + projection heads. ``forward(xs)`` -> ``r [B, M, D]`` (unit-norm per modality).
    ``predictive_steps`` > 0 adds a ``PredictiveCodingLoss`` per modality (``Stage1Config.predictive``),
    which ``features`` evaluates on the same encoder outputs."""

    def __init__(self, encoders: Sequence[nn.Module], proj_dim: int = 128, proj_hidden: int = 256,
                 predictive_steps: int = 0, predictive_hidden: int = 64) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.heads = nn.ModuleList([ProjectionHead(e.feature_dim, proj_dim, proj_hidden) for e in encoders])
        self.predictive = nn.ModuleList([PredictiveCodingLoss(e.out_features, e.out_steps, predictive_hidden,
                                                              predictive_steps) for e in encoders]
                                        ) if predictive_steps > 0 else None

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        return torch.stack([h(e(x)) for e, h, x in zip(self.encoders, self.heads, xs)], 1)

    def features(self, xs: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(r [B, M, D], predictive loss)``: the loss is the mean over modalities, 0 without predictors."""
        zs = [e(x) for e, x in zip(self.encoders, xs)]
        r = torch.stack([h(z) for h, z in zip(self.heads, zs)], 1)
        if self.predictive is None:
            return r, r.new_zeros(())
        return r, torch.stack([p(z) for p, z in zip(self.predictive, zs)]).mean()


class Stage1Views(nn.Module):
    """One rank's part of a stage-1 step (the module DDP wraps): windows ``xs`` -> (views ``[B, P, D]``,
    predictive loss). Each window is encoded ``input_views`` times (each copy with its own draw of
    ``aug``), and each copy's features ``[B, M, D]`` are fused into ``P / input_views`` views by
    ``fusion``; the predictive loss (0 when the model has none) is the mean over the copies.
    """

    def __init__(self, model: Stage1Model, fusion: FusionViews, input_views: int = 1,
                 aug: Augment = Augment()) -> None:
        super().__init__()
        self.model, self.fusion = model, fusion
        self.input_views, self.aug = input_views, aug

    def forward(self, xs: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        views, aux = [], []
        for _ in range(self.input_views):
            r, a = self.model.features(self.aug(xs))
            views.append(self.fusion(r))
            aux.append(a)
        return torch.cat(views, 1), torch.stack(aux).mean()


def _predictive_steps(config: Stage1Config) -> int:
    """The ``predictive_steps`` of ``config``'s model: 0 (no predictors built) while its weight is 0."""
    return config.predictive_steps if config.predictive > 0 else 0


def stage1_augment(config: Stage1Config) -> Augment:
    """The augmentations of ``config`` (its jitter, scale, rotate, time_warp, permute, mask)."""
    return Augment(jitter=config.jitter, scale=config.scale, rotate=config.rotate, time_warp=config.time_warp,
                   permute=config.permute, mask=config.mask)


def stage1_loss(net: nn.Module, xs: List[torch.Tensor], criterion: ContrastiveFusionLoss,
                predictive: float = 0.0) -> torch.Tensor:
    """The loss of one step: ``net`` (a ``Stage1Views``, DDP-wrapped or not) on this rank's windows;
    when distributed the views of all ranks are gathered (with gradients, rank order) and the fusion loss
    is over the global batch, the same value on every rank. Under DDP's gradient averaging the parameter
    gradients equal the single-process gradients on the global batch (see ``distributed``). Plus
    ``predictive`` times the predictive-coding loss of this rank's windows (their negatives are this
    rank's windows; DDP averages its gradients over the ranks).
    """
    views, aux = net(xs)
    loss = criterion(gather_with_grad(views))
    return loss + predictive * aux if predictive > 0 else loss


def pretrain(unlabeled: MultimodalDataset, config: Stage1Config, out_dir: str, resume: bool = True,
             progress: bool = True, on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None
             ) -> Dict[str, Any]:
    """Train stage 1 on ``unlabeled`` (normalized windows; labels ignored) and write into ``out_dir``:

    * ``stage1_last.pt``: full checkpoint after every epoch (model, optimizer, epoch, history), used
      to resume;
    * ``encoders.pt``: the encoder bundle (``encoder_bundle``).

    ``on_epoch`` is called after each epoch's checkpoint with that epoch's history row (epoch, loss,
    lr, seconds, eta_seconds); an exception it raises stops training with the checkpoint kept.
    Returns ``{"history": [...], "seconds": ..., "epochs_run": ..., "model": Stage1Model}``.

    Distributed (a process group with > 1 ranks is initialized, e.g. by ``distributed.init_from_env``
    under torchrun): ``batch_size`` is the global batch and must divide by the world size; every rank
    shuffles with the same seed and takes its contiguous slice; the model is wrapped in DDP with batch
    norm synchronized (``nn.SyncBatchNorm`` on CUDA, ``distributed.DistBatchNorm`` on CPU/gloo);
    dropout, augmentation and Dirichlet weights draw from a per-rank stream (``seed + rank``). Only
    rank 0 writes files, shows progress and calls ``on_epoch`` (if it raises, every rank stops);
    resuming reads rank 0's checkpoint on all ranks. Every rank returns the same history and model.
    """
    from tqdm import tqdm

    config.check()
    device = pick_device(config.device)
    info = current(device)
    if info.distributed:
        if config.batch_size % info.world_size:
            raise ConfigError("stage1: field 'batch_size' ({}) is the global batch and must be divisible by the "
                              "number of ranks ({})".format(config.batch_size, info.world_size))
        if info.backend == "nccl" and info.device.type != "cuda":
            raise ConfigError("stage1: field 'device' is {!r} but the process group uses NCCL, which needs CUDA"
                              .format(config.device))
        device = info.device
    if unlabeled.num_classes and (unlabeled.labels >= 0).any():
        log.warning("stage 1 ignores the %d labels present in its input", int((unlabeled.labels >= 0).sum()))
    if len(unlabeled) < config.batch_size:
        raise DataError("stage 1 needs at least batch_size={} windows, got {}".format(config.batch_size, len(unlabeled)))
    if len(unlabeled.modalities) < 2:
        raise DataError("contrastive fusion needs >= 2 modalities, got {}".format(unlabeled.modalities))
    os.makedirs(out_dir, exist_ok=True)
    seed_everything(config.seed)
    specs = list(unlabeled.specs.values())
    model = Stage1Model(build_encoders(specs, [a.shape[1] for a in unlabeled.x.values()], config.encoder_widths,
                                       config.encoder_dropout, config.out_steps),
                        config.proj_dim, config.proj_hidden, _predictive_steps(config)).to(device)
    if info.distributed:
        model = sync_batchnorm(model, device)  # type: ignore[assignment]
        log.info("stage 1: rank %d of %d (%s, %s), global batch %d = %d per rank, batch norm synchronized by %s",
                 info.rank, info.world_size, info.backend, device, config.batch_size,
                 config.batch_size // info.world_size, sync_batchnorm_kind(device))
    fusion = FusionViews(config.num_views // config.input_views, config.fusion, config.concentration)
    criterion = ContrastiveFusionLoss(config.temperature)
    opt = make_optimizer(config.optimizer, model.parameters(), config.lr, config.weight_decay, config.momentum)
    net = wrap_ddp(Stage1Views(model, fusion, config.input_views, stage1_augment(config)), device)
    if info.distributed:
        torch.manual_seed(config.seed + info.rank)  # per-rank dropout / augmentation / Dirichlet streams
    steps_per_epoch = len(unlabeled) // config.batch_size
    total = config.epochs * steps_per_epoch

    def lr_at(step: int) -> float:
        if config.schedule == "constant":
            return config.lr
        return 0.5 * config.lr * (1.0 + math.cos(math.pi * step / max(1, total)))

    history = []  # type: List[Dict[str, float]]
    start_epoch = 0
    ckpt_path = os.path.join(out_dir, CHECKPOINT)
    ck = None  # type: Optional[Dict[str, Any]]
    if info.distributed:
        if resume:  # rank 0's file on every rank (no shared file system needed)
            ck = broadcast_object(torch.load(ckpt_path, map_location="cpu")
                                  if info.is_main and os.path.isfile(ckpt_path) else None)
    elif resume and os.path.isfile(ckpt_path):
        ck = torch.load(ckpt_path, map_location=device)
    if ck is not None:
        if ck.get("config") != config_dict(config):
            raise ConfigError("{}: checkpoint was made with another config; use a new out_dir or resume=False"
                              .format(ckpt_path))
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch, history = int(ck["epoch"]) + 1, list(ck["history"])
        if not info.distributed:
            torch.set_rng_state(ck["torch_rng"])
        elif len(ck.get("torch_rng_ranks") or []) == info.world_size:
            torch.set_rng_state(ck["torch_rng_ranks"][info.rank])
        else:  # made with another number of ranks: fresh per-rank streams
            torch.manual_seed(config.seed + info.rank + 7919 * start_epoch)
        log.info("stage 1: resumed from %s at epoch %d", ckpt_path, start_epoch)
    xs_all = [torch.from_numpy(a) for a in unlabeled.x.values()]
    rng = np.random.RandomState(config.seed)
    for _ in range(start_epoch):  # keep the shuffling stream identical after a resume
        rng.permutation(len(unlabeled))
    t0 = time.time()
    bar = tqdm(total=config.epochs, initial=start_epoch, desc="stage 1", unit="epoch",
               disable=not (progress and info.is_main), dynamic_ncols=True)
    per_rank = config.batch_size // info.world_size
    lo = info.rank * per_rank
    for epoch in range(start_epoch, config.epochs):
        net.train()
        losses = []
        for it, idx in enumerate(iterate_batches(len(unlabeled), config.batch_size, True, rng, drop_last=True)):
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch * steps_per_epoch + it)
            if info.distributed:
                idx = idx[lo:lo + per_rank]
            xs = [x[idx].to(device) for x in xs_all]
            loss = stage1_loss(net, xs, criterion, config.predictive)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "lr": opt.param_groups[0]["lr"],
                        "seconds": time.time() - t0})
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                 "history": history, "config": config_dict(config),
                 "torch_rng": torch.get_rng_state()}  # type: Dict[str, Any]
        if info.distributed:
            state["torch_rng_ranks"] = all_gather_object(state["torch_rng"])
            state["torch_rng"] = state["torch_rng_ranks"][0]
        if info.is_main:
            save_torch_atomic(state, ckpt_path)
        done = epoch + 1 - start_epoch
        history[-1]["eta_seconds"] = (time.time() - t0) / done * (config.epochs - epoch - 1)
        if not info.distributed:
            if on_epoch is not None:
                on_epoch(dict(history[-1], epochs=config.epochs))
        else:
            stop = None  # type: Optional[Exception]
            if info.is_main and on_epoch is not None:
                try:
                    on_epoch(dict(history[-1], epochs=config.epochs))
                except Exception as e:  # re-raised below, after telling the other ranks
                    stop = e
            if broadcast_flag(stop is not None, device):
                if stop is not None:
                    raise stop
                raise CosmoError("stage 1: stopped after epoch {} because rank 0's on_epoch callback raised"
                                 .format(epoch + 1))
        bar.set_postfix(loss="{:.3f}".format(history[-1]["loss"]))
        bar.update(1)
        if info.is_main:
            log.info("stage 1 epoch %d/%d loss %.4f", epoch + 1, config.epochs, history[-1]["loss"])
    bar.close()
    if info.distributed:  # back to plain batch norm, so the returned model runs without a process group
        trained = model
        model = Stage1Model(build_encoders(specs, [a.shape[1] for a in unlabeled.x.values()], config.encoder_widths,
                                           config.encoder_dropout, config.out_steps),
                            config.proj_dim, config.proj_hidden, _predictive_steps(config))
        model.load_state_dict({k: v.detach().cpu() for k, v in trained.state_dict().items()})
        model.train(trained.training)
    model.cpu()
    if info.is_main:
        save_torch_atomic(encoder_bundle(model, specs), os.path.join(out_dir, ENCODERS))
    barrier()  # encoders.pt exists when pretrain returns on any rank
    return {"history": history, "seconds": time.time() - t0, "epochs_run": config.epochs - start_epoch,
            "model": model}

