import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared.errors import ConfigError
from shared.losses import ContrastiveFusionLoss, FusionViews, simplex_grid


def naive_fusion_loss(views: torch.Tensor, tau: float) -> float:
    """The paper's formula with explicit loops (averaged over anchors)."""
    b, p, _ = views.shape
    v = F.normalize(views.reshape(b * p, -1), dim=1).double()
    sample = [i // p for i in range(b * p)]
    total = 0.0
    for s in range(b * p):
        denom = sum(math.exp(float(v[s] @ v[a]) / tau) for a in range(b * p) if a != s)
        pos = [q for q in range(b * p) if q != s and sample[q] == sample[s]]
        total += -sum(math.log(math.exp(float(v[s] @ v[q]) / tau) / denom) for q in pos) / len(pos)
    return total / (b * p)


@pytest.mark.parametrize("b,p,d,tau", [(2, 2, 4, 0.5), (4, 3, 8, 0.07), (3, 9, 16, 1.0), (5, 2, 3, 0.2)])
def test_matches_naive_loop(b, p, d, tau):
    torch.manual_seed(b * 100 + p)
    views = torch.randn(b, p, d)
    got = ContrastiveFusionLoss(tau, base_temperature=tau)(views)
    assert float(got) == pytest.approx(naive_fusion_loss(views, tau), rel=1e-5, abs=1e-6)


def test_scale_invariant_and_finite_at_tiny_temperature():
    torch.manual_seed(0)
    views = torch.randn(6, 4, 32)
    loss = ContrastiveFusionLoss(0.07)
    assert float(loss(views)) == pytest.approx(float(loss(views * 37.0)), rel=1e-5)
    extreme = ContrastiveFusionLoss(1e-3, base_temperature=1e-3)(views)
    assert torch.isfinite(extreme)


def test_identical_views_beat_random_views():
    torch.manual_seed(0)
    base = torch.randn(8, 1, 16)
    aligned = base.repeat(1, 4, 1) + 1e-3 * torch.randn(8, 4, 16)
    shuffled = torch.randn(8, 4, 16)
    loss = ContrastiveFusionLoss(0.1)
    assert float(loss(aligned)) < float(loss(shuffled))


def test_gradient_flows_to_every_view():
    views = torch.randn(4, 3, 8, requires_grad=True)
    ContrastiveFusionLoss(0.1)(views).backward()
    assert views.grad is not None and (views.grad.abs().sum(-1) > 0).all()


@pytest.mark.parametrize("m,p", [(2, 9), (2, 4), (3, 6), (4, 5)])
def test_grid_is_on_simplex(m, p):
    g = simplex_grid(m, p)
    assert g.shape == (p, m)
    assert np.allclose(g.sum(1), 1.0) and (g > 0).all()
    assert len({tuple(r) for r in np.round(g, 6)}) == p


def test_paper_grid_for_two_modalities():
    g = simplex_grid(2, 9)
    assert np.allclose(g[:, 0], np.arange(1, 10) / 10.0)


@pytest.mark.parametrize("mode", ["dirichlet", "grid"])
@pytest.mark.parametrize("m", [2, 3, 4])
def test_fusion_views_are_convex_combinations(mode, m):
    torch.manual_seed(0)
    fv = FusionViews(num_views=6, mode=mode)
    r = torch.randn(5, m, 7)
    w = fv.weights(5, m, r.device)
    assert w.shape == (5, 6, m)
    assert torch.allclose(w.sum(-1), torch.ones(5, 6)) and (w >= 0).all()
    v = fv(r)
    assert v.shape == (5, 6, 7)
    if mode == "grid":
        assert torch.allclose(v, torch.einsum("bpm,bmd->bpd", w, r), atol=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="mode"):
        FusionViews(4, mode="uniform")
    with pytest.raises(ConfigError, match="temperature"):
        ContrastiveFusionLoss(0.0)
    with pytest.raises(ValueError, match=r"\[B, P>=2, D\]"):
        ContrastiveFusionLoss()(torch.randn(4, 1, 8))
