"""The smartwatch shoulder-exercise set that ships inside ``seglearn`` (BSD-3):
``seglearn/data/watch_dataset.npy``.

Ten subjects wore a smartwatch while doing sets of seven shoulder rehabilitation exercises (Burns et al.,
"Shoulder physiotherapy exercise recognition", arXiv:1802.01489): 140 series (14 per subject, 20 per
exercise), accelerometer (g) and gyroscope (rad/s) at 50 Hz, 19-52 s each, one label per series. Classes:
PEN (pendulum), ABD (abduction), FEL (forward elevation), IR / ER (internal / external rotation), TRAP
(trapezius extension), ROW (upright row). The file is a pickled dict; it is read with the restricted
unpickler (``shared.data.pickles``), and the package is found without importing it (it would import
scikit-learn). Subjects keep their ids (1-10), so ``subject_split`` splits by person.
"""
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import numpy as np

from ..errors import DataError
from .dataset import ModalitySpec, MultimodalDataset
from .pickles import package_file, read_object_npy
from .windows import Recording, sliding_windows

RATE_HZ = 50.0
CLASSES = ["pendulum", "abduction", "forward_elevation", "internal_rotation", "external_rotation",
           "trapezius_extension", "upright_row"]
FILE_LABELS = ["PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW"]  # data["y_labels"], in class order
CHANNELS = ["ax", "ay", "az", "wx", "wy", "wz"]  # data["X_labels"]
ACC = ModalitySpec("acc", RATE_HZ, ("acc_x", "acc_y", "acc_z"), units="g")
GYRO = ModalitySpec("gyro", RATE_HZ, ("gyro_x", "gyro_y", "gyro_z"), units="rad/s")
PACKAGE, PACKAGE_FILE, PIP = "seglearn", "data/watch_dataset.npy", "seglearn==1.2.5"


def read_watch(path: Optional[str] = None) -> List[Recording]:
    """One ``Recording`` per series (its exercise as the recording's label); every field checked."""
    path = path or package_file(PACKAGE, PACKAGE_FILE, PIP, "seglearn_watch")
    d = read_object_npy(path)
    if not isinstance(d, dict):
        raise DataError("{}: expected a dict, got {}".format(path, type(d).__name__))
    missing = [k for k in ("X", "y", "subject", "X_labels", "y_labels") if k not in d]
    if missing:
        raise DataError("{}: missing keys {} (have {})".format(path, missing, sorted(d)))
    if [str(c) for c in d["X_labels"]] != CHANNELS:
        raise DataError("{}: channels {} differ from {}".format(path, list(d["X_labels"]), CHANNELS))
    if [str(c) for c in d["y_labels"]] != FILE_LABELS:
        raise DataError("{}: classes {} differ from {}".format(path, list(d["y_labels"]), FILE_LABELS))
    xs, ys, subs = list(d["X"]), np.asarray(d["y"]), np.asarray(d["subject"])
    if not (len(xs) == len(ys) == len(subs)):
        raise DataError("{}: {} series, {} labels, {} subject ids".format(path, len(xs), len(ys), len(subs)))
    recs = []
    for i, (x, y, s) in enumerate(zip(xs, ys, subs)):
        where = "{} (series {})".format(path, i)
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(CHANNELS):
            raise DataError("{}: expected [L, {}] samples, got {}".format(where, len(CHANNELS), x.shape))
        if not np.isfinite(x).all():
            raise DataError("{}: contains NaN/Inf".format(where))
        if not 0 <= int(y) < len(CLASSES):
            raise DataError("{}: label {} outside 0..{}".format(where, y, len(CLASSES) - 1))
        signals = OrderedDict([("acc", x[:, :3].astype(np.float32)), ("gyro", x[:, 3:].astype(np.float32))])
        recs.append(Recording(subject=int(s), signals=signals, specs=OrderedDict([("acc", ACC), ("gyro", GYRO)]),
                              label=int(y), source=where))
    return recs


def load_seglearn_watch(path: Optional[str] = None, window_s: float = 2.56, overlap: float = 0.5) -> MultimodalDataset:
    """The watch set as windows of ``window_s`` seconds (default 128 samples at 50 Hz, 50 % overlap)."""
    recs = read_watch(path)
    ds = sliding_windows(recs, list(CLASSES), window_s=window_s, overlap=overlap, name="seglearn_watch")
    meta: Dict[str, Any] = dict(ds.meta)
    meta.update(source="seglearn/data/watch_dataset.npy (seglearn 1.2.5, BSD-3)", series=len(recs),
                split="by subject (10 subjects)")
    ds.meta = meta
    return ds


__all__ = ["CLASSES", "load_seglearn_watch", "read_watch"]
