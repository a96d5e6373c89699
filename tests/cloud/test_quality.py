"""Tests of cloud.quality: Hopkins statistic, cluster count, q = H / c and beta_QoM.

Reference values (seeds as in the tests, 2-core machine, cloud/quality.py as of this test's writing):

* uniform points in a box, 1000 points: d=2 H = 0.500 +- 0.010 (200 seeds: 0.474 .. 0.528),
  d=10 H = 0.500 +- 0.003 (0.490 .. 0.506);
* 4 Gaussian blobs, centres 10 apart: d=2, std 1: H = 0.92 .. 0.94; d=10, std 0.25: H = 0.906 .. 0.911.
  Hopkins uses plain (not d-th power) distances, so in 10-d the same blobs with std 1 only reach 0.74;
* make_synthetic(informativeness=(1, 0) or (0, 1)), raw windows: Hopkins ranks the informative modality
  first (0.77 vs 0.69 at seed 0), but the cluster count (best k-means silhouette) of the uninformative
  modality often lands on K by chance, and c = 0.5 then doubles its q.
"""
import numpy as np
import pytest

from cloud.quality import QualityReport, estimate_clusters, hopkins, raw_features, score_quality
from shared.data import make_synthetic
from shared.errors import DataError

# |H - 0.5| over 200 seeds never exceeded 0.028 (d=2) or 0.010 (d=10); about 4 sigma each.
UNIFORM_TOL = {2: 0.04, 10: 0.015}


def _uniform(n, d, seed):
    rng = np.random.RandomState(seed)
    return rng.uniform(-3.0, 5.0, (n, d))


def _blobs(k, d, n_per, std=1.0, spacing=10.0, seed=0):
    """k Gaussian blobs, centres ``spacing`` apart (k <= d: scaled unit vectors; d == 2: on a circle)."""
    rng = np.random.RandomState(seed)
    if k <= d:
        centres = spacing / np.sqrt(2.0) * np.eye(d)[:k]
    else:
        assert d == 2
        ang = 2 * np.pi * np.arange(k) / k
        radius = spacing / (2 * np.sin(np.pi / k))
        centres = radius * np.stack([np.cos(ang), np.sin(ang)], 1)
    x = np.concatenate([c + std * rng.randn(n_per, d) for c in centres])
    return x[rng.permutation(len(x))]


# ---------------------------------------------------------------------------------------------- hopkins

@pytest.mark.parametrize("d", [2, 10])
def test_hopkins_uniform_is_about_half(d):
    vals = [hopkins(_uniform(1000, d, seed=100 + s), seed=s) for s in range(5)]
    tol = UNIFORM_TOL[d]
    assert all(abs(h - 0.5) < tol for h in vals), "d={}: H={} (want 0.5 +- {})".format(d, vals, tol)
    assert abs(np.mean(vals) - 0.5) < tol / 2, vals


@pytest.mark.parametrize("d,std", [(2, 1.0), (10, 0.25)])
def test_hopkins_separated_blobs_is_near_one(d, std):
    vals = [hopkins(_blobs(4, d, 250, std=std, seed=s), seed=s) for s in range(3)]
    assert all(h > 0.85 for h in vals), "d={}: H={}".format(d, vals)
    assert all(h < 1.0 for h in vals)


def test_hopkins_blobs_beat_uniform_in_same_box():
    x = _blobs(3, 2, 300, seed=4)
    u = np.random.RandomState(4).uniform(x.min(0), x.max(0), x.shape)
    assert hopkins(x) > hopkins(u) + 0.3


def test_hopkins_is_deterministic_per_seed():
    x = _uniform(500, 3, seed=7)
    assert hopkins(x, seed=3) == hopkins(x, seed=3)
    assert hopkins(x.copy(), seed=3, repeats=2) == hopkins(x, seed=3, repeats=2)
    assert hopkins(x, seed=3) != hopkins(x, seed=4)


@pytest.mark.parametrize("shape", [(9, 2), (0, 3), (20,), (4, 5, 2)])
def test_hopkins_rejects_too_few_points_or_wrong_rank(shape):
    with pytest.raises(DataError, match="hopkins"):
        hopkins(np.zeros(shape))


# ------------------------------------------------------------------------------------ cluster count

