"""One place that turns a dataset into the splits every stage uses.

Subject-wise train / validation / test split (``split_seed``), normalization statistics fitted on the
training subjects only, a class-balanced labeled subset of the training windows (``seed``), and the
remaining training windows with their labels removed as the unlabeled pretraining set.
"""
from typing import Optional

import numpy as np
from dataclasses import dataclass

from .data.dataset import MultimodalDataset
from .data.splits import Normalizer, Split, labeled_unlabeled, sample_labels, subject_split


@dataclass
class Prepared:
    """Raw (un-normalized) splits plus the normalizer; ``norm(x)`` gives the normalized form."""

    split: Split
    labeled: MultimodalDataset
    unlabeled: MultimodalDataset
    normalizer: Normalizer
    labeled_index: np.ndarray

    def norm(self, ds: MultimodalDataset) -> MultimodalDataset:
        return self.normalizer.apply(ds)


def prepare(ds: MultimodalDataset, label_rate: Optional[float] = None, labels_per_class: Optional[int] = None,
            seed: int = 0, split_seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.3) -> Prepared:
    """Split ``ds`` by subject and sample the labeled windows (give ``label_rate`` or ``labels_per_class``)."""
    split = subject_split(ds, val_fraction=val_fraction, test_fraction=test_fraction, seed=split_seed)
    idx = sample_labels(split.train.labels, ds.num_classes, rate=label_rate, per_class=labels_per_class, seed=seed)
    labeled, unlabeled = labeled_unlabeled(split.train, idx)
    return Prepared(split=split, labeled=labeled, unlabeled=unlabeled, normalizer=Normalizer.fit(split.train),
                    labeled_index=idx)
