"""FitNets hint loss (Romero et al., 2015); seed paper equation 10."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class FitNetsLoss(nn.Module):
    """Mean squared error between the regressed student hint and the teacher hint.

        L = 1/(B D_t) * sum_i sum_d (r(f_s)[i, d] - f_t[i, d])^2

    Shapes: ``student [B, D_s]`` (or any ``[B, ...]``), ``teacher [B, D_t]`` -> scalar.

    Setting: ``f_s`` = IMU encoder features, ``f_t`` = frozen CLIP text embedding (detached). The
    IMU encoder (512-d GRU state) and CLIP text (512-d for ViT-B/32) can share a width, but in general
    they do not: then pass ``regressor`` ``r`` (FitNets' learned regressor, e.g.
    ``nn.Linear(D_s, D_t)``, whose parameters must be in the optimizer); with no regressor ``r`` is
    the identity and the loss works in the shared embedding space. The seed paper writes
    ``MSE(f_s, f_t)`` without the regressor; RepDistiller applies a ``ConvReg``; we follow
    RepDistiller when widths differ. Zero when ``r(f_s) == f_t``.
    """

    def __init__(self, regressor: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.regressor = regressor

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.regressor is not None:
            student = self.regressor(student)
        if student.shape != teacher.shape:
            raise ValueError("{}: regressed student {} and teacher {} differ in shape (pass a regressor)"
                             .format(type(self).__name__, tuple(student.shape), tuple(teacher.shape)))
        return F.mse_loss(student, teacher.detach())


__all__ = ["FitNetsLoss"]
