"""CMC baseline: Contrastive Multiview Coding (Tian et al., "Contrastive Multiview Coding", ECCV 2020,
arXiv 2019), as the Cosmo reference code uses it: two-view contrastive pretraining where the views are
two modalities of the same window, then the same Cosmo classifier fine-tuned on the labels.

Pretraining (``pretrain_cmc``): per modality the Cosmo encoder (``shared.training.build_encoders``)
and projection head (``ProjectionHead``, L2-normalized ``r_j [B, D]``), i.e. stage 1's ``Stage1Model``;
for every pair of modalities (i, j) the symmetric InfoNCE loss

    L_ij = CE_rows(r_i r_j^T / tau) + CE_cols(r_i r_j^T / tau)

(positives: the two modalities of the same window; negatives: the other windows of the batch), and
``L = mean over pairs`` (CMC's "full graph"; with two modalities that is the single pair, CMC's
two-view case). Unlike Cosmo there is no fusion of the views. The same random scaling / jitter as
stage 1 is applied to the windows. Fine-tuning: ``stage2.finetune`` with the pretrained encoders, i.e.
the Cosmo classifier and schedule (``train_baseline("cmc", ...)``).

Scaled down: negatives are the in-batch windows only (CMC keeps a memory bank of 16,384 negatives with
NCE; here a batch of ``batch_size``), the temperature is fixed (``temperature``, CMC 0.07), encoders and
heads are Cosmo's (no ResNet/AlexNet halves), trained with Adam for ``epochs`` epochs.
"""
import itertools
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from dataclasses import dataclass
from torch import nn

from ..data.dataset import MultimodalDataset
from ..errors import ConfigError, DataError
from ..losses import SymmetricInfoNCE
from ..training.augment import augment
from ..training.common import iterate_batches, make_optimizer, pick_device, seed_everything
from ..training.stage1 import Stage1Model, build_encoders

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CMCConfig:
    """CMC pretraining hyper-parameters (encoder fields as in ``Stage1Config``)."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.07
    proj_dim: int = 128
    proj_hidden: int = 256
    encoder_widths: Sequence[int] = (64, 64, 64, 32)
    encoder_dropout: float = 0.2
    out_steps: int = 8
    jitter: float = 0.1
    scale: float = 0.2
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("cmc: fields 'epochs' and 'batch_size' must be >= 1 and >= 2, got {} and {}".format(
                self.epochs, self.batch_size))
        if self.lr <= 0 or self.temperature <= 0:
            raise ConfigError("cmc: fields 'lr' and 'temperature' must be > 0, got {} and {}".format(
                self.lr, self.temperature))


def cmc_loss(r: torch.Tensor, criterion: nn.Module) -> torch.Tensor:
    """Mean over modality pairs of the symmetric InfoNCE between ``r[:, i]`` and ``r[:, j]`` (``r [B, M, D]``)."""
    pairs = list(itertools.combinations(range(r.shape[1]), 2))
    return torch.stack([criterion(r[:, i], r[:, j]) for i, j in pairs]).mean()


def run_pretraining(model: nn.Module, step_loss: Callable[[List[torch.Tensor]], torch.Tensor],
                    unlabeled: MultimodalDataset, config: Any, name: str, progress: bool = False,
                    on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None) -> List[Dict[str, float]]:
    """The shared loop of the contrastive baselines: Adam over ``model``, shuffled full batches of
    ``config.batch_size`` (last partial batch dropped), ``augment`` with ``config.jitter/scale``,
    ``step_loss(xs)`` per batch. Returns the history (one row per epoch: epoch, loss, seconds)."""
    from tqdm import tqdm

    device = pick_device(config.device)
    model.to(device)
    opt = make_optimizer("adam", model.parameters(), config.lr, config.weight_decay)
    xs_all = [torch.from_numpy(a) for a in unlabeled.x.values()]
    rng = np.random.RandomState(config.seed)
    history = []  # type: List[Dict[str, float]]
    t0 = time.time()
    for epoch in tqdm(range(config.epochs), desc=name, unit="epoch", disable=not progress, dynamic_ncols=True):
        model.train()
        losses = []
        for idx in iterate_batches(len(unlabeled), config.batch_size, True, rng, drop_last=True):
            xs = augment([x[idx].to(device) for x in xs_all], config.jitter, config.scale)
            loss = step_loss(xs)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "seconds": time.time() - t0})
        log.info("%s epoch %d/%d loss %.4f", name, epoch + 1, config.epochs, history[-1]["loss"])
        if on_epoch is not None:
            on_epoch(dict(history[-1]))
    model.cpu()
    return history


def _check_unlabeled(unlabeled: MultimodalDataset, batch_size: int, min_modalities: int, name: str) -> None:
    if len(unlabeled) < batch_size:
        raise DataError("{} needs at least batch_size={} windows, got {}".format(name, batch_size, len(unlabeled)))
    if len(unlabeled.modalities) < min_modalities:
        raise DataError("{} needs >= {} modalities, got {}".format(name, min_modalities, unlabeled.modalities))
    if unlabeled.num_classes and (unlabeled.labels >= 0).any():
        log.warning("%s ignores the %d labels present in its input", name, int((unlabeled.labels >= 0).sum()))


def pretrain_cmc(unlabeled: MultimodalDataset, config: CMCConfig, progress: bool = False,
                 on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None) -> List[nn.Module]:
    """CMC-pretrain one Cosmo encoder per modality on ``unlabeled`` (labels ignored).

    Returns the encoders (modality order, on CPU), ready for ``stage2.finetune``; ``on_epoch(row)``
    receives each epoch's ``{"epoch", "loss", "seconds"}``.
    """
    config.check()
    _check_unlabeled(unlabeled, config.batch_size, 2, "cmc")
    seed_everything(config.seed)
    specs = list(unlabeled.specs.values())
    encs = build_encoders(specs, [a.shape[1] for a in unlabeled.x.values()], config.encoder_widths,
                          config.encoder_dropout, config.out_steps)
    model = Stage1Model(encs, config.proj_dim, config.proj_hidden)
    tau = float(config.temperature)
    criterion = SymmetricInfoNCE(init_temperature=tau, min_temperature=min(0.01, tau),
                                 max_temperature=max(1.0, tau), learnable=False, detach_teacher=False)
    run_pretraining(model, lambda xs: cmc_loss(model(xs), criterion), unlabeled, config, "cmc", progress,
                    on_epoch)
    return list(model.encoders)


__all__ = ["CMCConfig", "cmc_loss", "pretrain_cmc", "run_pretraining"]
