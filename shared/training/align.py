"""IMU <-> text alignment (IMU2CLIP-style): train an IMU encoder + projection against frozen text
embeddings with symmetric InfoNCE, optionally plus a distillation term (``CombinedAlignmentLoss``).

The text side is given as precomputed embeddings ``[N, D_text]`` (one per window; the text encoder is
frozen, so computing them once is exact and keeps the loop encoder-agnostic). Model selection uses
the validation windows' IMU->text MRR; the test split is not touched here.

Objectives (``AlignConfig.objective``; seed paper table 3):

* ``"info_nce"``: symmetric InfoNCE (+ ``lambda_kd`` x the ``kd`` distillation term when ``kd`` is set);
* ``"triplet"``: :class:`TripletLoss` with a *given* negative: for each window, a random other text of
  the batch, drawn (seeded) among those whose text differs from its own when there is one (the seed
  paper takes the negative "from a different class or category"; identical narrations in a batch
  would otherwise be false negatives);
* ``"triplet_cyclic"``: :class:`TripletLoss` with the cyclic-shift negative (the next text in the
  batch), the paper's "Triplet CS".

The triplet losses use squared Euclidean distances between the unit-norm IMU and text embeddings,
margin 1, batch mean (the paper sums; only the scale differs). ``kd`` is added to them as well when set.
"""
import copy
import logging
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from dataclasses import dataclass, field
from torch import nn

from ..errors import ConfigError, DataError
from ..losses.distillation import DISTILLATION_LOSSES, CombinedAlignmentLoss, build_distillation_loss
from ..losses.triplet import TripletLoss
from ..models.encoders import build_encoder, encoder_config
from ..retrieval import retrieval_metrics
from .augment import augment
from .common import iterate_batches, make_optimizer, pick_device, seed_everything

log = logging.getLogger(__name__)

OBJECTIVES = ("info_nce", "triplet", "triplet_cyclic")


@dataclass(frozen=True)
class AlignConfig:
    """Alignment hyper-parameters (seed paper: Adagrad lr 2e-4, batch 256 better than 32, LayerNorm,
    InfoNCE + attention transfer, lambda_KD = 1)."""

    encoder: str = "mw2"
    encoder_config: Dict[str, Any] = field(default_factory=dict)
    epochs: int = 15
    batch_size: int = 256
    optimizer: str = "adagrad"
    lr: float = 2e-4
    weight_decay: float = 0.0
    objective: str = "info_nce"
    kd: str = ""
    lambda_kd: float = 1.0
    init_temperature: float = 0.1
    jitter: float = 0.0
    scale: float = 0.0
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("align: fields 'epochs' (>= 1) and 'batch_size' (>= 2) out of range: {}, {}".format(
                self.epochs, self.batch_size))
        if self.optimizer not in ("adam", "adagrad", "sgd"):
            raise ConfigError("align: field 'optimizer' must be adam, adagrad or sgd, got {!r}".format(self.optimizer))
        if self.lr <= 0:
            raise ConfigError("align: field 'lr' must be > 0, got {}".format(self.lr))
        if self.objective not in OBJECTIVES:
            raise ConfigError("align: field 'objective' must be one of {}, got {!r}".format(
                ", ".join(OBJECTIVES), self.objective))
        if self.kd and self.kd not in DISTILLATION_LOSSES:
            raise ConfigError("align: field 'kd' must be empty or one of {}, got {!r}".format(
                ", ".join(sorted(DISTILLATION_LOSSES)), self.kd))
        try:  # the encoder and its config keys (window and channels come from the data when not given)
            encoder_config(self.encoder, **dict({"window": 1, "in_channels": 1}, **self.encoder_config))
        except ConfigError as e:
            raise ConfigError("align: fields 'encoder' / 'encoder_config': {}".format(e)) from None
        except (TypeError, ValueError) as e:
            raise ConfigError("align: field 'encoder_config': {}".format(e)) from None


