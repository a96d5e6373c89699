"""Attention transfer (Zagoruyko & Komodakis, 2017); seed paper equation 6."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class AttentionTransferLoss(nn.Module):
    """MSE between L2-normalized attention maps ``a(f) = sum_c |f_c|^p``.

        a(f)[i] = q / ||q||_2,  q = sum_c |f[i, c, :]|^p        (flattened over the positions)
        L = 1/(B N) * sum_i sum_n (a(f_s)[i, n] - a(f_t)[i, n])^2

    Shapes: ``[B, C, *positions]`` feature maps (channel counts may differ between student and
    teacher, the N positions must match), or ``[B, D]`` embeddings, read as one channel over D
    positions, so ``a(f)[i] = |f_i|^p / |||f_i|^p||_2`` -> scalar.

    Setting: the student is the IMU embedding in the shared CLIP space and the teacher the frozen CLIP
    text embedding (detached); the text tower has no time axis, so the "positions" are the D shared
    embedding coordinates and the widths must agree (or pass ``regressor`` for the student). p = 2 is
    the seed paper's best setting (p = 5 its "focused" variant).

    Differences: the seed paper uses ``|f|^p`` summed over channels; RepDistiller uses ``f^p`` averaged
    over channels. The mean/sum choice cancels in the normalization; for odd p the sign does not, and
    we follow the paper (absolute value). RepDistiller's ``mean over dim 1`` would collapse a
    ``[B, D]`` embedding to one number per sample (a constant loss after normalization), hence the
    one-channel reading above. Zero when student == teacher, and invariant to rescaling either input.
    """

    def __init__(self, p: float = 2.0, regressor: Optional[nn.Module] = None) -> None:
        super().__init__()
        if p <= 0:
            raise ConfigError("attention-transfer power p must be > 0, got {}".format(p))
        self.p = float(p)
        self.regressor = regressor

    def attention(self, f: torch.Tensor) -> torch.Tensor:
        """``[B, C, *positions]`` or ``[B, D]`` -> normalized attention map ``[B, N]``."""
        if f.dim() == 2:
            f = f.unsqueeze(1)
        q = f.abs().pow(self.p).sum(1).reshape(f.shape[0], -1)
        return F.normalize(q, dim=1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.regressor is not None:
            student = self.regressor(student)
        a_s, a_t = self.attention(student), self.attention(teacher.detach())
        if a_s.shape != a_t.shape:
            raise ValueError("AttentionTransferLoss: attention maps {} and {} differ (positions must match)"
                             .format(tuple(a_s.shape), tuple(a_t.shape)))
        return (a_s - a_t).pow(2).mean()


__all__ = ["AttentionTransferLoss"]
