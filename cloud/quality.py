"""Modality quality from unlabeled data (Cosmo's QoM): Hopkins statistic and cluster-count error.

For modality j with features ``X_j [N, d]``:

* features: by default the stage-1 encoder output ``z_j`` (flattened ``[S * F]``) of the unlabeled
  training windows; ``raw_features`` gives the flattened raw windows instead. Either way the features
  are centred and reduced by PCA to ``pca_dims`` (10) components before scoring, so
  both scores compare modalities of different widths on the same footing;
* ``H(X_j)``: Hopkins statistic, ``H = sum u_i / (sum u_i + sum w_i)`` with ``m = 10 %`` of at most
  ``max_points`` (2000) points: ``u_i`` the distance from a uniform random point in the data's
  bounding box to its nearest data point, ``w_i`` the distance from a sampled data point to its
  nearest other data point. About 0.5 for uniform data, towards 1 for clustered data. Averaged over
  ``repeats`` (5) draws;
* ``k_j``: the number of clusters, the k in ``2 .. k_max`` (``k_max = max(2K, 10)``) with the highest
  silhouette score of k-means (10 initializations) on the same points; **but k_j = 1 when that best
  silhouette is below 0.25** (Kaufman & Rousseeuw: "no substantial structure"). Without this rule a
  modality of pure noise, whose silhouette curve is flat, gets an arbitrary k that matches K by chance
  and doubles its q;
* ``c_j = |k_j - K|`` (K = number of classes); **rule for c_j = 0**: use 0.5 (an exact match counts as
  better than being one cluster off, and avoids dividing by zero);
* ``q_j = H(X_j) / c_j`` and ``beta_QoM = q / sum(q)``.

Everything is seeded and deterministic.
"""
import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from scipy.spatial import cKDTree
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from threadpoolctl import threadpool_limits

from shared.data.dataset import MultimodalDataset
from shared.errors import DataError
from shared.training.common import iterate_batches

log = logging.getLogger(__name__)
NO_STRUCTURE = 0.25  # best silhouette below this: one cluster (Kaufman & Rousseeuw)


