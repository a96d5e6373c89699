"""MW2-style IMU encoder (IMU2CLIP, Moon et al. 2022) and a linear projection to a text space.

Released MW2 (see docs/REFERENCE.md): ``GroupNorm(2, 6)`` on the raw input -> 3 x [Conv1d(32 channels,
kernels 10/5/5, dilation 2, no bias, no activation) -> MaxPool1d(3)] -> ``GroupNorm(4, 32)`` ->
``GRU(hidden 512, 1 layer)`` -> final hidden state (512-d, no projection head).

**Deviation from the released code:** the released model feeds the ``[B, 32, T']`` conv output to the
GRU as if the 32 *channels* were time steps (its input size is the pooled length ``T'``), so it only
type-checks for ~1000-sample windows (978-1004 samples). Here the conv output is transposed first and
the GRU runs over **time** (input size 32, ``T'`` steps), which works for any window long enough to
survive the three conv+pool stages (``window >= 141`` with the released kernels; see
:func:`mw2_min_window`). With ``padding="same"`` (not in the released code) every conv is zero-padded
by ``dilation * (k - 1) // 2`` on both sides and the pools round up (``ceil_mode``), so **any** window
length works (HAPT's 128 samples leave 5 GRU steps; a 2000-sample window 75); the default ``"valid"``
keeps the released arithmetic, and windows too short for it raise a ConfigError naming the minimum.

The post-conv normalization is selectable (the enhancement paper found LayerNorm best):

* ``"group"``: ``GroupNorm(4, 32)`` as released (statistics over groups of 8 channels x all time steps);
* ``"instance"``: ``GroupNorm(32, 32)`` = ``InstanceNorm1d(32, affine=True)`` (per channel over time);
* ``"layer"``: ``LayerNorm(32)`` over the channel dim at every time step (transpose + LayerNorm; exports
  as plain ONNX ops at opset 13).

Registry contract ``x [B, T, C] -> [B, S, F]``: MW2 returns the GRU's final hidden state as
``[B, 1, hidden]`` (``out_steps = 1``, ``out_features = hidden``, ``feature_dim = hidden``).
"""
from typing import Tuple

import torch
from dataclasses import dataclass
from torch import nn

from ..errors import ConfigError
from .encoders import register_encoder

NORMS = ("group", "instance", "layer")


def mw2_out_len(window: int, kernels: Tuple[int, ...] = (10, 5, 5), dilation: int = 2, pool: int = 3,
                padding: str = "valid") -> int:
    """Number of time steps left after the conv + MaxPool1d stages (<= 0: too short)."""
    t = window
    for k in kernels:
        t = t - dilation * (k - 1) + (2 * (dilation * (k - 1) // 2) if padding == "same" else 0)
        if t < 1:
            return 0
        t = -(-t // pool) if padding == "same" else t // pool
    return t


def mw2_min_window(kernels: Tuple[int, ...] = (10, 5, 5), dilation: int = 2, pool: int = 3) -> int:
    """Shortest window that leaves at least one time step for the GRU (141 for the released stack)."""
    t = 1
    for k in reversed(tuple(kernels)):
        t = t * pool + dilation * (k - 1)
    return t


@dataclass(frozen=True)
class MW2EncoderConfig:
    """MW2 encoder config (defaults = the released model, for 6-channel 200 Hz windows of 5 s)."""

    in_channels: int = 6
    window: int = 1000
    norm: str = "group"
    channels: int = 32
    kernels: Tuple[int, ...] = (10, 5, 5)
    dilation: int = 2
    pool: int = 3
    hidden: int = 512
    input_groups: int = 2
    norm_groups: int = 4
    padding: str = "valid"


class _ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dim of a ``[B, C, T]`` map (per time step)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(channels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.ln(h.transpose(1, 2)).transpose(1, 2)


class MW2Encoder(nn.Module):
    registry_name = "mw2"

    def __init__(self, config: MW2EncoderConfig) -> None:
        super().__init__()
        self.config = config
        if config.norm not in NORMS:
            raise ConfigError("mw2: norm must be one of {}, got {!r}".format(NORMS, config.norm))
        if config.in_channels % config.input_groups != 0:
            raise ConfigError("mw2: in_channels {} not divisible by input_groups {}".format(
                config.in_channels, config.input_groups))
        if config.norm == "group" and config.channels % config.norm_groups != 0:
            raise ConfigError("mw2: channels {} not divisible by norm_groups {}".format(
                config.channels, config.norm_groups))
        if config.padding not in ("valid", "same"):
            raise ConfigError("mw2: padding must be 'valid' or 'same', got {!r}".format(config.padding))
        same = config.padding == "same"
        t = mw2_out_len(config.window, tuple(config.kernels), config.dilation, config.pool, config.padding)
        if t < 1:
            raise ConfigError("mw2: window {} is too short: kernels {} (dilation {}, pool {}) need at least {} "
                              "samples (or padding 'same')".format(config.window, tuple(config.kernels), config.dilation, config.pool,
                                               mw2_min_window(tuple(config.kernels), config.dilation, config.pool)))
        if config.norm == "instance" and t < 2:
            raise ConfigError("mw2: norm 'instance' needs at least 2 time steps after the convs; window {} leaves "
                              "{} (use a longer window or another norm)".format(config.window, t))
        self.input_norm = nn.GroupNorm(config.input_groups, config.in_channels)
        layers = []
        c_in = config.in_channels
        for k in config.kernels:
            layers += [nn.Conv1d(c_in, config.channels, k, dilation=config.dilation, bias=False,
                                 padding=config.dilation * (k - 1) // 2 if same else 0),
                       nn.MaxPool1d(config.pool, ceil_mode=same)]
            c_in = config.channels
        self.convs = nn.Sequential(*layers)
        if config.norm == "group":
            self.norm = nn.GroupNorm(config.norm_groups, config.channels)  # type: nn.Module
        elif config.norm == "instance":
            # GroupNorm with one channel per group == InstanceNorm1d(affine=True), batch-size independent.
            self.norm = nn.GroupNorm(config.channels, config.channels)
        else:
            self.norm = _ChannelLayerNorm(config.channels)
        self.gru = nn.GRU(config.channels, config.hidden, num_layers=1, batch_first=True)
        self.steps_after_conv = t
        self.out_steps = 1
        self.out_features = config.hidden
        self.feature_dim = config.hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, T, C]`` -> final GRU hidden state ``[B, 1, hidden]``."""
        h = self.input_norm(x.transpose(1, 2))   # [B, C, T]
        h = self.norm(self.convs(h))             # [B, 32, T']
        _, hn = self.gru(h.transpose(1, 2))      # GRU over time: [B, T', 32] -> hn [1, B, H]
        return hn.transpose(0, 1)                # [B, 1, H]


register_encoder("mw2", MW2EncoderConfig)(MW2Encoder)


class ProjectionToText(nn.Module):
    """Linear map of an IMU embedding into a text-embedding space (optionally L2-normalized).

    Accepts ``[B, in_dim]`` or an encoder map ``[B, S, F]`` (flattened to ``S * F = in_dim``).
    """

    def __init__(self, in_dim: int, text_dim: int, normalize: bool = True) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.text_dim = text_dim
        self.normalize = normalize
        self.linear = nn.Linear(in_dim, text_dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        y = self.linear(h.flatten(1))
        if self.normalize:
            y = nn.functional.normalize(y, dim=1)
        return y