def _different_text_negatives(text: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Index ``[B]`` of a random other row for every row of ``text [B, D]``, preferring rows whose text
    differs from its own (falls back to any other row when all texts in the batch are identical)."""
    b = text.shape[0]
    other = ~torch.eye(b, dtype=torch.bool, device=text.device)
    differs = other & (torch.cdist(text, text) > 1e-6)
    allowed = torch.where(differs.any(1, keepdim=True), differs, other)
    scores = torch.rand(b, b, generator=generator).to(text.device)
    return torch.where(allowed, scores, torch.full_like(scores, -1.0)).argmax(1)


class TripletAlignmentLoss(nn.Module):
    """Triplet objective for alignment: anchor = IMU embedding, positive = its text, negative = another
    text of the batch (``negative="given"``: random, seeded; ``"cyclic"``: the next one); plus an
    optional distillation term like :class:`CombinedAlignmentLoss`. Returns
    ``{"triplet", "kd", "loss"}``."""

    def __init__(self, negative: str = "given", margin: float = 1.0, kd: Optional[str] = None,
                 lambda_kd: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        self.triplet = TripletLoss(margin=margin, negative=negative)
        self.kd = build_distillation_loss(kd) if kd else None
        self.lambda_kd = float(lambda_kd)
        self.generator = torch.Generator().manual_seed(int(seed))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> Dict[str, torch.Tensor]:
        if self.triplet.negative == "given":
            neg = teacher[_different_text_negatives(teacher.detach(), self.generator)]
            trip = self.triplet(student, teacher, neg)
        else:
            trip = self.triplet(student, teacher)
        kd = self.kd(student, teacher) if self.kd is not None else trip.new_zeros(())
        return {"triplet": trip, "kd": kd, "loss": trip + self.lambda_kd * kd}


def build_alignment_loss(config: AlignConfig) -> nn.Module:
    """The training loss of ``config.objective`` (see the module docstring)."""
    if config.objective == "info_nce":
        return CombinedAlignmentLoss(kd=config.kd or None, lambda_kd=config.lambda_kd,
                                     init_temperature=config.init_temperature)
    return TripletAlignmentLoss(negative="given" if config.objective == "triplet" else "cyclic",
                                kd=config.kd or None, lambda_kd=config.lambda_kd, seed=config.seed)


class AlignModel(nn.Module):
    """Encoder ``[B, T, C] -> [B, S, F]`` + linear projection to the text space, L2-normalized."""

    def __init__(self, encoder: nn.Module, text_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.proj = nn.Linear(encoder.feature_dim, text_dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.features(x)), dim=1)


@torch.no_grad()
def embed(model: AlignModel, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """IMU embeddings ``[N, D_text]`` (unit norm) of windows ``x [N, T, C]``."""
    model.eval()
    dev = next(model.parameters()).device
    return np.concatenate([model(torch.from_numpy(x[i]).to(dev)).cpu().numpy()
                           for i in iterate_batches(len(x), batch_size, False)])


def train_alignment(x_train: np.ndarray, text_train: np.ndarray, x_val: np.ndarray, text_val: np.ndarray,
                    config: AlignConfig, progress: bool = False,
                    on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Train on normalized IMU windows ``x [N, T, C]`` paired with text embeddings ``[N, D]``.

    Returns ``{"model": AlignModel (best validation IMU->text MRR), "history": [...], "best_epoch",
    "val": retrieval metrics both ways, "seconds"}``.
    """
    from tqdm import tqdm

    config.check()
    for name, a, b in (("train", x_train, text_train), ("val", x_val, text_val)):
        if a.ndim != 3 or b.ndim != 2 or len(a) != len(b):
            raise DataError("align: {} windows {} and text embeddings {} must be [N, T, C] and [N, D]".format(
                name, a.shape, b.shape))
    seed_everything(config.seed)
    device = pick_device(config.device)
    enc_cfg = dict(config.encoder_config)
    enc_cfg.setdefault("window", int(x_train.shape[1]))
    enc_cfg.setdefault("in_channels", int(x_train.shape[2]))
    model = AlignModel(build_encoder(config.encoder, **enc_cfg), int(text_train.shape[1])).to(device)
    loss_fn = build_alignment_loss(config).to(device)
    params = list(model.parameters()) + list(loss_fn.parameters())
    opt = make_optimizer(config.optimizer, params, config.lr, config.weight_decay)
    xt = torch.from_numpy(np.ascontiguousarray(x_train, np.float32))
    tt = torch.from_numpy(np.ascontiguousarray(text_train, np.float32))
    rng = np.random.RandomState(config.seed)
    best: Dict[str, Any] = {"mrr": -1.0, "epoch": -1, "state": None}
    history: List[Dict[str, Any]] = []
    t0 = time.time()
    for epoch in tqdm(range(config.epochs), desc="align", unit="epoch", disable=not progress):
        model.train()
        terms = []
        for idx in iterate_batches(len(xt), config.batch_size, True, rng, drop_last=True):
            x = augment([xt[idx].to(device)], config.jitter, config.scale)[0]
            out = loss_fn(model(x), tt[idx].to(device))
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            terms.append({k: float(v.detach()) for k, v in out.items()})
        v = embed(model, x_val)
        row = {"epoch": epoch, "val_imu2text": retrieval_metrics(v, text_val),
               "val_text2imu": retrieval_metrics(text_val, v)}
        for k in (terms[0] if terms else {}):
            row["train_" + k] = float(np.mean([t[k] for t in terms]))
        history.append(row)
        if row["val_imu2text"]["MRR"] > best["mrr"]:
            best = {"mrr": row["val_imu2text"]["MRR"], "epoch": epoch, "state": copy.deepcopy(model.state_dict())}
        if on_epoch is not None:
            on_epoch(row)
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    v = embed(model, x_val)
    return {"model": model, "history": history, "best_epoch": best["epoch"], "seconds": time.time() - t0,
            "val": {"imu2text": retrieval_metrics(v, text_val), "text2imu": retrieval_metrics(text_val, v)}}
