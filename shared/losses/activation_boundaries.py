"""Activation-boundary transfer (Heo et al., 2019); seed paper equation 11."""
from typing import Optional

import torch
from torch import nn

from ..errors import ConfigError


class ActivationBoundariesLoss(nn.Module):
    """Hinge-squared loss that puts each student pre-activation on the teacher's side of zero.

        L = mean( (s + m)^2 * 1[s > -m and t <= 0] + (s - m)^2 * 1[s <= m and t > 0] )

    with ``s = regressor(f_s)``, ``t = f_t`` pre-activations and margin m = 1 (RepDistiller).

    Shapes: ``student [B, D]`` (or any ``[B, ...]``), ``teacher`` of the same shape -> scalar.

    Setting: the "neurons" are the coordinates of the shared CLIP embedding space: the IMU embedding
    (student) should have the sign pattern of the frozen text embedding (teacher, detached), with a
    margin m. Pass ``regressor`` if the widths differ. Differences: we follow the seed paper's mean;
    RepDistiller sums over elements and divides by the batch size (and 1000, with per-layer weights).

    Not zero when student == teacher (elements with ``|t| < m`` still pay); the minimum 0 is reached
    when ``s >= m`` wherever ``t > 0`` and ``s <= -m`` wherever ``t <= 0``.
    """

    def __init__(self, margin: float = 1.0, regressor: Optional[nn.Module] = None) -> None:
        super().__init__()
        if margin < 0:
            raise ConfigError("activation-boundary margin must be >= 0, got {}".format(margin))
        self.margin = float(margin)
        self.regressor = regressor

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.regressor is not None:
            student = self.regressor(student)
        if student.shape != teacher.shape:
            raise ValueError("ActivationBoundariesLoss expects equal shapes (use a regressor), got {} and {}"
                             .format(tuple(student.shape), tuple(teacher.shape)))
        s, t, m = student, teacher.detach(), self.margin
        neg = ((s > -m) & (t <= 0)).to(s.dtype)
        pos = ((s <= m) & (t > 0)).to(s.dtype)
        return ((s + m).pow(2) * neg + (s - m).pow(2) * pos).mean()


__all__ = ["ActivationBoundariesLoss"]
