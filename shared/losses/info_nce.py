"""Symmetric InfoNCE with a learnable, clamped temperature (IMU2CLIP's alignment loss).

Papers: Moon et al., "IMU2CLIP", 2022 (loss as in facebookresearch/imu2clip); equation 2 of the seed
paper (IMU2CLIP enhancement), which writes one direction of the same loss.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class SymmetricInfoNCE(nn.Module):
    """CLIP-style InfoNCE over a batch of paired embeddings, both directions summed.

    With ``u_i`` the L2-normalized IMU embeddings, ``v_k`` the L2-normalized text (or video)
    embeddings and ``S_ik = u_i . v_k / tau``:

        L = CE_rows + CE_cols
        CE_rows = -1/B sum_i log( exp(S_ii) / sum_k exp(S_ik) )     (IMU -> text)
        CE_cols = -1/B sum_k log( exp(S_kk) / sum_i exp(S_ik) )     (text -> IMU)

    The two directions are *summed*, as in the IMU2CLIP code (the seed paper's equation 2 writes one
    direction), so the value is twice the mean of the two cross-entropies; ``log B`` per direction at
    chance. ``tau = exp(log_tau)`` is learned, initialized at ``init_temperature`` (0.1, IMU2CLIP) and
    clamped to ``[min_temperature, max_temperature]``: IMU2CLIP does not clamp, we do (the parameter
    is projected back into the range in place at every forward and by ``clamp_()``, so an optimizer
    step cannot leave it outside, and the value used in the loss is clamped as well).

    Setting: ``student [B, D]`` = IMU encoder embeddings in the shared CLIP space; ``teacher [B, D]``
    = frozen CLIP text embeddings (detached here unless ``detach_teacher=False``, e.g. for a trained
    video tower). Both must have the same width D (the shared embedding space). Returns a scalar.

    Example::

        loss_fn = SymmetricInfoNCE()
        loss = loss_fn(imu_emb, text_emb)    # add loss_fn.parameters() to the optimizer
    """

    def __init__(self, init_temperature: float = 0.1, min_temperature: float = 0.01,
                 max_temperature: float = 1.0, learnable: bool = True, detach_teacher: bool = True) -> None:
        super().__init__()
        if not 0 < min_temperature <= init_temperature <= max_temperature:
            raise ConfigError("need 0 < min_temperature <= init_temperature <= max_temperature, got {}, {}, {}"
                              .format(min_temperature, init_temperature, max_temperature))
        self.min_temperature, self.max_temperature = float(min_temperature), float(max_temperature)
        self.detach_teacher = detach_teacher
        log_tau = torch.tensor(math.log(init_temperature), dtype=torch.float32)
        if learnable:
            self.log_temperature = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_temperature", log_tau)

    def clamp_(self) -> None:
        """Project the log-temperature back into ``[log min, log max]`` (call after an optimizer step)."""
        with torch.no_grad():
            self.log_temperature.clamp_(math.log(self.min_temperature), math.log(self.max_temperature))

    @property
    def temperature(self) -> float:
        """The clamped temperature used by the loss."""
        return min(max(math.exp(self.log_temperature.item()), self.min_temperature), self.max_temperature)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.dim() != 2 or student.shape != teacher.shape:
            raise ValueError("SymmetricInfoNCE expects student and teacher [B, D] of equal shape, got {} and {}"
                             .format(tuple(student.shape), tuple(teacher.shape)))
        self.clamp_()
        if self.detach_teacher:
            teacher = teacher.detach()
        tau = self.log_temperature.exp().clamp(self.min_temperature, self.max_temperature)
        logits = F.normalize(student, dim=1) @ F.normalize(teacher, dim=1).t() / tau
        target = torch.arange(student.shape[0], device=student.device)
        return F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)


__all__ = ["SymmetricInfoNCE"]
