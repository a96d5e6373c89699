"""Alignment losses (InfoNCE, the seed paper's distillation family, triplet): each against a naive
loop re-computation of its docstring formula, plus properties."""
import math

import pytest
import torch
from torch import nn

from shared.errors import ConfigError
from shared.losses import (
    DISTILLATION_LOSSES, ActivationBoundariesLoss, AttentionTransferLoss, CombinedAlignmentLoss, FitNetsLoss,
    NSTLoss, SymmetricInfoNCE, TripletLoss, build_distillation_loss,
)


# ---------------------------------------------------------------- naive references (lists of floats)
def _rows(x):
    return x.detach().double().tolist()


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _unit(a):
    n = math.sqrt(_dot(a, a))
    return [x / max(n, 1e-12) for x in a]


def _smooth_l1(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def naive_soft_target(s, t, temperature=4.0):
    total = 0.0
    for rs, rt in zip(_rows(s), _rows(t)):
        zs = sum(math.exp(v / temperature) for v in rs)
        zt = sum(math.exp(v / temperature) for v in rt)
        for vs, vt in zip(rs, rt):
            ps, pt = math.exp(vs / temperature) / zs, math.exp(vt / temperature) / zt
            total += pt * (math.log(pt) - math.log(ps))
    return temperature ** 2 * total / len(_rows(s))


def naive_mse(s, t):
    rs, rt = _rows(s), _rows(t)
    return sum((a - b) ** 2 for r1, r2 in zip(rs, rt) for a, b in zip(r1, r2)) / (len(rs) * len(rs[0]))


def naive_at(s, t, p=2.0):
    total, n = 0.0, 0
    for rs, rt in zip(_rows(s), _rows(t)):
        qs = _unit([abs(v) ** p for v in rs])
        qt = _unit([abs(v) ** p for v in rt])
        total += sum((a - b) ** 2 for a, b in zip(qs, qt))
        n += len(qs)
    return total / n


def naive_at_maps(s, t, p=2.0):
    """[B, C, N] maps: q[i, n] = sum_c |f[i, c, n]|^p."""
    def att(x):
        return [_unit([sum(abs(f[c][n]) ** p for c in range(len(f))) for n in range(len(f[0]))])
                for f in x.detach().double().tolist()]
    a_s, a_t = att(s), att(t)
    total = sum((a - b) ** 2 for r1, r2 in zip(a_s, a_t) for a, b in zip(r1, r2))
    return total / (len(a_s) * len(a_s[0]))


def naive_sp(s, t):
    def gram(f):
        rows = _rows(f)
        return [_unit([_dot(a, b) for b in rows]) for a in rows]
    gs, gt = gram(s), gram(t)
    return sum((a - b) ** 2 for r1, r2 in zip(gs, gt) for a, b in zip(r1, r2)) / len(gs)


def _mmd_poly(xs, xt):
    def k(a, b):
        return sum(_dot(u, v) ** 2 for u in a for v in b) / (len(a) * len(b))
    return k(xs, xs) + k(xt, xt) - 2 * k(xs, xt)


def naive_nst(s, t):
    """[B, D]: neurons are the D columns, described over the B samples."""
    cols_s = [_unit(list(c)) for c in zip(*_rows(s))]
    cols_t = [_unit(list(c)) for c in zip(*_rows(t))]
    return _mmd_poly(cols_s, cols_t)


def naive_nst_maps(s, t):
    ls, lt = s.detach().double().tolist(), t.detach().double().tolist()
    vals = [_mmd_poly([_unit(c) for c in fs], [_unit(c) for c in ft]) for fs, ft in zip(ls, lt)]
    return sum(vals) / len(vals)


def naive_cc(s, t, gamma=0.4, order=2):
    def corr(f):
        rows = [_unit(r) for r in _rows(f)]
        return [[sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * _dot(a, b) ** p
                     for p in range(order + 1)) for b in rows] for a in rows]
    cs, ct = corr(s), corr(t)
    return sum((a - b) ** 2 for r1, r2 in zip(cs, ct) for a, b in zip(r1, r2)) / len(cs) ** 2


def naive_pkt(s, t, eps=1e-7):
    def cond(f):
        rows = [_unit(r) for r in _rows(f)]
        c = [[(_dot(a, b) + 1) / 2 for b in rows] for a in rows]
        return [[v / sum(r) for v in r] for r in c]
    ps, pt = cond(s), cond(t)
    b = len(ps)
    return sum(pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(b) for j in range(b)) / b ** 2


