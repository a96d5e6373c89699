"""SingleModal baseline: the Cosmo backbone on one modality only.

As in the Cosmo reference code (Ouyang et al., "Cosmo: Contrastive Fusion Learning with Small Data for
Multimodal Human Activity Recognition", MobiCom 2022, github xmouyang/Cosmo), the single-modality
baseline reuses the Cosmo backbone: the same per-modality CNN encoder (``conv1d`` for inertial windows,
``conv3d`` for skeleton layouts, built by ``shared.training.build_encoders``) followed by the same
GRU + MLP classifier (``CosmoClassifier`` with one modality, so its attention weight is always 1).
It is trained supervised from scratch on the labeled windows of one modality (one model per
modality); the other modalities passed in ``xs`` are ignored.

Architecture: ``x_j [B, T, C] -> encoder -> [B, S, F] -> GRU(gru_hidden) -> MLP -> logits [B, K]``.

Scaled down: nothing beyond what Cosmo itself uses here (encoder widths and GRU/MLP sizes come from
the caller; the reference's 64-64-32-16 filters are the default ``(64, 64, 64, 32)`` of stage 1).
``beta`` is one-hot on the modality used.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..data.dataset import MultimodalDataset
from ..errors import ConfigError
from ..models.classifier import CosmoClassifier
from ..training.stage1 import build_encoders


class SingleModalModel(nn.Module):
    """One encoder + a one-modality ``CosmoClassifier``.

    ``forward(xs, present=None)``: ``xs`` is the list of *all* modalities' windows ``[B, T_j, C_j]``
    (as ``stage2.finetune`` passes them); only ``xs[index]`` is read. Returns ``(logits [B, K],
    beta [B, M])`` with ``beta`` one-hot at ``index``. ``.encoders`` holds only the used encoder.
    """

    def __init__(self, encoder: nn.Module, index: int, num_modalities: int, num_classes: int,
                 modality: str = "", gru_hidden: int = 64, mlp_hidden: int = 64, dropout: float = 0.2) -> None:
        super().__init__()
        if not 0 <= index < num_modalities:
            raise ConfigError("single_modal: modality index {} out of range for {} modalities".format(
                index, num_modalities))
        self.index, self.num_modalities, self.modality = index, num_modalities, modality
        self.modalities = [modality]
        self.encoders = nn.ModuleList([encoder])
        self.classifier = CosmoClassifier(encoder.out_steps, [encoder.out_features], num_classes, quality=None,
                                          lam=0.0, fusion="sum", gru_hidden=gru_hidden, mlp_hidden=mlp_hidden,
                                          dropout=dropout)

    def forward(self, xs: List[torch.Tensor], present: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        x = xs[self.index]
        logits, _ = self.classifier([self.encoders[0](x)])
        beta = torch.zeros(x.shape[0], self.num_modalities, device=x.device, dtype=logits.dtype)
        beta[:, self.index] = 1.0
        return logits, beta


def build_single_modal(ds: MultimodalDataset, config: object, modality: Union[int, str] = 0,
                       widths: Sequence[int] = (64, 64, 64, 32), dropout: float = 0.2,
                       out_steps: int = 8) -> SingleModalModel:
    """SingleModal model for ``ds``'s modality ``modality`` (name or index); GRU/MLP sizes and dropout of
    the classifier from ``config`` (a ``Stage2Config``)."""
    names = ds.modalities
    if isinstance(modality, str):
        if modality not in names:
            raise ConfigError("single_modal: unknown modality {!r}; have {}".format(modality, names))
        index = names.index(modality)
    else:
        index = int(modality)
        if not 0 <= index < len(names):
            raise ConfigError("single_modal: modality index {} out of range for {}".format(index, names))
    spec = list(ds.specs.values())[index]
    t = list(ds.x.values())[index].shape[1]
    enc = build_encoders([spec], [t], widths, dropout, out_steps)[0]
    return SingleModalModel(enc, index, len(names), ds.num_classes, names[index],
                            gru_hidden=getattr(config, "gru_hidden", 64), mlp_hidden=getattr(config, "mlp_hidden", 64),
                            dropout=getattr(config, "dropout", 0.2))


__all__ = ["SingleModalModel", "build_single_modal"]
