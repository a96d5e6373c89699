import numpy as np
import pytest

from shared.errors import DataError
from shared.retrieval import class_map, ranks_of_positives, retrieval_metrics, zero_shot


def naive_ranks(q, c):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    out = []
    for i in range(len(q)):
        sims = [float(q[i] @ c[j]) for j in range(len(c))]
        out.append(1 + sum(1 for j, s in enumerate(sims) if j != i and s >= sims[i]))
    return np.array(out)


@pytest.mark.parametrize("n,d", [(5, 3), (20, 8), (64, 16)])
def test_ranks_match_naive(n, d):
    rng = np.random.RandomState(n)
    q, c = rng.randn(n, d), rng.randn(n, d)
    assert (ranks_of_positives(q, c) == naive_ranks(q, c)).all()


def test_perfect_and_reversed_alignment():
    x = np.random.RandomState(0).randn(30, 8)
    m = retrieval_metrics(x, x * 3.0, ks=(1, 10))
    assert m["R@1"] == 1.0 and m["MRR"] == 1.0 and m["pool"] == 30
    m2 = retrieval_metrics(x, np.roll(x, 1, axis=0), ks=(1,))
    assert m2["R@1"] == 0.0
    with pytest.raises(DataError, match="paired"):
        retrieval_metrics(x, x[:5])


def test_class_map_and_zero_shot():
    rng = np.random.RandomState(1)
    centers = rng.randn(3, 16) * 5
    labels = np.repeat(np.arange(3), 10)
    emb = centers[labels] + rng.randn(30, 16) * 0.1
    assert class_map(emb, emb, labels, labels) == pytest.approx(1.0)
    zs = zero_shot(emb, centers, labels, ["a", "b", "c"])
    assert zs["accuracy"] == 1.0 and zs["macro_f1"] == 1.0
    shuffled = zero_shot(emb, centers[[1, 2, 0]], labels, ["a", "b", "c"])
    assert shuffled["accuracy"] == 0.0
