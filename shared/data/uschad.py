"""USC-HAD (USC Human Activity Dataset), one of the Cosmo paper's datasets.

14 subjects, a MotionNode sensor at the front right hip, accelerometer (g) and gyroscope (deg/s) at
100 Hz, 12 activities, 5 trials each. On-disk layout::

    root/SubjectK/aMtN.mat      K = 1..14 subject, M = 1..12 activity, N = 1..5 trial

Each ``.mat`` holds ``sensor_readings`` (``L x 6``: acc x, y, z, gyro x, y, z) plus descriptive fields
(``subject``, ``activity``, ``activity_number``, ``trial``, ...). The activity is taken from the file
name (``aM``), the subject from the folder name (``SubjectK``). The data set is not redistributable
and is not downloaded here; ``read_uschad`` reads a copy the user has.
"""
import os
import re
from collections import OrderedDict
from typing import List

import numpy as np

from ..errors import DataError
from .dataset import ModalitySpec, MultimodalDataset
from .windows import Recording, sliding_windows

RATE_HZ = 100.0
CLASSES = ["walking_forward", "walking_left", "walking_right", "walking_upstairs", "walking_downstairs",
           "running_forward", "jumping_up", "sitting", "standing", "sleeping", "elevator_up",
           "elevator_down"]
ACC = ModalitySpec("acc", RATE_HZ, ("acc_x", "acc_y", "acc_z"), units="g")
GYRO = ModalitySpec("gyro", RATE_HZ, ("gyro_x", "gyro_y", "gyro_z"), units="deg/s")
KEY = "sensor_readings"

_SUBJECT_RE = re.compile(r"^subject(\d+)$", re.IGNORECASE)
_FILE_RE = re.compile(r"^a(\d+)t(\d+)\.mat$", re.IGNORECASE)


def read_mat_array(path: str, key: str) -> np.ndarray:
    """``key`` of the MATLAB (v4-v7.2) file ``path`` as a float64 array.

    Raises ``DataError`` naming the file for a missing, unreadable or corrupt file, a missing key, a
    non-numeric value or NaN/Inf values.
    """
    if not os.path.isfile(path):
        raise DataError("{}: file not found".format(path))
    import scipy.io  # lazy: keeps `import shared.data` light

    try:
        mat = scipy.io.loadmat(path, variable_names=[key])
    except NotImplementedError as e:  # v7.3 = HDF5
        raise DataError("{}: MATLAB v7.3 (HDF5) files are not supported; re-save with -v7 ({})".format(
            path, e)) from e
    except Exception as e:  # noqa: BLE001 - scipy raises many types on corrupt input; all mean "corrupt"
        raise DataError("{}: corrupt or unreadable .mat file: {}: {}".format(path, type(e).__name__, e)) from e
    if key not in mat:
        raise DataError("{}: missing variable {!r} (found {})".format(
            path, key, sorted(k for k in mat if not k.startswith("__"))))
    try:
        a = np.asarray(mat[key], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError("{}: variable {!r} is not numeric: {}".format(path, key, e)) from e
    if not np.isfinite(a).all():
        raise DataError("{}: variable {!r} has {} NaN/Inf values".format(path, key, int((~np.isfinite(a)).sum())))
    return a


def read_uschad(root: str) -> List[Recording]:
    """One ``Recording`` per ``SubjectK/aMtN.mat`` file under ``root`` (sorted by subject, activity,
    trial), with modalities ``acc`` and ``gyro`` at 100 Hz and the recording-level label ``M - 1``."""
    root = str(root)
    if not os.path.isdir(root):
        raise DataError("{}: USC-HAD folder not found".format(root))
    found = []
    for d in os.listdir(root):
        m = _SUBJECT_RE.match(d)
        if m is None or not os.path.isdir(os.path.join(root, d)):
            continue
        subject = int(m.group(1))
        for fn in os.listdir(os.path.join(root, d)):
            fm = _FILE_RE.match(fn)
            if fm is None:
                continue
            found.append((subject, int(fm.group(1)), int(fm.group(2)), os.path.join(root, d, fn)))
    if not found:
        raise DataError("{}: no USC-HAD files (expected SubjectK/aMtN.mat)".format(root))
    recs = []
    for subject, act, _trial, path in sorted(found):
        if not 1 <= act <= len(CLASSES):
            raise DataError("{}: activity number {} out of range 1..{}".format(path, act, len(CLASSES)))
        a = read_mat_array(path, KEY)
        if a.ndim != 2 or a.shape[1] != 6 or a.shape[0] == 0:
            raise DataError("{}: {!r} must be [L, 6] (acc xyz, gyro xyz) with L > 0, got shape {}".format(
                path, KEY, a.shape))
        recs.append(Recording(
            subject=subject,
            signals=OrderedDict([("acc", a[:, 0:3].astype(np.float32)), ("gyro", a[:, 3:6].astype(np.float32))]),
            specs=OrderedDict([("acc", ACC), ("gyro", GYRO)]),
            labels=None, label=act - 1, source=path))
    return recs


def load_uschad(root: str, window_s: float = 2.0, overlap: float = 0.5) -> MultimodalDataset:
    """USC-HAD as windows of ``window_s`` seconds at 100 Hz (default 200 samples, 50 % overlap);
    modalities ``acc`` and ``gyro`` ``[N, T, 3]``, subjects 1..14, labels index ``CLASSES``.

    A window never spans two files, so every window carries its file's activity.
    """
    recs = read_uschad(root)
    ds = sliding_windows(recs, list(CLASSES), window_s=window_s, overlap=overlap, name="uschad")
    ds.meta["root"] = str(root)
    return ds