def naive_rkd(s, t, w_dist=25.0, w_angle=50.0):
    def dist(f):
        rows = _rows(f)
        b = len(rows)
        d = [[math.sqrt(sum((x - y) ** 2 for x, y in zip(rows[i], rows[j]))) if i != j else 0.0
              for j in range(b)] for i in range(b)]
        mean = sum(map(sum, d)) / (b * b - b)
        return [[v / mean for v in r] for r in d]

    def ang(f):
        rows = _rows(f)
        b = len(rows)
        e = [[_unit([y - x for x, y in zip(rows[a], rows[c])]) for c in range(b)] for a in range(b)]
        return [[[_dot(e[a][i], e[a][j]) for j in range(b)] for i in range(b)] for a in range(b)]
    ds, dt = dist(s), dist(t)
    as_, at = ang(s), ang(t)
    b = len(ds)
    ld = sum(_smooth_l1(ds[i][j] - dt[i][j]) for i in range(b) for j in range(b)) / b ** 2
    la = sum(_smooth_l1(as_[a][i][j] - at[a][i][j]) for a in range(b) for i in range(b) for j in range(b)) / b ** 3
    return w_dist * ld + w_angle * la


def naive_ab(s, t, m=1.0):
    total, n = 0.0, 0
    for rs, rt in zip(_rows(s), _rows(t)):
        for a, b in zip(rs, rt):
            if a > -m and b <= 0:
                total += (a + m) ** 2
            if a <= m and b > 0:
                total += (a - m) ** 2
            n += 1
    return total / n


NAIVE = {
    "soft_target": naive_soft_target, "similarity_preserving": naive_sp, "nst": naive_nst,
    "attention_transfer": naive_at, "correlation_congruence": naive_cc, "pkt": naive_pkt, "rkd": naive_rkd,
    "fitnets": naive_mse, "activation_boundaries": naive_ab, "logits": naive_mse,
}
# losses that compare B x B relations only, so student and teacher widths may differ
RELATIONAL = {"similarity_preserving", "nst", "correlation_congruence", "pkt", "rkd"}
NAMES = sorted(DISTILLATION_LOSSES)


def test_every_registered_loss_has_a_naive_reference():
    assert set(NAIVE) == set(DISTILLATION_LOSSES)


