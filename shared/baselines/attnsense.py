"""AttnSense baseline (Ma et al., "AttnSense: Multi-level Attention Mechanism For Multimodal Human
Activity Recognition", IJCAI 2019).

Original architecture: each sensor's window is cut into time slices and each slice is transformed by
FFT; a per-sensor CNN extracts slice features; an attention layer over the sensors fuses them per
time slice (``a_{t,k} = softmax_k(v^T tanh(W h_{t,k} + b))``, ``f_t = sum_k a_{t,k} h_{t,k}``); a GRU runs
over the fused slices and a second attention layer over the time steps
(``alpha_t = softmax_t(u^T tanh(U o_t + c))``, ``c = sum_t alpha_t o_t``) gives the representation that
a softmax layer classifies.

Here (``AttnSenseModel``): the per-sensor slice encoder is DeepSense's ``IntervalSensorEncoder``
(slices -> rFFT -> conv -> ``[B, S, sensor_dim]``, in ``.encoders``), shared code since the two papers
describe the same front end; ``AttnSenseHead`` (the ``.classifier``) holds the sensor attention, the
GRU, the temporal attention and the output layer. ``beta [B, M]`` is the sensor-attention weight of
each modality averaged over the time slices; ``present`` masks missing sensors out of the softmax.

Scaled down to fit this 2-core CPU machine: conv widths 32 (original 64, 2-D kernels over
frequency x component; here 1-D over frequency with the spectral components as channels), one GRU
layer of ``gru_hidden`` cells, attention width ``attn_dim`` (default 32). A ``Linear`` maps every
sensor to the common ``sensor_dim`` that the sensor attention needs.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..data.dataset import MultimodalDataset
from ..models.classifier import CosmoModel
from .deepsense import IntervalSensorEncoder


class AttnSenseHead(nn.Module):
    """Sensor attention per slice -> GRU -> temporal attention -> dropout -> linear (see module doc)."""

    def __init__(self, sensor_dim: int, num_classes: int, gru_hidden: int = 64, attn_dim: int = 32,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.sensor_attn = nn.Sequential(nn.Linear(sensor_dim, attn_dim), nn.Tanh(), nn.Linear(attn_dim, 1))
        self.gru = nn.GRU(sensor_dim, gru_hidden, batch_first=True)
        self.time_attn = nn.Sequential(nn.Linear(gru_hidden, attn_dim), nn.Tanh(), nn.Linear(attn_dim, 1))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(gru_hidden, num_classes))

    def forward(self, hs: List[torch.Tensor], present: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        h = torch.stack(hs, 2)  # [B, S, M, F]
        e = self.sensor_attn(h).squeeze(3)  # [B, S, M]
        if present is not None:
            e = e.masked_fill(~present[:, None, :], float("-inf"))
        a = torch.softmax(e, dim=2)
        fused = (a.unsqueeze(3) * h).sum(2)  # [B, S, F]
        out, _ = self.gru(fused)  # [B, S, H]
        alpha = torch.softmax(self.time_attn(out).squeeze(2), dim=1)  # [B, S]
        c = (alpha.unsqueeze(2) * out).sum(1)
        return self.head(c), a.mean(1)


class AttnSenseModel(CosmoModel):
    """``.encoders`` (one ``IntervalSensorEncoder`` per modality) + ``.classifier`` (``AttnSenseHead``);
    ``forward(xs, present=None) -> (logits [B, K], beta [B, M])``, beta = mean sensor attention. The
    wiring is ``CosmoModel``'s; only the parts differ."""


def build_attnsense(ds: MultimodalDataset, config: object, intervals: int = 8, widths: Sequence[int] = (32, 32, 32),
                    sensor_dim: int = 64, attn_dim: int = 32, dropout: float = 0.2, fft: bool = True
                    ) -> AttnSenseModel:
    """AttnSense for ``ds``'s modalities (each read as ``[T, C]`` channels); GRU size from
    ``config.gru_hidden`` (a ``Stage2Config``)."""
    encs = [IntervalSensorEncoder(a.shape[2], a.shape[1], intervals, widths, sensor_dim=sensor_dim,
                                  dropout=dropout, fft=fft) for a in ds.x.values()]
    head = AttnSenseHead(sensor_dim, ds.num_classes, gru_hidden=getattr(config, "gru_hidden", 64),
                         attn_dim=attn_dim, dropout=dropout)
    return AttnSenseModel(encs, head, ds.modalities)


__all__ = ["AttnSenseHead", "AttnSenseModel", "build_attnsense"]
