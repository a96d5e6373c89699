"""Cosmo contrastive fusion loss and the fusion-based feature augmentation it is applied to.

Paper: Ouyang et al., "Cosmo: Contrastive Fusion Learning with Small Data for Multimodal Human
Activity Recognition", MobiCom 2022.
"""
import itertools


import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def simplex_grid(num_modalities: int, num_views: int) -> np.ndarray:
    """Fixed fusion weights ``[P, M]`` on the simplex, all weights > 0.

    For M = 2 this is the paper's grid ``alpha_1 = 0.1 ... 0.9`` (P = 9; other P are spread evenly in
    [0.1, 0.9]). For M > 2: the interior points of the simplex lattice with the coarsest step that
    gives at least P points, P of them taken at evenly spaced positions in lexicographic order.
    """
    m, p = num_modalities, num_views
    if m < 2 or p < 2:
        raise ConfigError("simplex_grid: need M >= 2 modalities and P >= 2 views, got M={}, P={}".format(m, p))
    if m == 2:
        a = np.linspace(0.1, 0.9, p)
        return np.stack([a, 1.0 - a], 1).astype(np.float32)
    n = m
    while True:
        pts = [c for c in itertools.product(range(1, n), repeat=m - 1) if sum(c) < n]
        if len(pts) >= p:
            break
        n += 1
    full = np.array([list(c) + [n - sum(c)] for c in pts], np.float64) / n
    take = np.round(np.linspace(0, len(full) - 1, p)).astype(int)
    return full[take].astype(np.float32)


class FusionViews(nn.Module):
    """Make P fused views ``v_k = sum_j alpha_jk r_j`` from per-modality features.

    Args:
        num_views: P.
        mode: ``"dirichlet"`` draws alpha ~ Dir(concentration * 1) fresh for each sample and view (the
            author's 3-modality code); ``"grid"`` uses ``simplex_grid`` (the paper's fixed grid).
        concentration: Dirichlet concentration.

    Shapes: ``r [B, M, D]`` -> ``v [B, P, D]``.
    """

    def __init__(self, num_views: int = 9, mode: str = "dirichlet", concentration: float = 1.0) -> None:
        super().__init__()
        if mode not in ("dirichlet", "grid"):
            raise ConfigError("fusion mode must be 'dirichlet' or 'grid', got {!r}".format(mode))
        if num_views < 2:
            raise ConfigError("num_views must be >= 2, got {}".format(num_views))
        if concentration <= 0:
            raise ConfigError("concentration must be > 0, got {}".format(concentration))
        self.num_views, self.mode, self.concentration = num_views, mode, concentration

    def weights(self, batch: int, num_modalities: int, device: torch.device) -> torch.Tensor:
        """Fusion weights ``[B, P, M]``, each row on the simplex."""
        if self.mode == "grid":
            w = torch.from_numpy(simplex_grid(num_modalities, self.num_views)).to(device)
            return w.unsqueeze(0).expand(batch, -1, -1)
        conc = torch.full((num_modalities,), float(self.concentration), device=device)
        return torch.distributions.Dirichlet(conc).sample((batch, self.num_views))

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        if r.dim() != 3:
            raise ValueError("FusionViews expects r [B, M, D], got shape {}".format(tuple(r.shape)))
        w = self.weights(r.shape[0], r.shape[1], r.device)
        return torch.bmm(w, r)


class ContrastiveFusionLoss(nn.Module):
    """SupCon-style loss over fused views, positives = the other views of the same sample.

    With ``N = B * P`` views ``v_s`` (re-normalized to unit length inside the loss, since fused
    vectors are not unit norm) and ``P(s)`` the other ``P - 1`` views of the sample of ``s``:

        L = 1/N * sum_s  -1/|P(s)| * sum_{p in P(s)}
                log( exp(v_s . v_p / tau) / sum_{a != s} exp(v_s . v_a / tau) )

    (the paper writes the sum over s; we average so the scale does not depend on the batch size,
    and scale by ``tau / base_temperature`` as SupCon does, 1 by default). Computed with a row-max
    shift (log-sum-exp) so it is finite for any tau > 0.

    Shapes: ``views [B, P, D]`` -> scalar. Example::

        loss = ContrastiveFusionLoss(0.07)(FusionViews(9)(torch.stack([r1, r2], 1)))
    """

    def __init__(self, temperature: float = 0.07, base_temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0 or base_temperature <= 0:
            raise ConfigError("temperature must be > 0, got {}".format(temperature))
        self.temperature, self.base_temperature = temperature, base_temperature

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        if views.dim() != 3 or views.shape[1] < 2:
            raise ValueError("ContrastiveFusionLoss expects views [B, P>=2, D], got {}".format(tuple(views.shape)))
        b, p, _ = views.shape
        v = F.normalize(views.reshape(b * p, -1), dim=1)
        logits = v @ v.t() / self.temperature
        sample = torch.arange(b, device=v.device).repeat_interleave(p)
        self_mask = torch.eye(b * p, dtype=torch.bool, device=v.device)
        pos = (sample[:, None] == sample[None, :]) & ~self_mask
        logits = logits.masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        mean_pos = log_prob.masked_fill(~pos, 0.0).sum(1) / pos.sum(1).clamp(min=1)
        return -(self.temperature / self.base_temperature) * mean_pos.mean()


__all__ = ["ContrastiveFusionLoss", "FusionViews", "simplex_grid"]
