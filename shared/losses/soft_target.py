"""Soft-target knowledge distillation (Hinton et al., 2015); seed paper equation 3."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class SoftTargetLoss(nn.Module):
    """``T^2 * KL(softmax(out_t / T) || softmax(out_s / T))``, averaged over the batch.

        L = T^2 / B * sum_i sum_k p_t[i, k] * (log p_t[i, k] - log p_s[i, k]),
        p_s = softmax(regressor(out_s) / T),  p_t = softmax(out_t / T)   (softmax over k)

    Shapes: ``student [B, K]``, ``teacher [B, K]`` -> scalar.

    Setting: there are no class logits in IMU-text alignment, so, as in the seed paper (which applies
    the loss to the encoder outputs), ``out_s`` is the IMU embedding in the shared CLIP space and
    ``out_t`` the frozen CLIP text embedding, the K = D embedding coordinates playing the role of the
    class logits. If the widths differ, pass ``regressor`` (e.g. ``nn.Linear(D_s, D_t)``; its
    parameters belong in the optimizer). The teacher is detached.

    Reduction: sum over k, mean over the batch (RepDistiller's ``sum / B``, the true per-sample KL);
    the seed paper's equation 3 does not state it. T = 4 as in RepDistiller (the seed paper reuses the
    symbol gamma and gives no value). Zero when student == teacher.
    """

    def __init__(self, temperature: float = 4.0, regressor: Optional[nn.Module] = None) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError("soft-target temperature must be > 0, got {}".format(temperature))
        self.temperature = float(temperature)
        self.regressor = regressor

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.regressor is not None:
            student = self.regressor(student)
        if student.dim() != 2 or student.shape != teacher.shape:
            raise ValueError("SoftTargetLoss expects [B, K] tensors of equal shape (use a regressor), got {} and {}"
                             .format(tuple(student.shape), tuple(teacher.shape)))
        t = self.temperature
        log_p_s = F.log_softmax(student / t, dim=1)
        p_t = F.softmax(teacher.detach() / t, dim=1)
        return F.kl_div(log_p_s, p_t, reduction="batchmean") * t * t


__all__ = ["SoftTargetLoss"]
