"""Classification metrics (numpy only: the retrieval and training code, the benchmarks and the edge use them)."""
from typing import Any, Dict

import numpy as np


def accuracy_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> Dict[str, Any]:
    """Accuracy, macro-F1 (mean over classes present in y_true or y_pred) and the confusion matrix."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(np.float64)
    prec_den, rec_den = cm.sum(0), cm.sum(1)
    f1 = []
    for c in range(num_classes):
        if prec_den[c] + rec_den[c] == 0:
            continue
        p = tp[c] / prec_den[c] if prec_den[c] else 0.0
        r = tp[c] / rec_den[c] if rec_den[c] else 0.0
        f1.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
    return {"accuracy": float(tp.sum() / max(1, len(y_true))), "macro_f1": float(np.mean(f1)) if f1 else 0.0,
            "confusion": cm.tolist()}


__all__ = ["accuracy_f1"]
