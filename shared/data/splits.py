"""Subject-wise splits, per-channel normalization fitted on training subjects, label sampling."""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from dataclasses import dataclass

from ..errors import DataError
from .dataset import MultimodalDataset


@dataclass
class Split:
    """Train / validation / test windows of disjoint subject sets."""

    train: MultimodalDataset
    val: MultimodalDataset
    test: MultimodalDataset
    train_subjects: List[int]
    val_subjects: List[int]
    test_subjects: List[int]


def subject_split(ds: MultimodalDataset, val_fraction: float = 0.1, test_fraction: float = 0.3,
                  seed: int = 0, test_subjects: Optional[Sequence[int]] = None,
                  val_subjects: Optional[Sequence[int]] = None) -> Split:
    """Split by subject so that no subject appears in two splits.

    Subjects are shuffled with ``seed`` and the first ``round(test_fraction * S)`` go to test, the next
    ``round(val_fraction * S)`` (at least one) to validation, the rest to train, unless the subject lists
    are given explicitly.
    """
    subjects = sorted(set(ds.subjects.tolist()))
    if len(subjects) < 3:
        raise DataError("subject_split: need at least 3 subjects, dataset has {}".format(subjects))
    rng = np.random.RandomState(seed)
    order = list(rng.permutation(subjects))
    if test_subjects is None:
        n_test = max(1, int(round(test_fraction * len(subjects))))
        given_val = set() if val_subjects is None else set(int(s) for s in val_subjects)
        test_subjects = [s for s in order if int(s) not in given_val][:n_test]
    if val_subjects is None:
        rest = [s for s in order if s not in set(test_subjects)]
        n_val = max(1, int(round(val_fraction * len(subjects))))
        val_subjects = rest[:n_val]
    test_set, val_set = set(int(s) for s in test_subjects), set(int(s) for s in val_subjects)
    if test_set & val_set:
        raise DataError("subject_split: subjects {} are in both test and val".format(sorted(test_set & val_set)))
    unknown = (test_set | val_set) - set(subjects)
    if unknown:
        raise DataError("subject_split: unknown subjects {}; dataset has {}".format(sorted(unknown), subjects))
    train_set = set(subjects) - test_set - val_set
    if not train_set:
        raise DataError("subject_split: no training subjects left")
    def pick(s: set) -> MultimodalDataset:
        return ds.subset(np.isin(ds.subjects, sorted(s)))
    return Split(train=pick(train_set), val=pick(val_set), test=pick(test_set),
                 train_subjects=sorted(train_set), val_subjects=sorted(val_set),
                 test_subjects=sorted(test_set))


@dataclass
class Normalizer:
    """Per-modality, per-channel z-score: ``(x - mean) / std``; statistics ``[C_j]`` per modality."""

    mean: "OrderedDict[str, np.ndarray]"
    std: "OrderedDict[str, np.ndarray]"

    @classmethod
    def fit(cls, ds: MultimodalDataset, eps: float = 1e-6) -> "Normalizer":
        """Fit on ``ds`` (pass training subjects only)."""
        mean, std = OrderedDict(), OrderedDict()
        for m, a in ds.x.items():
            flat = a.reshape(-1, a.shape[-1]).astype(np.float64)
            mean[m] = flat.mean(axis=0).astype(np.float32)
            std[m] = np.maximum(flat.std(axis=0), eps).astype(np.float32)
        return cls(mean=mean, std=std)

    def apply(self, ds: MultimodalDataset) -> MultimodalDataset:
        x = OrderedDict()
        for m, a in ds.x.items():
            if m not in self.mean:
                raise DataError("normalizer has no statistics for modality {!r} (has {})".format(
                    m, list(self.mean)))
            if a.shape[-1] != self.mean[m].shape[0]:
                raise DataError("normalizer: modality {!r} has {} channels, statistics have {}".format(
                    m, a.shape[-1], self.mean[m].shape[0]))
            x[m] = ((a - self.mean[m]) / self.std[m]).astype(np.float32)
        return MultimodalDataset(x=x, specs=ds.specs, labels=ds.labels, subjects=ds.subjects,
                                 class_names=ds.class_names, name=ds.name, meta=dict(ds.meta))

    def to_json(self) -> Dict[str, Dict[str, List[float]]]:
        return OrderedDict((m, {"mean": self.mean[m].tolist(), "std": self.std[m].tolist()})
                           for m in self.mean)

    @classmethod
    def from_json(cls, d: Dict[str, Dict[str, List[float]]]) -> "Normalizer":
        try:
            return cls(mean=OrderedDict((m, np.asarray(v["mean"], np.float32)) for m, v in d.items()),
                       std=OrderedDict((m, np.asarray(v["std"], np.float32)) for m, v in d.items()))
        except (KeyError, TypeError) as e:
            raise DataError("normalization statistics: missing or invalid field {}".format(e)) from e


def sample_labels(labels: np.ndarray, num_classes: int, rate: Optional[float] = None,
                  per_class: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """Pick a class-balanced labeled subset; returns sorted indices into ``labels``.

    Exactly one of ``rate`` (fraction of all labeled windows, e.g. 0.01) or ``per_class`` must be
    given. With ``rate``, the budget ``max(K, round(rate * N))`` is spread evenly over the K classes
    (the remainder going to randomly chosen classes); a class with fewer windows than its share gives
    all it has. Every class must be present: a class absent from ``labels`` is an error.
    """
    if (rate is None) == (per_class is None):
        raise DataError("sample_labels: give exactly one of rate or per_class")
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    pools = [np.flatnonzero(labels == c) for c in range(num_classes)]
    absent = [c for c, p in enumerate(pools) if len(p) == 0]
    if absent:
        raise DataError("sample_labels: classes {} have no labeled windows".format(absent))
    if rate is not None:
        if not 0.0 < rate <= 1.0:
            raise DataError("sample_labels: rate must be in (0, 1], got {}".format(rate))
        n_labeled = int((labels >= 0).sum())
        if rate >= 1.0:
            return np.flatnonzero(labels >= 0)
        budget = max(num_classes, int(round(rate * n_labeled)))
        quota = np.full(num_classes, budget // num_classes)
        quota[rng.choice(num_classes, budget % num_classes, replace=False)] += 1
    else:
        if per_class is None or per_class < 1:
            raise DataError("sample_labels: per_class must be >= 1, got {}".format(per_class))
        quota = np.full(num_classes, per_class)
    chosen = [rng.choice(p, min(len(p), int(q)), replace=False) for p, q in zip(pools, quota)]
    return np.sort(np.concatenate(chosen))


def labeled_unlabeled(train: MultimodalDataset, labeled_idx: np.ndarray
                      ) -> Tuple[MultimodalDataset, MultimodalDataset]:
    """The labeled windows, and all other training windows with their labels removed (-1).

    The unlabeled part never contains a labeled window, as in the Cosmo reference.
    """
    mask = np.zeros(len(train), bool)
    mask[labeled_idx] = True
    labeled = train.subset(np.flatnonzero(mask))
    unl = train.subset(np.flatnonzero(~mask))
    unlabeled = unl.with_labels(np.full(len(unl), -1, np.int64))
    return labeled, unlabeled
