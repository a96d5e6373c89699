"""DeepSense baseline (Yao et al., "DeepSense: A Unified Deep Learning Framework for Time-Series Mobile
Sensing Data Processing", WWW 2017).

Original architecture: each sensor's window is cut into T non-overlapping time intervals; each interval
is turned into its Fourier spectrum (real and imaginary parts); per sensor, three "individual"
convolutional layers (64 filters, BN, ReLU, dropout) extract interval features; the sensors' interval
features are stacked and three "merge" convolutional layers (64 filters) mix them across sensors; the
merged per-interval features feed a two-layer stacked GRU (120 cells, dropout); the GRU outputs are
averaged over the intervals and a softmax layer classifies.

Here (``DeepSenseModel``):

* per sensor (``IntervalSensorEncoder``, in ``.encoders``): ``x [B, T, C]`` -> ``intervals`` intervals
  of ``tau = T // intervals`` samples (a tail that does not fill an interval is dropped) -> rFFT per
  interval and channel (real and imaginary parts: ``2C`` channels over ``tau // 2 + 1`` frequency
  bins) -> ``Conv1d`` over the frequency axis x len(``widths``) (BN, ReLU) -> flatten -> ``Linear`` to
  ``sensor_dim`` -> ``[B, S, sensor_dim]``;
* merge (``DeepSenseMerge``, the ``.classifier``): per interval, sensors stacked as channels
  ``[B*S, M, sensor_dim]`` -> ``Conv1d`` x len(``merge_widths``) (the first kernel spans all sensors)
  -> flatten -> GRU over the S intervals -> mean over intervals -> dropout -> ``Linear`` -> logits.

Scaled down / simplified to fit this 2-core CPU machine and the small windows used here: the
individual convs are 1-D over frequency with the ``2C`` spectral components as input channels (the
original uses 2-D kernels over frequency x component); default widths are 32 (original 64); a
``Linear`` maps each sensor to a common ``sensor_dim`` so sensors with different window lengths can
be merged; the GRU has one layer of ``gru_hidden`` cells (original two layers of 120). ``beta`` is
uniform over the present modalities (DeepSense has no modality weights); ``present`` zeroes missing
sensors' features.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.fft  # noqa: F401  (torch 1.10 needs the submodule imported)
from torch import nn

from ..data.dataset import MultimodalDataset
from ..errors import ConfigError
from ..models.classifier import CosmoModel


def conv_stack(c_in: int, widths: Sequence[int], kernel: int, dropout: float) -> Tuple[nn.Sequential, int]:
    """``[Conv1d(no bias) -> BN -> ReLU] x len(widths)`` then dropout; returns the stack and its width."""
    layers = []  # type: List[nn.Module]
    for w in widths:
        layers += [nn.Conv1d(c_in, w, kernel, padding=kernel // 2, bias=False), nn.BatchNorm1d(w),
                   nn.ReLU(inplace=True)]
        c_in = w
    layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers), c_in


class IntervalSensorEncoder(nn.Module):
    """Per-sensor DeepSense encoder: ``x [B, T, C]`` -> ``[B, intervals, sensor_dim]`` (see module doc).

    ``fft=False`` convolves the raw interval samples instead of their spectrum.
    """

    def __init__(self, in_channels: int, window: int, intervals: int = 8, widths: Sequence[int] = (32, 32, 32),
                 kernel: int = 3, sensor_dim: int = 64, dropout: float = 0.2, fft: bool = True) -> None:
        super().__init__()
        if intervals < 1 or window // intervals < 2:
            raise ConfigError("deepsense: window {} is too short for {} intervals of >= 2 samples".format(
                window, intervals))
        self.intervals, self.tau, self.fft = intervals, window // intervals, fft
        bins = self.tau // 2 + 1 if fft else self.tau
        c_in = 2 * in_channels if fft else in_channels
        self.net, c_in = conv_stack(c_in, widths, kernel, dropout)
        self.out = nn.Linear(c_in * bins, sensor_dim)
        self.out_steps, self.out_features = intervals, sensor_dim
        self.feature_dim = intervals * sensor_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        s, tau = self.intervals, self.tau
        v = x[:, :s * tau].reshape(b * s, tau, c)  # [B*S, tau, C]
        if self.fft:
            f = torch.fft.rfft(v, dim=1)  # [B*S, bins, C]
            v = torch.cat([f.real, f.imag], dim=2)
        h = self.net(v.transpose(1, 2))  # [B*S, W, bins]
        return torch.relu(self.out(h.flatten(1))).reshape(b, s, -1)


class DeepSenseMerge(nn.Module):
    """Merge convs across sensors, GRU over intervals, mean, linear classifier (see module doc)."""

    def __init__(self, num_modalities: int, sensor_dim: int, num_classes: int,
                 merge_widths: Sequence[int] = (32, 32, 32), kernel: int = 3, gru_hidden: int = 64,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.merge, c_in = conv_stack(num_modalities, merge_widths, kernel, dropout)
        self.reduce = nn.Linear(c_in * sensor_dim, gru_hidden)
        self.gru = nn.GRU(gru_hidden, gru_hidden, batch_first=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(gru_hidden, num_classes))

    def forward(self, hs: List[torch.Tensor], present: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        h = torch.stack(hs, 2)  # [B, S, M, F]
        b, s, m, f = h.shape
        if present is not None:
            h = h * present.to(h.dtype)[:, None, :, None]
            beta = present.to(h.dtype)
        else:
            beta = torch.ones(b, m, device=h.device, dtype=h.dtype)
        beta = beta / beta.sum(1, keepdim=True).clamp(min=1e-12)
        v = self.merge(h.reshape(b * s, m, f)).flatten(1)  # [B*S, W*F]
        v = torch.relu(self.reduce(v)).reshape(b, s, -1)
        out, _ = self.gru(v)
        return self.head(out.mean(1)), beta


class DeepSenseModel(CosmoModel):
    """``.encoders`` (one ``IntervalSensorEncoder`` per modality) + ``.classifier`` (``DeepSenseMerge``);
    ``forward(xs, present=None) -> (logits [B, K], beta [B, M])`` with ``beta`` uniform. The wiring is
    ``CosmoModel``'s; only the parts differ."""


def build_deepsense(ds: MultimodalDataset, config: object, intervals: int = 8,
                    widths: Sequence[int] = (32, 32, 32), merge_widths: Sequence[int] = (32, 32, 32),
                    sensor_dim: int = 64, dropout: float = 0.2, fft: bool = True) -> DeepSenseModel:
    """DeepSense for ``ds``'s modalities (every modality read as ``[T, C]`` channels, skeletons too);
    GRU size from ``config.gru_hidden`` (a ``Stage2Config``)."""
    encs = [IntervalSensorEncoder(a.shape[2], a.shape[1], intervals, widths, sensor_dim=sensor_dim,
                                  dropout=dropout, fft=fft) for a in ds.x.values()]
    clf = DeepSenseMerge(len(encs), sensor_dim, ds.num_classes, merge_widths,
                         gru_hidden=getattr(config, "gru_hidden", 64), dropout=dropout)
    return DeepSenseModel(encs, clf, ds.modalities)


__all__ = ["DeepSenseMerge", "DeepSenseModel", "IntervalSensorEncoder", "build_deepsense"]