# ---------------------------------------------------------------- distillation family
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("b,d", [(2, 3), (5, 4), (4, 7)])
def test_matches_naive_loop(name, b, d):
    torch.manual_seed(b * 10 + d)
    s, t = torch.randn(b, d, dtype=torch.float64), torch.randn(b, d, dtype=torch.float64)
    got = float(build_distillation_loss(name)(s, t))
    assert got == pytest.approx(NAIVE[name](s, t), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("name", sorted(RELATIONAL))
def test_relational_losses_take_different_widths(name):
    torch.manual_seed(1)
    s, t = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    got = float(build_distillation_loss(name)(s, t))
    assert got == pytest.approx(NAIVE[name](s, t), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("name", sorted(set(NAMES) - RELATIONAL))
def test_elementwise_losses_need_a_regressor_for_different_widths(name):
    s, t = torch.randn(4, 6, requires_grad=True), torch.randn(4, 5)
    with pytest.raises(ValueError):
        build_distillation_loss(name)(s, t)
    reg = nn.Linear(6, 5)
    loss = build_distillation_loss(name, regressor=reg)
    loss(s, t).backward()
    assert reg.weight.grad is not None and s.grad is not None
    assert any(p is reg.weight for p in loss.parameters())


@pytest.mark.parametrize("name", sorted(set(NAMES) - {"activation_boundaries"}))
def test_zero_when_student_equals_teacher(name):
    torch.manual_seed(2)
    t = torch.randn(6, 5)
    assert float(build_distillation_loss(name)(t.clone(), t)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["similarity_preserving", "nst", "attention_transfer",
                                  "correlation_congruence", "pkt", "rkd"])
def test_scale_invariant(name):
    torch.manual_seed(3)
    s, t = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    loss = build_distillation_loss(name)
    assert float(loss(3.7 * s, t)) == pytest.approx(float(loss(s, 0.2 * t)), rel=1e-6, abs=1e-9)
    assert float(loss(3.7 * s, t)) == pytest.approx(float(loss(s, t)), rel=1e-6, abs=1e-9)


def test_activation_boundaries_minimum_is_the_teacher_sign_pattern_beyond_the_margin():
    torch.manual_seed(4)
    t = torch.randn(6, 5)
    loss = ActivationBoundariesLoss(margin=1.0)
    assert float(loss(2.0 * torch.where(t > 0, torch.ones_like(t), -torch.ones_like(t)), t)) == 0.0
    assert float(loss(t.clone(), t)) > 0.0                      # not zero when equal: |t| < m pays
    assert float(loss(-t, t)) > float(loss(t, t))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_student_never_teacher(name):
    torch.manual_seed(5)
    s = torch.randn(4, 6, requires_grad=True)
    t = torch.randn(4, 6, requires_grad=True)
    build_distillation_loss(name)(s, t).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def _degenerate_batches():
    torch.manual_seed(6)
    row = torch.randn(1, 5)
    return {
        "b1": row.clone(),
        "b2": torch.randn(2, 5),
        "identical_rows": row.repeat(4, 1),
        "zeros": torch.zeros(3, 5),
    }


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("case", ["b1", "b2", "identical_rows", "zeros"])
def test_finite_on_degenerate_batches(name, case):
    base = _degenerate_batches()[case]
    for s0, t0 in [(base, base), (base, torch.randn_like(base)), (torch.randn_like(base), base)]:
        s = s0.clone().requires_grad_(True)
        value = build_distillation_loss(name)(s, t0)
        value.backward()
        assert torch.isfinite(value), (name, case)
        assert torch.isfinite(s.grad).all(), (name, case)


def test_attention_transfer_feature_maps_and_power():
    torch.manual_seed(7)
    s, t = torch.randn(3, 4, 6, dtype=torch.float64), torch.randn(3, 2, 6, dtype=torch.float64)   # C differs
    assert float(AttentionTransferLoss(p=2)(s, t)) == pytest.approx(naive_at_maps(s, t), rel=1e-6)
    e_s, e_t = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    assert float(AttentionTransferLoss(p=5)(e_s, e_t)) == pytest.approx(naive_at(e_s, e_t, p=5), rel=1e-6)
    assert float(AttentionTransferLoss(p=3)(-e_s, e_s)) == pytest.approx(0.0, abs=1e-12)  # |f|^p, not f^p


def test_nst_feature_maps_per_sample():
    torch.manual_seed(8)
    s, t = torch.randn(3, 4, 6, dtype=torch.float64), torch.randn(3, 5, 6, dtype=torch.float64)
    assert float(NSTLoss()(s, t)) == pytest.approx(naive_nst_maps(s, t), rel=1e-6)


def test_fitnets_identity_regressor_in_shared_space():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    assert float(FitNetsLoss()(s, t)) == pytest.approx(float(FitNetsLoss(nn.Identity())(s, t)))


# ---------------------------------------------------------------- InfoNCE
def naive_info_nce(s, t, tau):
    us, ut = [_unit(r) for r in _rows(s)], [_unit(r) for r in _rows(t)]
    b = len(us)
    sim = [[_dot(us[i], ut[k]) / tau for k in range(b)] for i in range(b)]
    rows = -sum(sim[i][i] - math.log(sum(math.exp(sim[i][k]) for k in range(b))) for i in range(b)) / b
    cols = -sum(sim[k][k] - math.log(sum(math.exp(sim[i][k]) for i in range(b))) for k in range(b)) / b
    return rows + cols


@pytest.mark.parametrize("b,d,tau", [(2, 3, 0.1), (5, 4, 0.5), (6, 8, 0.05)])
def test_info_nce_matches_naive_loop(b, d, tau):
    torch.manual_seed(b + d)
    s, t = torch.randn(b, d, dtype=torch.float64), torch.randn(b, d, dtype=torch.float64)
    loss = SymmetricInfoNCE(init_temperature=tau)
    assert loss(s, t).item() == pytest.approx(naive_info_nce(s, t, loss.temperature), rel=1e-5)


def test_info_nce_chance_level_and_gradients():
    s = torch.zeros(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    loss_fn = SymmetricInfoNCE()
    value = loss_fn(s, t)
    assert value.item() == pytest.approx(2 * math.log(4), rel=1e-6)     # sum of both directions
    value.backward()
    assert t.grad is None and s.grad is not None and torch.isfinite(s.grad).all()
    single = SymmetricInfoNCE()(torch.randn(1, 3), torch.randn(1, 3))
    assert single.item() == pytest.approx(0.0, abs=1e-7)


def test_info_nce_temperature_is_learned_and_clamped():
    torch.manual_seed(9)
    loss_fn = SymmetricInfoNCE(init_temperature=0.1, min_temperature=0.01, max_temperature=1.0)
    assert loss_fn.temperature == pytest.approx(0.1)
    s = torch.randn(8, 4, requires_grad=True)
    t = torch.randn(8, 4)
    loss_fn(s, t).backward()
    assert loss_fn.log_temperature.grad is not None
    for direction, bound in [(-1.0, 1.0), (1.0, 0.01)]:       # gradient ascent/descent on log tau
        opt = torch.optim.SGD(loss_fn.parameters(), lr=100.0)
        opt.zero_grad()
        (direction * loss_fn.log_temperature).backward()       # pushes log tau far out of range
        opt.step()
        assert loss_fn.temperature == pytest.approx(bound)     # the value used is clamped
        loss_fn(s, t)                                          # forward projects the parameter back
        assert math.exp(loss_fn.log_temperature.item()) == pytest.approx(bound, rel=1e-5)
    with pytest.raises(ConfigError):
        SymmetricInfoNCE(init_temperature=2.0)


# ---------------------------------------------------------------- triplet
def naive_triplet(a, p, n, margin, reduction):
    vals = [max(0.0, sum((x - y) ** 2 for x, y in zip(ra, rp)) - sum((x - y) ** 2 for x, y in zip(ra, rn)) + margin)
            for ra, rp, rn in zip(_rows(a), _rows(p), _rows(n))]
    return sum(vals) / len(vals) if reduction == "mean" else sum(vals)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("b,d,margin", [(2, 3, 1.0), (5, 4, 0.5), (6, 8, 2.0)])
def test_triplet_matches_naive_loop(b, d, margin, reduction):
    torch.manual_seed(b * d)
    a, p, n = (torch.randn(b, d, dtype=torch.float64) for _ in range(3))
    plain = TripletLoss(margin, negative="given", reduction=reduction)
    assert float(plain(a, p, n)) == pytest.approx(naive_triplet(a, p, n, margin, reduction), rel=1e-6, abs=1e-9)
    shifted = p[[(i + 1) % b for i in range(b)]]
    cyclic = TripletLoss(margin, negative="cyclic", reduction=reduction)
    assert float(cyclic(a, p)) == pytest.approx(naive_triplet(a, p, shifted, margin, reduction), rel=1e-6, abs=1e-9)


def test_triplet_cyclic_negative_is_next_sample():
    # p[i+1] is far from a[i], p[i-1] is close: only the (i + 1) mod B shift gives zero loss.
    a = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    p = a.clone()
    p_next = torch.tensor([[0.0, 10.0], [0.0, 0.0], [10.0, 0.0]])   # p_next[i] = a[(i + 2) mod 3]
    loss = TripletLoss(margin=1.0, negative="cyclic")
    assert float(loss(a, p)) == 0.0
    neg = p.roll(-1, dims=0)
    assert torch.equal(neg, torch.stack([p[(i + 1) % 3] for i in range(3)]))
    assert float(TripletLoss(margin=1.0, negative="given")(a, p, p_next)) == 0.0
    close = TripletLoss(margin=1.0, negative="given")(a, p, a + 0.1)
    assert float(close) > 0.0


def test_triplet_properties():
    a = torch.randn(4, 3, requires_grad=True)
    p = torch.randn(4, 3, requires_grad=True)
    TripletLoss(negative="cyclic")(a, p).backward()
    assert p.grad is None and a.grad is not None and torch.isfinite(a.grad).all()
    one = torch.randn(1, 3)
    assert float(TripletLoss(margin=0.7)(one, one)) == pytest.approx(0.7)   # B = 1: negative == positive
    assert torch.isfinite(TripletLoss(normalize=True)(torch.zeros(2, 3), torch.zeros(2, 3)))
    with pytest.raises(ValueError):
        TripletLoss(negative="given")(a, p)
    with pytest.raises(ConfigError):
        TripletLoss(negative="hard")


# ---------------------------------------------------------------- combined objective
@pytest.mark.parametrize("kd", [None] + NAMES)
def test_combined_loss_terms(kd):
    torch.manual_seed(10)
    s = torch.randn(4, 6, requires_grad=True)
    t = torch.randn(4, 6, requires_grad=True)
    combined = CombinedAlignmentLoss(kd=kd, lambda_kd=0.5)
    out = combined(s, t)
    assert set(out) == {"info_nce", "kd", "loss"}
    assert out["loss"].item() == pytest.approx(out["info_nce"].item() + 0.5 * out["kd"].item(), rel=1e-6)
    if kd is None:
        assert out["kd"].item() == 0.0
    else:
        assert out["kd"].item() == pytest.approx(build_distillation_loss(kd)(s, t).item(), rel=1e-6)
    out["loss"].backward()
    assert t.grad is None and s.grad is not None
    assert combined.info_nce.log_temperature.grad is not None


def test_combined_kd_inputs_and_errors():
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    feats = torch.randn(4, 9)
    combined = CombinedAlignmentLoss(kd="attention_transfer", kd_kwargs={"p": 5.0})
    out = combined(s, t, kd_student=feats[:, :6])
    assert out["kd"].item() == pytest.approx(AttentionTransferLoss(p=5.0)(feats[:, :6], t).item(), rel=1e-6)
    with pytest.raises(ConfigError):
        CombinedAlignmentLoss(kd="nope")
    with pytest.raises(ConfigError):
        CombinedAlignmentLoss(kd="pkt", lambda_kd=-1.0)
