"""Registry of the seed paper's distillation losses and the combined alignment objective

    L = L_InfoNCE + lambda_KD * L_KD          (seed paper equation 1; lambda_KD = 1 there)

Every registered loss is ``forward(student, teacher) -> scalar`` with student = IMU encoder
features/embeddings and teacher = frozen CLIP text embeddings (detached inside the loss).
"""
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..errors import ConfigError
from .activation_boundaries import ActivationBoundariesLoss
from .attention_transfer import AttentionTransferLoss
from .correlation_congruence import CorrelationCongruenceLoss
from .fitnets import FitNetsLoss
from .info_nce import SymmetricInfoNCE
from .logits import LogitsLoss
from .nst import NSTLoss
from .pkt import PKTLoss
from .rkd import RKDLoss
from .similarity_preserving import SimilarityPreservingLoss
from .soft_target import SoftTargetLoss

DISTILLATION_LOSSES = {
    "soft_target": SoftTargetLoss,
    "similarity_preserving": SimilarityPreservingLoss,
    "nst": NSTLoss,
    "attention_transfer": AttentionTransferLoss,
    "correlation_congruence": CorrelationCongruenceLoss,
    "pkt": PKTLoss,
    "rkd": RKDLoss,
    "fitnets": FitNetsLoss,
    "activation_boundaries": ActivationBoundariesLoss,
    "logits": LogitsLoss,
}  # type: Dict[str, Any]


def build_distillation_loss(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate a registered distillation loss by name (unknown names raise ``ConfigError``)."""
    if name not in DISTILLATION_LOSSES:
        raise ConfigError("unknown distillation loss {!r}; known: {}".format(name, ", ".join(sorted(DISTILLATION_LOSSES))))
    return DISTILLATION_LOSSES[name](**kwargs)


class CombinedAlignmentLoss(nn.Module):
    """``L = SymmetricInfoNCE(student, teacher) + lambda_kd * KD(kd_student, kd_teacher)``.

    Args:
        kd: a ``DISTILLATION_LOSSES`` name, or None for InfoNCE alone (the IMU2CLIP baseline).
        lambda_kd: weight of the distillation term (1.0 in the seed paper).
        init_temperature, min_temperature, max_temperature: passed to ``SymmetricInfoNCE``.
        kd_kwargs: constructor arguments of the distillation loss (e.g. ``{"p": 2.0}`` or
            ``{"regressor": nn.Linear(512, 768)}``; a regressor's parameters are this module's, so
            pass ``loss.parameters()`` to the optimizer together with the encoder's).

    Shapes: ``student [B, D]`` IMU embeddings and ``teacher [B, D]`` text embeddings in the shared
    space; ``kd_student`` / ``kd_teacher`` optionally replace them for the KD term only (e.g.
    pre-projection IMU features ``[B, D_s]``). Returns named scalar terms
    ``{"info_nce": ..., "kd": ..., "loss": ...}`` (``kd`` is a zero tensor when ``kd`` is None).
    """

    def __init__(self, kd: Optional[str] = None, lambda_kd: float = 1.0, init_temperature: float = 0.1,
                 min_temperature: float = 0.01, max_temperature: float = 1.0,
                 kd_kwargs: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        if lambda_kd < 0:
            raise ConfigError("lambda_kd must be >= 0, got {}".format(lambda_kd))
        self.info_nce = SymmetricInfoNCE(init_temperature, min_temperature, max_temperature)
        self.kd_name, self.lambda_kd = kd, float(lambda_kd)
        self.kd = build_distillation_loss(kd, **(kd_kwargs or {})) if kd is not None else None

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, kd_student: Optional[torch.Tensor] = None,
                kd_teacher: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        nce = self.info_nce(student, teacher)
        if self.kd is None:
            kd = nce.new_zeros(())
        else:
            kd = self.kd(student if kd_student is None else kd_student,
                         teacher if kd_teacher is None else kd_teacher)
        return {"info_nce": nce, "kd": kd, "loss": nce + self.lambda_kd * kd}


__all__ = ["CombinedAlignmentLoss", "DISTILLATION_LOSSES", "build_distillation_loss"]