@pytest.mark.parametrize("k,d", [(3, 2), (5, 2), (3, 10), (5, 10)])
def test_estimate_clusters_finds_number_of_blobs(k, d):
    sil = estimate_clusters(_blobs(k, d, 120, seed=k + d), k_max=10, seed=0)
    assert list(sil) == list(range(2, 11))
    assert max(sil, key=sil.get) == k, sil


def test_estimate_clusters_stops_below_number_of_points():
    sil = estimate_clusters(_blobs(2, 2, 3, seed=0), k_max=10)
    assert list(sil) == [2, 3, 4, 5]


# ---------------------------------------------------------------------------------- score_quality

def _report(feats, num_classes, **kw):
    rep = score_quality(feats, num_classes=num_classes, **kw)
    assert isinstance(rep, QualityReport)
    return rep


def test_score_quality_rule_and_normalisation():
    K = 3
    feats = {"exact": _blobs(K, 10, 100, std=0.5, seed=1),       # k = K   -> c = 0.5 (the c = 0 rule)
             "two_off": _blobs(K + 2, 10, 60, std=0.5, seed=2),  # k = K+2 -> c = 2
             "one_off": _blobs(K + 1, 10, 75, std=0.5, seed=3)}  # k = K+1 -> c = 1
    rep = _report(feats, K, source="test")
    by = {m.modality: m for m in rep.modalities}
    assert [m.modality for m in rep.modalities] == list(feats)
    assert (by["exact"].n_clusters, by["exact"].c) == (K, 0.5)
    assert (by["two_off"].n_clusters, by["two_off"].c) == (K + 2, 2.0)
    assert (by["one_off"].n_clusters, by["one_off"].c) == (K + 1, 1.0)
    for m in rep.modalities:
        assert m.q == pytest.approx(m.hopkins / m.c)
        assert 0.5 < m.hopkins < 1.0
    assert sum(rep.beta_qom) == pytest.approx(1.0)
    assert all(b > 0 for b in rep.beta_qom)
    q = np.array(rep.q)
    np.testing.assert_allclose(rep.beta_qom, q / q.sum())
    assert rep.beta_qom[0] == max(rep.beta_qom)
    assert (rep.features, rep.num_classes, rep.points) == ("test", K, 300)
    js = rep.to_json()
    assert js["beta_qom"] == rep.beta_qom and len(js["per_modality"]) == 3
    assert "exact" in rep.table()


def test_score_quality_is_deterministic_and_subsamples():
    feats = {"a": _blobs(4, 6, 400, seed=5), "b": _uniform(1600, 6, seed=5)}
    r1 = score_quality(feats, num_classes=4, seed=2, max_points=500)
    r2 = score_quality(feats, num_classes=4, seed=2, max_points=500)
    assert r1.to_json() == r2.to_json()
    assert r1.points == 500


def test_score_quality_rejects_bad_num_classes():
    with pytest.raises(DataError, match="num_classes"):
        score_quality({"a": _uniform(50, 2, 0)}, num_classes=0)


# ---------------------------------------------------------------------- synthetic: known answer

def _synthetic_report(info, seed=0):
    ds = make_synthetic(informativeness=info, seed=seed)  # 480 windows, 4 classes, a/b: [64, 3] each
    return score_quality(raw_features(ds), num_classes=ds.num_classes, seed=seed, source="raw")


def _describe(rep):
    return "; ".join("{}: H={:.3f} k={} c={:g} q={:.3f} beta={:.3f}".format(
        m.modality, m.hopkins, m.n_clusters, m.c, m.q, b) for m, b in zip(rep.modalities, rep.beta_qom))


@pytest.mark.parametrize("info", [(1.0, 0.0), (0.0, 1.0)], ids=["a_informative", "b_informative"])
def test_synthetic_hopkins_ranks_informative_modality_first(info):
    rep = _synthetic_report(info)
    good, bad = (0, 1) if info[0] > info[1] else (1, 0)
    assert rep.modalities[good].hopkins > rep.modalities[bad].hopkins, _describe(rep)


@pytest.mark.parametrize("info", [(1.0, 0.0), (0.0, 1.0)], ids=["a_informative", "b_informative"])
def test_synthetic_beta_qom_ranks_informative_modality_first(info):
    rep = _synthetic_report(info)
    good, bad = (0, 1) if info[0] > info[1] else (1, 0)
    assert rep.beta_qom[good] > rep.beta_qom[bad], _describe(rep)
