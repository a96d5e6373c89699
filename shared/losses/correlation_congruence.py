"""Correlation congruence (Peng et al., 2019); seed paper equation 7."""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class CorrelationCongruenceLoss(nn.Module):
    """MSE between the batch correlation matrices, with the Taylor-expanded Gaussian RBF kernel.

    With ``x = f / ||f||_2`` per sample and ``S = x x^T`` (``[B, B]``, cosine similarities):

        C = sum_{p=0}^{P} exp(-2 gamma) (2 gamma)^p / p! * S^p      (S^p element-wise)
        L = 1/B^2 * sum_{i,j} (C_s[i, j] - C_t[i, j])^2

    ``C`` approximates ``exp(-gamma ||x_i - x_j||^2) = exp(-2 gamma) exp(2 gamma x_i . x_j)``.

    Shapes: ``student [B, D_s]`` (or ``[B, ...]``), ``teacher [B, D_t]`` -> scalar; widths may differ
    (only ``B x B`` matrices are compared), so no regressor is needed.

    Setting: student = IMU encoder features/embeddings, teacher = frozen CLIP text embeddings
    (detached). Difference: we follow the seed paper (and Peng et al.) with the kernel above
    (gamma = 0.4, P = 2, the CCKD defaults); RepDistiller's ``Correlation`` instead correlates
    consecutive pairs of ``e_s - e_t``. Zero when student == teacher; scale invariant.
    """

    def __init__(self, gamma: float = 0.4, order: int = 2) -> None:
        super().__init__()
        if gamma <= 0 or order < 0:
            raise ConfigError("need gamma > 0 and order P >= 0, got {}, {}".format(gamma, order))
        self.gamma, self.order = float(gamma), int(order)

    def correlation(self, f: torch.Tensor) -> torch.Tensor:
        """``[B, ...]`` -> ``[B, B]`` kernel matrix C."""
        x = F.normalize(f.reshape(f.shape[0], -1), dim=1)
        s = x @ x.t()
        g2 = 2.0 * self.gamma
        c = torch.full_like(s, math.exp(-g2))          # p = 0 term (s.pow(0) has a NaN gradient at 0)
        for p in range(1, self.order + 1):
            c = c + math.exp(-g2) * g2 ** p / math.factorial(p) * s.pow(p)
        return c

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape[0] != teacher.shape[0]:
            raise ValueError("CorrelationCongruenceLoss: batch sizes differ: {} and {}"
                             .format(student.shape[0], teacher.shape[0]))
        return F.mse_loss(self.correlation(student), self.correlation(teacher.detach()))


__all__ = ["CorrelationCongruenceLoss"]
