"""Relational knowledge distillation (Park et al., 2019); seed paper equation 9."""
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class RKDLoss(nn.Module):
    """Distance-wise plus angle-wise relational loss, each a smooth-L1 between student and teacher.

        d[i, j] = ||f_i - f_j||_2,   D = d / mean_{i != j} d[i, j]
        e[a, b] = (f_b - f_a) / ||f_b - f_a||_2,   A[a, b, c] = e[a, b] . e[a, c]   (angle at f_a)
        L = w_dist * mean_{i,j} SmoothL1(D_s[i, j] - D_t[i, j])
          + w_angle * mean_{i,j,k} SmoothL1(A_s[i, j, k] - A_t[i, j, k])

    SmoothL1(x) = x^2 / 2 if |x| < 1 else |x| - 1/2. w_dist = 25, w_angle = 50 (RepDistiller; the seed
    paper gives no values).

    Shapes: ``student [B, D_s]`` (or ``[B, ...]``), ``teacher [B, D_t]`` -> scalar; widths may differ
    (only relations within each batch are compared), so no regressor is needed.

    Setting: student = IMU encoder features/embeddings, teacher = frozen CLIP text embeddings
    (detached). Same form in the seed paper and RepDistiller. Two guards of ours for degenerate
    batches: the mean distance is clamped below at ``eps`` (RepDistiller divides by the mean of the
    positive distances, NaN when all rows coincide or B = 1), and squared distances are clamped at
    ``eps`` before the square root so the gradient stays finite. Zero when student == teacher;
    invariant to rescaling either input.
    """

    def __init__(self, w_dist: float = 25.0, w_angle: float = 50.0, eps: float = 1e-12) -> None:
        super().__init__()
        if w_dist < 0 or w_angle < 0:
            raise ConfigError("RKD weights must be >= 0, got {}, {}".format(w_dist, w_angle))
        self.w_dist, self.w_angle, self.eps = float(w_dist), float(w_angle), float(eps)

    def distances(self, f: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` -> mean-normalized pairwise distances ``[B, B]`` (zero diagonal)."""
        b = f.shape[0]
        sq = (f.unsqueeze(0) - f.unsqueeze(1)).pow(2).sum(-1)
        off = ~torch.eye(b, dtype=torch.bool, device=f.device)
        d = sq.clamp(min=self.eps).sqrt() * off.to(f.dtype)
        if b < 2:
            return d
        return d / (d.sum() / off.sum()).clamp(min=self.eps)

    @staticmethod
    def angles(f: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` -> ``[B, B, B]`` with ``A[a, b, c] = e[a, b] . e[a, c]``."""
        e = F.normalize(f.unsqueeze(0) - f.unsqueeze(1), p=2, dim=2)
        return torch.bmm(e, e.transpose(1, 2))

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape[0] != teacher.shape[0]:
            raise ValueError("RKDLoss: batch sizes differ: {} and {}".format(student.shape[0], teacher.shape[0]))
        b = student.shape[0]
        f_s, f_t = student.reshape(b, -1), teacher.detach().reshape(b, -1)
        loss = self.w_dist * F.smooth_l1_loss(self.distances(f_s), self.distances(f_t))
        return loss + self.w_angle * F.smooth_l1_loss(self.angles(f_s), self.angles(f_t))


__all__ = ["RKDLoss"]