def hopkins(x: np.ndarray, sample_fraction: float = 0.1, seed: int = 0, repeats: int = 5) -> float:
    """Hopkins statistic of points ``x [N, d]`` (see module docstring); in (0, 1)."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 10:
        raise DataError("hopkins: need [N >= 10, d] points, got shape {}".format(x.shape))
    n = x.shape[0]
    m = max(1, int(round(sample_fraction * n)))
    rng = np.random.RandomState(seed)
    tree = cKDTree(x)
    lo, hi = x.min(0), x.max(0)
    vals = []
    for _ in range(repeats):
        u_pts = rng.uniform(lo, hi, size=(m, x.shape[1]))
        u = tree.query(u_pts, k=1)[0]
        idx = rng.choice(n, m, replace=False)
        w = tree.query(x[idx], k=2)[0][:, 1]
        vals.append(u.sum() / max(u.sum() + w.sum(), 1e-12))
    return float(np.mean(vals))


def _single_thread() -> threadpool_limits:
    """Limit OpenMP and BLAS to one thread. torch (imported here) and scikit-learn each ship a libgomp,
    and numpy/scipy an OpenBLAS; on a small or busy machine their spinning pools made k-means and the
    PCA's SVD 20-100x slower (45 s instead of 0.5 s for 2 x 480 windows on 2 cores). One thread is
    fast at these sizes (<= ``max_points`` points, ``pca_dims`` dimensions)."""
    return threadpool_limits(limits=1)


def estimate_clusters(x: np.ndarray, k_max: int, seed: int = 0) -> Dict[int, float]:
    """Silhouette score of k-means for each k in ``2 .. k_max``.

    Runs single-threaded (see ``_single_thread``).
    """
    scores = OrderedDict()
    with _single_thread():
        for k in range(2, max(2, k_max) + 1):
            if k >= x.shape[0]:
                break
            labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
            scores[k] = float(silhouette_score(x, labels)) if len(set(labels)) > 1 else -1.0
    return scores


@dataclass
class ModalityQuality:
    modality: str
    hopkins: float
    n_clusters: int
    c: float
    q: float
    silhouette: Dict[int, float]


@dataclass
class QualityReport:
    modalities: List[ModalityQuality]
    beta_qom: List[float]
    num_classes: int
    features: str
    points: int

    @property
    def q(self) -> List[float]:
        return [m.q for m in self.modalities]

    def to_json(self) -> Dict[str, Any]:
        return {"features": self.features, "num_classes": self.num_classes, "points": self.points,
                "q": self.q, "beta_qom": self.beta_qom,
                "per_modality": [dict(asdict(m), silhouette={str(k): v for k, v in m.silhouette.items()})
                                 for m in self.modalities],
                "rule": "H: Hopkins on centred PCA-10 features; k: best k-means silhouette over 2..max(2K,10), "
                        "1 if that silhouette < 0.25; "
                        "c = |k - K|, 0.5 when k = K; q = H / c; beta_QoM = q / sum(q)"}

    def table(self) -> str:
        rows = ["modality   Hopkins  clusters  c     q      beta_QoM"]
        for m, b in zip(self.modalities, self.beta_qom):
            rows.append("{:<10} {:.3f}    {:<8d}  {:<5g} {:.3f}  {:.3f}".format(m.modality, m.hopkins, m.n_clusters,
                                                                             m.c, m.q, b))
        return "\n".join(rows)


def _prepare(x: np.ndarray, max_points: int, pca_dims: int, rng: np.random.RandomState) -> np.ndarray:
    x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    if x.shape[0] > max_points:
        x = x[np.sort(rng.choice(x.shape[0], max_points, replace=False))]
    x = x - x.mean(0)  # centred, not z-scored per dimension: that would inflate noise dimensions
    dims = min(pca_dims, x.shape[1], x.shape[0] - 1)
    if dims < x.shape[1]:
        x = PCA(n_components=dims, random_state=0).fit_transform(x)
    return x


def score_quality(features: "Dict[str, np.ndarray]", num_classes: int, seed: int = 0, max_points: int = 2000,
                  pca_dims: int = 10, k_max: Optional[int] = None, source: str = "encoder") -> QualityReport:
    """Score each modality's features ``[N, ...]`` (see module docstring)."""
    if num_classes < 1:
        raise DataError("score_quality: num_classes must be >= 1, got {}".format(num_classes))
    k_max = k_max or max(2 * num_classes, 10)
    out = []
    n_pts = 0
    for j, (m, f) in enumerate(features.items()):
        rng = np.random.RandomState(seed + 1000 * j)
        with _single_thread():
            x = _prepare(f, max_points, pca_dims, rng)
            n_pts = x.shape[0]
            h = hopkins(x, seed=seed)
            sil = estimate_clusters(x, k_max, seed)
        k = max(sil, key=lambda kk: sil[kk])
        if sil[k] < NO_STRUCTURE:
            k = 1
        c = float(abs(k - num_classes)) or 0.5
        out.append(ModalityQuality(m, h, int(k), c, h / c, sil))
        log.info("quality %s: H=%.3f k=%d c=%g q=%.3f", m, h, k, c, h / c)
    q = np.asarray([mq.q for mq in out])
    return QualityReport(out, (q / q.sum()).tolist(), num_classes, source, n_pts)


@torch.no_grad()
def encoder_features(encoders: Sequence[torch.nn.Module], ds: MultimodalDataset, batch_size: int = 512
                     ) -> "OrderedDict[str, np.ndarray]":
    """Flattened encoder outputs ``z_j [N, S * F_j]`` per modality (encoders in eval mode)."""
    feats = OrderedDict()
    for enc, (m, a) in zip(encoders, ds.x.items()):
        enc.eval()
        parts = [enc(torch.from_numpy(a[idx])).flatten(1).numpy() for idx in iterate_batches(len(a), batch_size, False)]
        feats[m] = np.concatenate(parts)
    return feats


def raw_features(ds: MultimodalDataset) -> "OrderedDict[str, np.ndarray]":
    """Flattened raw windows ``[N, T_j * C_j]`` per modality."""
    return OrderedDict((m, a.reshape(a.shape[0], -1)) for m, a in ds.x.items())
