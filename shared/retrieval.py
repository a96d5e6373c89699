"""Retrieval and zero-shot metrics for aligned embeddings (IMU <-> text), pure numpy.

Conventions (IMU2CLIP): embeddings are L2-normalized, similarity is cosine, query ``i``'s one positive
is candidate ``i`` of the other side; ranks are 1-based. Always report the pool size with the figures:
they depend on it.
"""
from typing import Dict, List, Sequence

import numpy as np

from .errors import DataError


def l2n(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def ranks_of_positives(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """1-based rank of candidate ``i`` among all candidates for query ``i`` (ties count against it)."""
    q, c = l2n(queries), l2n(candidates)
    if q.shape != c.shape:
        raise DataError("retrieval needs paired [n, d] queries and candidates, got {} and {}".format(q.shape, c.shape))
    sim = q @ c.T
    pos = np.diag(sim)[:, None]
    return 1 + (sim > pos).sum(1) + ((sim == pos).sum(1) - 1)


def retrieval_metrics(queries: np.ndarray, candidates: np.ndarray, ks: Sequence[int] = (1, 10, 50)
                      ) -> Dict[str, float]:
    """``R@k`` (fraction of queries whose positive ranks within k), ``MRR`` and ``pool``."""
    r = ranks_of_positives(queries, candidates)
    out = {"R@{}".format(k): float((r <= k).mean()) for k in ks}
    out["MRR"] = float((1.0 / r).mean())
    out["pool"] = int(len(r))
    return out


def class_map(queries: np.ndarray, candidates: np.ndarray, query_labels: np.ndarray,
              candidate_labels: np.ndarray) -> float:
    """Mean average precision when many candidates share a query's class (e.g. many windows, one text)."""
    q, c = l2n(queries), l2n(candidates)
    sim = q @ c.T
    aps = []
    for i in range(len(q)):
        rel = (candidate_labels == query_labels[i])
        if not rel.any():
            continue
        order = np.argsort(-sim[i], kind="stable")
        hits = rel[order]
        prec = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float((prec * hits).sum() / hits.sum()))
    if not aps:
        raise DataError("class_map: no query has a relevant candidate")
    return float(np.mean(aps))


def zero_shot(embeddings: np.ndarray, class_text_embeddings: np.ndarray, labels: np.ndarray,
              class_names: List[str]) -> Dict[str, object]:
    """Classify each embedding by its most similar class text; accuracy, macro-F1 and predictions.

    ``class_text_embeddings [K, d]`` may average several prompts per class before being passed in.
    """
    from .metrics import accuracy_f1

    pred = (l2n(embeddings) @ l2n(class_text_embeddings).T).argmax(1)
    m = accuracy_f1(np.asarray(labels), pred, len(class_names))
    m["pred"] = pred
    return m
