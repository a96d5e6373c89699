"""Triplet loss with squared Euclidean distances, plain or with the cyclic-shift negative; seed
paper equation 13 (its "Triplet" and "Triplet CS" rows)."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class TripletLoss(nn.Module):
    """``max(0, ||a_i - p_i||^2 - ||a_i - n_i||^2 + margin)``, reduced over the batch.

        L = 1/B * sum_i max(0, ||a_i - p_i||_2^2 - ||a_i - n_i||_2^2 + margin)     (reduction="mean")

    Negatives: ``negative="given"`` (plain triplet) takes ``n`` from the caller;
    ``negative="cyclic"`` uses the cyclic shift of the positives, ``n_i = p_{(i + 1) mod B}`` (the text
    of the next sample in the batch). With B = 1 the cyclic negative is the positive itself and the
    loss is ``margin``.

    Shapes: ``anchor [B, D]``, ``positive [B, D]``, ``negative [B, D]`` (plain only) -> scalar.

    Setting: anchor = IMU embedding in the shared CLIP space (student), positive and negative =
    frozen CLIP text embeddings (teacher side, detached unless ``detach_teacher=False``); all share
    the width D. Differences: the seed paper sums over the batch (``reduction="sum"``); we average by
    default so the scale does not depend on B. ``normalize=True`` L2-normalizes all three first (the
    seed paper uses raw outputs, our default). Zero when anchor == positive and the negative is at
    squared distance >= margin.
    """

    def __init__(self, margin: float = 1.0, negative: str = "cyclic", reduction: str = "mean",
                 normalize: bool = False, detach_teacher: bool = True) -> None:
        super().__init__()
        if negative not in ("given", "cyclic"):
            raise ConfigError("triplet negative must be 'given' or 'cyclic', got {!r}".format(negative))
        if reduction not in ("mean", "sum"):
            raise ConfigError("triplet reduction must be 'mean' or 'sum', got {!r}".format(reduction))
        if margin < 0:
            raise ConfigError("triplet margin must be >= 0, got {}".format(margin))
        self.margin, self.negative, self.reduction = float(margin), negative, reduction
        self.normalize, self.detach_teacher = normalize, detach_teacher

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor,
                negative: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.negative == "cyclic":
            if negative is not None:
                raise ValueError("TripletLoss(negative='cyclic') builds its own negatives; do not pass one")
            negative = positive.roll(-1, dims=0)       # row i <- positive[(i + 1) mod B]
        elif negative is None:
            raise ValueError("TripletLoss(negative='given') needs a negative tensor")
        if anchor.dim() != 2 or not anchor.shape == positive.shape == negative.shape:
            raise ValueError("TripletLoss expects [B, D] tensors of equal shape, got {}, {}, {}"
                             .format(tuple(anchor.shape), tuple(positive.shape), tuple(negative.shape)))
        if self.detach_teacher:
            positive, negative = positive.detach(), negative.detach()
        if self.normalize:
            anchor, positive, negative = (F.normalize(x, dim=1) for x in (anchor, positive, negative))
        d_pos = (anchor - positive).pow(2).sum(1)
        d_neg = (anchor - negative).pow(2).sum(1)
        per_sample = (d_pos - d_neg + self.margin).clamp(min=0)
        return per_sample.mean() if self.reduction == "mean" else per_sample.sum()


__all__ = ["TripletLoss"]
