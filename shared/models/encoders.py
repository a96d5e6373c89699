"""Per-modality encoders and a small registry (name -> constructor + frozen config dataclass).

Every encoder maps a window ``x [B, T, C]`` to a feature map ``[B, S, F]`` (S steps, F features per
step); ``feature_dim = S * F`` is the length of the flattened feature ``z_j`` of the Cosmo paper.
"""
from typing import Any, Callable, Dict, List, Tuple, Type

import torch
from dataclasses import asdict, dataclass, fields
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError

_REGISTRY = {}  # type: Dict[str, Tuple[Type[Any], Callable[..., nn.Module]]]


def register_encoder(name: str, config_cls: Type[Any]) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class decorator: register an encoder under ``name`` with its config dataclass."""
    def deco(ctor: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ConfigError("encoder {!r} registered twice".format(name))
        _REGISTRY[name] = (config_cls, ctor)
        return ctor
    return deco


def list_encoders() -> List[str]:
    return sorted(_REGISTRY)


def encoder_config(name: str, **kwargs: Any) -> Any:
    """Build the config dataclass of encoder ``name``; unknown keys are rejected by name."""
    if name not in _REGISTRY:
        raise ConfigError("unknown encoder {!r}; registered: {}".format(name, list_encoders()))
    cls = _REGISTRY[name][0]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError("encoder {!r}: unknown config keys {} (known: {})".format(name, unknown, sorted(known)))
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return cls(**kwargs)


def build_encoder(name: str, **kwargs: Any) -> nn.Module:
    cfg = encoder_config(name, **kwargs)
    return _REGISTRY[name][1](cfg)


def encoder_spec(enc: nn.Module) -> Dict[str, Any]:
    """``{"name": ..., "config": {...}}`` so that ``build_encoder(name, **config)`` rebuilds ``enc``."""
    return {"name": enc.registry_name, "config": asdict(enc.config)}  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conv1dEncoderConfig:
    """1-D conv encoder for inertial windows ``[B, T, C]`` (any channel count).

    ``widths`` conv layers (kernel ``kernel``, BN, ReLU, max-pool 2 after each but the last), dropout,
    then adaptive average pooling of the time axis to ``out_steps``.
    """

    in_channels: int = 3
    window: int = 128
    widths: Tuple[int, ...] = (64, 64, 64, 32)
    kernel: int = 5
    dropout: float = 0.2
    out_steps: int = 8


class Conv1dEncoder(nn.Module):
    """``as_2d``: compute the same layers as 2-D ops on ``[B, C, 1, T]`` (same weights, same numbers).
    ``shared.export.export_onnx`` sets it while exporting: ONNX Runtime's CPU kernels for 2-D convolutions
    (blocked NCHWc layout, ReLU and pooling fused into the chain) run these encoders about 1.7x faster at
    batch 32 than its 1-D ones (``benchmarks/latency.py``); TensorRT turns 1-D convolutions into 2-D ones
    itself. A class attribute, not a parameter: state_dicts do not change."""

    registry_name = "conv1d"
    as_2d = False

    def __init__(self, config: Conv1dEncoderConfig) -> None:
        super().__init__()
        self.config = config
        layers = []  # type: List[nn.Module]
        c_in, t = config.in_channels, config.window
        for i, w in enumerate(config.widths):
            layers += [nn.Conv1d(c_in, w, config.kernel, padding=config.kernel // 2, bias=False),
                       nn.BatchNorm1d(w), nn.ReLU(inplace=True)]
            if i < len(config.widths) - 1 and t // 2 >= config.out_steps:
                layers.append(nn.MaxPool1d(2))
                t //= 2
            c_in = w
        layers.append(nn.Dropout(config.dropout))
        self.net = nn.Sequential(*layers)
        if t % config.out_steps != 0:
            raise ConfigError("conv1d: window {} pools to {} steps, not a multiple of out_steps {}".format(
                config.window, t, config.out_steps))
        # A fixed-size average pool (not AdaptiveAvgPool1d) keeps the ONNX export plain for TensorRT.
        self.pool = nn.AvgPool1d(t // config.out_steps)
        self.out_steps = config.out_steps
        self.out_features = c_in
        self.feature_dim = self.out_steps * self.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, T, C]`` -> ``[B, out_steps, F]``."""
        if self.as_2d:
            h = x.transpose(1, 2).unsqueeze(2)
            for layer in self.net:
                h = _as_2d(layer, h)
            return _as_2d(self.pool, h).squeeze(2).transpose(1, 2)
        h = self.pool(self.net(x.transpose(1, 2)))
        return h.transpose(1, 2)


