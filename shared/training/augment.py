"""Window augmentations of the training loops (torch), applied to normalized windows ``[B, T_j, C_j]``.

``augment`` (scaling + jitter) is what every trainer uses; ``Augment`` adds the transforms the HAR
contrastive literature reports as useful for stage 1 (rotation, time-warp, permutation, masking), each
off at its zero value. Transforms that move time (warp, permutation, masking) draw one plan per window
and apply it to every modality in normalized time, so modalities of different rates stay aligned and a
fused view still describes one moment; rotation and scaling are drawn per modality.
"""
import math
from dataclasses import dataclass
from typing import List

import torch


def augment(xs: List[torch.Tensor], jitter: float, scale: float) -> List[torch.Tensor]:
    """Per-window random scaling ``N(1, scale)`` per channel and additive Gaussian jitter ``N(0, jitter)``.

    Applied to normalized windows (so sigmas are in standard-deviation units).
    """
    if jitter <= 0 and scale <= 0:
        return xs
    out = []
    for x in xs:
        if scale > 0:
            x = x * (1.0 + scale * torch.randn(x.shape[0], 1, x.shape[2], device=x.device))
        if jitter > 0:
            x = x + jitter * torch.randn_like(x)
        out.append(x)
    return out


def rotate(x: torch.Tensor, max_degrees: float) -> torch.Tensor:
    """Every 3-channel group of ``x`` (the x, y, z of one tri-axial sensor) turned by its window's random
    rotation: a uniform axis, an angle uniform in +-``max_degrees`` (Rodrigues' formula). Modalities
    whose channel count is not a multiple of 3 (heart rate, ...) are returned as they are. The windows
    are normalized per channel, so this is the physical rotation up to the per-axis scale of the
    normalizer: a device worn at a slightly different angle."""
    b, t, c = x.shape
    if c % 3 or max_degrees <= 0:
        return x
    axis = torch.randn(b, 3, device=x.device)
    axis = axis / axis.norm(dim=1, keepdim=True).clamp_min(1e-8)
    angle = (torch.rand(b, device=x.device) * 2 - 1) * math.radians(max_degrees)
    k = torch.zeros(b, 3, 3, device=x.device)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(1, 2)
    eye = torch.eye(3, device=x.device).expand(b, 3, 3)
    s, co = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    r = eye + s * k + (1 - co) * torch.bmm(k, k)  # [B, 3, 3]
    groups = x.reshape(b, t, c // 3, 3)
    return torch.einsum("btgj,bij->btgi", groups, r).reshape(b, t, c)


def _resample(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``x`` [B, T, C] read at fractional positions ``pos`` [B, T'] in normalized time [0, 1] (linear)."""
    t = x.shape[1]
    p = (pos * (t - 1)).clamp(0, t - 1)
    lo = p.floor().long()
    hi = (lo + 1).clamp(max=t - 1)
    w = (p - lo.to(p.dtype)).unsqueeze(2)
    c = x.shape[2]
    return (torch.gather(x, 1, lo.unsqueeze(2).expand(-1, -1, c)) * (1 - w)
            + torch.gather(x, 1, hi.unsqueeze(2).expand(-1, -1, c)) * w)


def warp_plan(b: int, sigma: float, knots: int = 4, device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """Per-window speed at ``knots`` + 1 equally spaced knots, ``N(1, sigma)`` clamped to [0.1, ..]
    [B, knots + 1]: a smooth monotone warp of normalized time (``warped_time``)."""
    return (1.0 + sigma * torch.randn(b, knots + 1, device=device)).clamp_min(0.1)


def warped_time(speed: torch.Tensor, t: int) -> torch.Tensor:
    """Positions in [0, 1] [B, t] where a window with the knot speeds ``speed`` is read: the cumulative
    time of the speed curve (interpolated between knots), rescaled so the warped window still spans the
    whole original one."""
    grid = torch.linspace(0, 1, t, device=speed.device)
    k = speed.shape[1] - 1
    f = grid * k
    lo = f.floor().long().clamp(max=k - 1)
    w = f - lo.to(f.dtype)
    v = speed[:, lo] * (1 - w) + speed[:, lo + 1] * w  # [B, t]
    cum = torch.cumsum(v, 1) - v[:, :1]
    return cum / cum[:, -1:].clamp_min(1e-8)


def permute_slices(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """``x`` [B, T, C] cut into ``k`` consecutive slices (``k`` = ``order.shape[1]``, lengths differing by
    at most one step) and put back together in each window's ``order`` [B, k]: the same order for every
    modality of a window, whatever its rate."""
    b, t, c = x.shape
    k = order.shape[1]
    if t % k == 0:
        parts = x.reshape(b, k, t // k, c)
        return torch.gather(parts, 1, order[:, :, None, None].expand(-1, -1, t // k, c)).reshape(b, t, c)
    bounds = [round(i * t / k) for i in range(k + 1)]
    steps = [torch.arange(bounds[i], bounds[i + 1], device=x.device) for i in range(k)]
    idx = torch.stack([torch.cat([steps[int(j)] for j in row]) for row in order])  # [B, T]
    return torch.gather(x, 1, idx.unsqueeze(2).expand(-1, -1, c))


@dataclass(frozen=True)
class Augment:
    """Augmentations of one training step; every field off at 0.

    ``jitter``/``scale``: as ``augment``. ``rotate``: max degrees of a random rotation of each tri-axial
    sensor (``rotate``). ``time_warp``: sigma of a smooth random speed change (4 knots, ``warped_time``).
    ``permute``: the window cut into this many slices that are shuffled (>= 2 to act). ``mask``: the
    fraction of the window (in time) zeroed in one random span. Time transforms: one plan per
    window, the same for every modality.
    """

    jitter: float = 0.0
    scale: float = 0.0
    rotate: float = 0.0
    time_warp: float = 0.0
    permute: int = 0
    mask: float = 0.0

    def __call__(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        xs = augment(xs, self.jitter, self.scale)
        if self.rotate > 0:
            xs = [rotate(x, self.rotate) for x in xs]
        b, dev = xs[0].shape[0], xs[0].device
        if self.time_warp > 0:
            speed = warp_plan(b, self.time_warp, device=dev)
            xs = [_resample(x, warped_time(speed, x.shape[1])) for x in xs]
        if self.permute >= 2:
            order = torch.argsort(torch.rand(b, self.permute, device=dev), 1)
            xs = [permute_slices(x, order) for x in xs]
        if self.mask > 0:
            start = torch.rand(b, 1, device=dev) * (1 - self.mask)
            out = []
            for x in xs:
                grid = torch.linspace(0, 1, x.shape[1], device=dev)[None]
                keep = ((grid < start) | (grid > start + self.mask)).to(x.dtype)
                out.append(x * keep.unsqueeze(2))
            xs = out
        return xs
