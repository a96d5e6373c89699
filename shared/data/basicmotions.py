"""BasicMotions (UEA multivariate time-series archive): smartwatch accelerometer + gyroscope.

Four students each performed four activities (standing, running, walking, badminton) five times
while wearing a smartwatch; each series is 10 s at 10 Hz (100 steps) with 6 dimensions: accelerometer
x, y, z then gyroscope x, y, z. 40 training + 40 test series.

The data ships inside ``sktime`` (and ``aeon``) as ``.ts`` files. They are located with
``importlib.util.find_spec`` (the package is never imported) and read by the small ``.ts`` parser in
this module, so neither library is needed at run time.

The archive carries no subject ids, so every series is its own "subject" (``subjects = series
index``, 0..79, the 40 training series first); the original TRAIN/TEST membership is kept in
``meta["original_split"]`` (one ``"train"`` / ``"test"`` per window).
"""
import importlib.util
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..errors import DataError
from .dataset import ModalitySpec, MultimodalDataset

RATE_HZ = 10.0
SERIES_LENGTH = 100
CLASSES = ["standing", "running", "walking", "badminton"]
ACC = ModalitySpec("acc", RATE_HZ, ("acc_x", "acc_y", "acc_z"), units="")
GYRO = ModalitySpec("gyro", RATE_HZ, ("gyro_x", "gyro_y", "gyro_z"), units="")
TRAIN_FILE = "BasicMotions_TRAIN.ts"
TEST_FILE = "BasicMotions_TEST.ts"
# Where the packages keep the files, relative to the package folder.
_PACKAGE_DIRS = (
    ("sktime", os.path.join("datasets", "data", "BasicMotions")),
    ("aeon", os.path.join("datasets", "data", "BasicMotions")),
    ("aeon", os.path.join("datasets", "data", "basic_motions")),
)


# --------------------------------------------------------------------------------------------------
# .ts format
@dataclass
class TsData:
    """What ``read_ts`` read: ``x [N, D, L]`` float64, the label of each series as written, the header
    (keys lower-cased) and the 1-based line number of each series in the file."""

    x: np.ndarray
    labels: List[str]
    header: Dict[str, str]
    lines: List[int]


def read_ts(path: str) -> TsData:
    """Parse an equal-length, timestamp-free ``.ts`` file (sktime / UEA format).

    The file is a header of ``@key value`` lines (``#`` lines are comments) ended by ``@data``, then
    one series per line: dimensions separated by ``:``, values by ``,``, class label last.

    Returns:
        a ``TsData``.
    Raises:
        DataError naming the file and line for a missing file, a malformed header or data line, a
        dimension count other than ``@dimensions``, unequal lengths, missing values (``?``) or a label
        not declared in ``@classLabel``.
    """
    if not os.path.isfile(path):
        raise DataError("{}: file not found".format(path))
    header: Dict[str, str] = OrderedDict()
    rows: List[np.ndarray] = []
    labels: List[str] = []
    line_numbers: List[int] = []
    in_data = False
    n_dims: Optional[int] = None
    length: Optional[int] = None
    classes: Optional[List[str]] = None
    try:
        f = open(path, "r", encoding="utf-8")
    except OSError as e:
        raise DataError("{}: cannot open: {}".format(path, e)) from e
    with f:
        try:
            lines = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError("{}: cannot read as text: {}".format(path, e)) from e
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = "{}, line {}".format(path, lineno)
        if not in_data:
            if not line.startswith("@"):
                raise DataError("{}: expected a header line starting with '@' before @data, got {!r}"
                                .format(where, line[:40]))
            parts = line[1:].split(None, 1)
            key = parts[0].lower()
            value = parts[1].strip() if len(parts) > 1 else ""
            if key == "data":
                in_data = True
                if header.get("timestamps", "false").lower() == "true":
                    raise DataError("{}: @timeStamps true is not supported".format(where))
                if "dimensions" in header:
                    try:
                        n_dims = int(header["dimensions"])
                    except ValueError:
                        raise DataError("{}: @dimensions {!r} is not an integer".format(
                            path, header["dimensions"])) from None
                elif header.get("univariate", "").lower() == "true":
                    n_dims = 1
                cl = header.get("classlabel", "").split()
                if not cl or cl[0].lower() != "true" or len(cl) < 2:
                    raise DataError("{}: header needs '@classLabel true <labels...>', got {!r}".format(
                        path, header.get("classlabel", "")))
                classes = cl[1:]
                continue
            header[key] = value
            continue
        # data line
        dims = line.split(":")
        if len(dims) < 2:
            raise DataError("{}: expected dimensions separated by ':' and a class label last".format(where))
        label = dims[-1].strip()
        dims = dims[:-1]
        if n_dims is not None and len(dims) != n_dims:
            raise DataError("{}: {} dimensions, header says @dimensions {}".format(where, len(dims), n_dims))
        if n_dims is None:
            n_dims = len(dims)
        if classes is not None and label not in classes:
            raise DataError("{}: unknown class label {!r}; @classLabel declares {}".format(where, label, classes))
        series = []
        for d_i, d in enumerate(dims):
            vals = d.split(",")
            if "?" in (v.strip() for v in vals):
                raise DataError("{}: dimension {} has missing values ('?'), not supported".format(where, d_i))
            try:
                arr = np.array([float(v) for v in vals], np.float64)
            except ValueError as e:
                raise DataError("{}: dimension {}: non-numeric value: {}".format(where, d_i, e)) from e
            if not np.isfinite(arr).all():
                raise DataError("{}: dimension {} has NaN/Inf values".format(where, d_i))
            if length is None:
                length = arr.shape[0]
            if arr.shape[0] != length:
                raise DataError("{}: dimension {} has {} values, expected {} (unequal lengths are not supported)"
                                .format(where, d_i, arr.shape[0], length))
            series.append(arr)
        rows.append(np.stack(series))
        labels.append(label)
        line_numbers.append(lineno)
    if not in_data:
        raise DataError("{}: no @data line".format(path))
    if not rows:
        raise DataError("{}: no series after @data".format(path))
    return TsData(x=np.stack(rows), labels=labels, header=dict(header), lines=line_numbers)


