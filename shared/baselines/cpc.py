"""CPC baseline: contrastive predictive coding for HAR (Haresamudram et al., "Contrastive Predictive
Coding for Human Activity Recognition", IMWUT 2021; CPC: van den Oord et al. 2018).

Original: an encoder of three 1-D conv layers (32/64/128 filters, kernel 3, no pooling) maps each
accelerometer sample to a latent ``z_t``; a two-layer GRU (256 units) summarizes ``z_{<=t}`` into a
context ``c_t``; ``k = 12`` linear maps ``W_k`` predict ``z_{t+k}`` from ``c_t``, scored by dot product
against the true ``z_{t+k}`` and the ``z_{t+k}`` of the other windows of the batch (InfoNCE); after
pretraining, the encoder (+ GRU) feeds an MLP classifier.

Here (``pretrain_cpc``): **per modality**, independently (the original uses one accelerometer; we
do not concatenate channels, so each modality keeps the Cosmo encoder that ``stage2`` expects): the
Cosmo encoder (``shared.training.build_encoders``: conv + pooling to ``out_steps`` latent steps
``z [B, S, F]``) -> GRU(``gru_hidden``) -> ``c [B, S, H]``; for k = 1..K (``K = min(k_steps, S - 1)``)
and every t < S - k::

    L_k,t = CE over the batch of ( (W_k c_t^(b)) . z_{t+k}^(b') )_{b, b'} with target b' = b

and ``L`` = mean over k, t and modalities. The GRU and the predictors are discarded afterwards; the
encoders are fine-tuned with the same Cosmo classifier (``train_baseline("cpc", ...)``).

Scaled down: the latent sequence is the encoder's pooled ``out_steps`` (default 8) steps, not one
latent per sample, so K defaults to 4 pooled steps (original 12 samples); one GRU layer of 64 units
(original 2 x 256); Adam, ``epochs`` epochs. Caveat: the encoder's convolutions are not causal, so
``z_t`` sees a few samples of the next pooled step (as the original's padded convs see the next
samples); predicting >= 1 pooled step ahead keeps the task non-trivial.
"""
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from dataclasses import dataclass
from torch import nn

from ..data.dataset import MultimodalDataset
from ..errors import ConfigError
from ..losses import PredictiveCodingLoss
from ..training.common import seed_everything
from ..training.stage1 import build_encoders
from .cmc import _check_unlabeled, run_pretraining

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CPCConfig:
    """CPC pretraining hyper-parameters (encoder fields as in ``Stage1Config``)."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    gru_hidden: int = 64
    k_steps: int = 4
    encoder_widths: Sequence[int] = (64, 64, 64, 32)
    encoder_dropout: float = 0.2
    out_steps: int = 8
    jitter: float = 0.0
    scale: float = 0.0
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("cpc: fields 'epochs' and 'batch_size' must be >= 1 and >= 2, got {} and {}".format(
                self.epochs, self.batch_size))
        if self.lr <= 0:
            raise ConfigError("cpc: field 'lr' must be > 0, got {}".format(self.lr))
        if self.k_steps < 1 or self.out_steps < 2:
            raise ConfigError("cpc: fields 'k_steps' >= 1 and 'out_steps' >= 2 needed, got {} and {}".format(
                self.k_steps, self.out_steps))


class CPCModel(nn.Module):
    """One modality's CPC: ``encoder`` -> ``PredictiveCodingLoss`` (GRU + ``K`` linear predictors);
    ``forward(x)`` -> InfoNCE loss."""

    def __init__(self, encoder: nn.Module, gru_hidden: int = 64, k_steps: int = 4) -> None:
        super().__init__()
        self.encoder = encoder
        self.loss = PredictiveCodingLoss(encoder.out_features, encoder.out_steps, gru_hidden, k_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.loss(self.encoder(x))


class CPCModels(nn.Module):
    """Per-modality ``CPCModel``s; ``forward(xs)`` -> mean of their losses; ``.encoders`` in order."""

    def __init__(self, models: Sequence[CPCModel]) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)

    @property
    def encoders(self) -> List[nn.Module]:
        return [m.encoder for m in self.models]

    def forward(self, xs: List[torch.Tensor]) -> torch.Tensor:
        return torch.stack([m(x) for m, x in zip(self.models, xs)]).mean()


def pretrain_cpc(unlabeled: MultimodalDataset, config: CPCConfig, progress: bool = False,
                 on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None) -> List[nn.Module]:
    """CPC-pretrain one Cosmo encoder per modality on ``unlabeled`` (labels ignored; one modality is
    enough). Returns the encoders (modality order, on CPU) for ``stage2.finetune``; ``on_epoch(row)``
    receives each epoch's ``{"epoch", "loss", "seconds"}``."""
    config.check()
    _check_unlabeled(unlabeled, config.batch_size, 1, "cpc")
    seed_everything(config.seed)
    specs = list(unlabeled.specs.values())
    encs = build_encoders(specs, [a.shape[1] for a in unlabeled.x.values()], config.encoder_widths,
                          config.encoder_dropout, config.out_steps)
    model = CPCModels([CPCModel(e, config.gru_hidden, config.k_steps) for e in encs])
    run_pretraining(model, model, unlabeled, config, "cpc", progress, on_epoch)
    return model.encoders


__all__ = ["CPCConfig", "CPCModel", "CPCModels", "pretrain_cpc"]