def _as_2d(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``layer`` (1-D, inference) applied to ``h [B, C, 1, T]`` as its 2-D equivalent over (1, T)."""
    if isinstance(layer, nn.Conv1d) and layer.padding_mode == "zeros" and not isinstance(layer.padding, str):
        return F.conv2d(h, layer.weight.unsqueeze(2), layer.bias, (1, layer.stride[0]), (0, layer.padding[0]),
                        (1, layer.dilation[0]), layer.groups)
    if isinstance(layer, nn.BatchNorm1d) and not layer.training and layer.track_running_stats:
        return F.batch_norm(h, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, layer.eps)
    if isinstance(layer, nn.MaxPool1d):
        k, s, p, d = (_first(v) for v in (layer.kernel_size, layer.stride, layer.padding, layer.dilation))
        return F.max_pool2d(h, (1, k), (1, s), (0, p), (1, d), layer.ceil_mode)
    if isinstance(layer, nn.AvgPool1d):
        k, s, p = (_first(v) for v in (layer.kernel_size, layer.stride, layer.padding))
        return F.avg_pool2d(h, (1, k), (1, s), (0, p), layer.ceil_mode, layer.count_include_pad)
    if isinstance(layer, (nn.ReLU, nn.Dropout)):  # elementwise: any shape
        return layer(h)
    raise ConfigError("conv1d: no 2-D form for {} (in this mode)".format(layer))


def _first(v: Any) -> int:
    return int(v if isinstance(v, int) else v[0])


register_encoder("conv1d", Conv1dEncoderConfig)(Conv1dEncoder)


@dataclass(frozen=True)
class Conv3dEncoderConfig:
    """3-D conv encoder for skeleton sequences ``[B, T, J*K]`` (T frames, J joints, K coords).

    The window is viewed as a 1-channel volume ``[T, J, K]``; conv3d layers with kernel
    ``(kernel, 3, 1)`` mix time and neighbouring joints; pooling halves time and joints; the result is
    pooled to ``out_steps`` time steps with joints and coords averaged.
    """

    joints: int = 20
    coords: int = 3
    window: int = 40
    widths: Tuple[int, ...] = (32, 32, 32)
    kernel: int = 3
    dropout: float = 0.2
    out_steps: int = 5


class Conv3dEncoder(nn.Module):
    registry_name = "conv3d"

    def __init__(self, config: Conv3dEncoderConfig) -> None:
        super().__init__()
        self.config = config
        layers = []  # type: List[nn.Module]
        c_in, t, j = 1, config.window, config.joints
        for i, w in enumerate(config.widths):
            layers += [nn.Conv3d(c_in, w, (config.kernel, 3, 1), padding=(config.kernel // 2, 1, 0), bias=False),
                       nn.BatchNorm3d(w), nn.ReLU(inplace=True)]
            if i < len(config.widths) - 1 and t // 2 >= config.out_steps:
                pj = 2 if j >= 4 else 1
                layers.append(nn.MaxPool3d((2, pj, 1)))
                t //= 2
                j //= pj
            c_in = w
        layers.append(nn.Dropout(config.dropout))
        self.net = nn.Sequential(*layers)
        if t % config.out_steps != 0:
            raise ConfigError("conv3d: window {} pools to {} frames, not a multiple of out_steps {}".format(
                config.window, t, config.out_steps))
        self.pool = nn.AvgPool3d((t // config.out_steps, j, config.coords))
        self.out_steps = config.out_steps
        self.out_features = c_in
        self.feature_dim = self.out_steps * self.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, T, J*K]`` -> ``[B, out_steps, F]``."""
        b, t, _ = x.shape
        v = x.reshape(b, 1, t, self.config.joints, self.config.coords)
        h = self.pool(self.net(v))  # [B, F, S, 1, 1]
        return h.flatten(2).transpose(1, 2)


register_encoder("conv3d", Conv3dEncoderConfig)(Conv3dEncoder)