# --------------------------------------------------------------------------------------------------
def find_files(path: Optional[str] = None) -> Tuple[str, str]:
    """The (TRAIN, TEST) ``.ts`` paths.

    ``path`` may be a folder holding both files or one of the two files (the other must sit beside
    it); by default the copy shipped with ``sktime`` (or else ``aeon``) is used.
    """
    if path is not None:
        path = str(path)
        if os.path.isdir(path):
            folder = path
        elif os.path.basename(path) in (TRAIN_FILE, TEST_FILE):
            folder = os.path.dirname(path) or "."
        else:
            raise DataError("{}: not a folder holding {} and {}".format(path, TRAIN_FILE, TEST_FILE))
        train, test = os.path.join(folder, TRAIN_FILE), os.path.join(folder, TEST_FILE)
        for p in (train, test):
            if not os.path.isfile(p):
                raise DataError("{}: file not found".format(p))
        return train, test
    tried = []
    for pkg, rel in _PACKAGE_DIRS:
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        for loc in spec.submodule_search_locations:
            folder = os.path.join(loc, rel)
            train, test = os.path.join(folder, TRAIN_FILE), os.path.join(folder, TEST_FILE)
            tried.append(folder)
            if os.path.isfile(train) and os.path.isfile(test):
                return train, test
    raise DataError("BasicMotions: {} / {} not found (looked in {}); `pip install sktime` or pass the "
                    "folder holding them".format(TRAIN_FILE, TEST_FILE, tried or "no sktime/aeon install"))


def load_basicmotions(path: Optional[str] = None) -> MultimodalDataset:
    """BasicMotions as 80 windows of 100 steps at 10 Hz: modalities ``acc`` and ``gyro`` ``[80, 100, 3]``.

    Args:
        path: a folder holding ``BasicMotions_TRAIN.ts`` and ``BasicMotions_TEST.ts`` (or one of those
            files); default: the copy shipped with ``sktime`` or ``aeon``.
    Returns:
        labels index ``CLASSES`` (standing, running, walking, badminton); ``subjects`` is the series
        index (no subject ids in the archive); ``meta["original_split"]`` is ``"train"`` or ``"test"``
        per window.
    """
    train_path, test_path = find_files(path)
    xs: List[np.ndarray] = []
    ys: List[int] = []
    split: List[str] = []
    for part, p in (("train", train_path), ("test", test_path)):
        ts = read_ts(p)
        x = ts.x
        if x.shape[1] != 6:
            raise DataError("{}: expected 6 dimensions (acc xyz, gyro xyz), got {}".format(p, x.shape[1]))
        if x.shape[2] != SERIES_LENGTH:
            raise DataError("{}: expected series of {} steps, got {}".format(p, SERIES_LENGTH, x.shape[2]))
        for lab, lineno in zip(ts.labels, ts.lines):
            name = lab.lower()
            if name not in CLASSES:
                raise DataError("{}, line {}: unknown class {!r}; expected one of {}".format(
                    p, lineno, lab, CLASSES))
            ys.append(CLASSES.index(name))
        xs.append(x)
        split.extend([part] * x.shape[0])
    x = np.concatenate(xs).transpose(0, 2, 1).astype(np.float32)  # [N, 100, 6]
    n = x.shape[0]
    return MultimodalDataset(
        x=OrderedDict([("acc", np.ascontiguousarray(x[:, :, 0:3])),
                       ("gyro", np.ascontiguousarray(x[:, :, 3:6]))]),
        specs=OrderedDict([("acc", ACC), ("gyro", GYRO)]),
        labels=np.asarray(ys, np.int64), subjects=np.arange(n, dtype=np.int64),
        class_names=list(CLASSES), name="basicmotions",
        meta={"original_split": split, "subjects": "series index (no subject ids in BasicMotions)",
              "source": [train_path, test_path]})
