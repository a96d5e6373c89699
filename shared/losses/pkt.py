"""Probabilistic knowledge transfer (Passalis & Tefas, 2018); seed paper equation 8."""
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class PKTLoss(nn.Module):
    """KL-style divergence between cosine-similarity conditional distributions over the batch.

    With ``x = f / ||f||_2`` per sample:

        c[i, j] = (x_i . x_j + 1) / 2               in [0, 1]
        P[i, j] = c[i, j] / sum_j' c[i, j']          (rows sum to 1)
        L = 1/B^2 * sum_{i,j} P_t[i, j] * log( (P_t[i, j] + eps) / (P_s[i, j] + eps) )

    The diagonal (i = j) is kept, as in RepDistiller. eps = 1e-7.

    Shapes: ``student [B, D_s]`` (or ``[B, ...]``), ``teacher [B, D_t]`` -> scalar; widths may differ
    (only ``B x B`` matrices are compared), so no regressor is needed.

    Setting: student = IMU encoder features/embeddings, teacher = frozen CLIP text embeddings
    (detached). Same form in the seed paper and RepDistiller (the mean over all elements). Zero when
    student == teacher; scale invariant. A zero row gets ``c = 1/2`` everywhere (uniform P).
    """

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        if eps <= 0:
            raise ConfigError("PKT eps must be > 0, got {}".format(eps))
        self.eps = float(eps)

    @staticmethod
    def conditional(f: torch.Tensor) -> torch.Tensor:
        """``[B, ...]`` -> row-stochastic ``[B, B]`` matrix P."""
        x = F.normalize(f.reshape(f.shape[0], -1), dim=1)
        c = (x @ x.t() + 1.0) / 2.0
        return c / c.sum(1, keepdim=True)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape[0] != teacher.shape[0]:
            raise ValueError("PKTLoss: batch sizes differ: {} and {}".format(student.shape[0], teacher.shape[0]))
        p_s, p_t = self.conditional(student), self.conditional(teacher.detach())
        return (p_t * torch.log((p_t + self.eps) / (p_s + self.eps))).mean()


__all__ = ["PKTLoss"]
