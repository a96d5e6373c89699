"""Logit matching (Ba & Caruana, 2014); seed paper equation 12."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class LogitsLoss(nn.Module):
    """Mean squared error between student and teacher outputs (pre-softmax).

        L = 1/(B K) * sum_i sum_k (regressor(out_s)[i, k] - out_t[i, k])^2

    Shapes: ``student [B, K]``, ``teacher [B, K]`` -> scalar.

    Setting: as for ``SoftTargetLoss``, the "logits" are the final outputs of the two encoders: the
    IMU embedding in the shared CLIP space (student) and the frozen CLIP text embedding (teacher,
    detached). Pass ``regressor`` if the widths differ. Same form as the seed paper and RepDistiller.
    Zero when student == teacher.
    """

    def __init__(self, regressor: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.regressor = regressor

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if self.regressor is not None:
            student = self.regressor(student)
        if student.shape != teacher.shape:
            raise ValueError("LogitsLoss expects tensors of equal shape (use a regressor), got {} and {}"
                             .format(tuple(student.shape), tuple(teacher.shape)))
        return F.mse_loss(student, teacher.detach())


__all__ = ["LogitsLoss"]
