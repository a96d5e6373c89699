"""Narrated IMU windows: the project's windowed form plus one text per window (for IMU<->text alignment).

Two sources:

* ``narrate``: describe labeled windows (HAPT, BasicMotions, ...) in words from their activity, with
  varied phrasings (seeded) and, where the signal supports it, attributes computed from the window:
  **intensity** from the standard deviation of the acceleration magnitude (in the data's units, g for
  HAPT) and, for gait-like activities, **cadence** from the dominant frequency of that magnitude
  between 1 and 3.5 Hz (steps per minute = 60 x f) when the spectral peak is clear; the FFT of a
  2.56-s window resolves 0.39 Hz (23 steps per minute), so cadence is rounded to 5.
* ``read_ego4d``: Ego4D-style data, IMU arrays per video plus timestamped narrations, cut into windows
  centred on each narration (5 s at 200 Hz by default, as IMU2CLIP).
"""
import json
import os
import re
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

import numpy as np
from dataclasses import dataclass

from ..errors import DataError
from .dataset import ModalitySpec, MultimodalDataset, read_json

TEMPLATES = {
    "walking": ["a person walking", "someone walks at a steady pace", "the wearer is walking on level ground",
                "walking forward"],
    "walking_upstairs": ["a person walking up the stairs", "someone climbs a staircase", "going upstairs",
                         "the wearer walks up a flight of stairs"],
    "walking_downstairs": ["a person walking down the stairs", "someone descends a staircase", "going downstairs",
                           "the wearer walks down a flight of stairs"],
    "sitting": ["a person sitting", "someone sits still on a chair", "the wearer is seated", "sitting down and resting"],
    "standing": ["a person standing", "someone stands still", "the wearer is standing upright", "standing in place"],
    "lying": ["a person lying down", "someone lies on a bed", "the wearer is lying flat", "lying still"],
    "running": ["a person running", "someone jogs quickly", "the wearer is running", "running at a fast pace"],
    "badminton": ["a person playing badminton", "someone swings a badminton racket", "playing badminton",
                  "the wearer hits a shuttlecock"],
}
GAIT = {"walking", "walking_upstairs", "walking_downstairs", "running"}
INTENSITY = ((0.05, "very little movement"), (0.25, "light movement"), (0.6, "moderate movement"),
             (float("inf"), "vigorous movement"))


def phrases_for(class_name: str) -> List[str]:
    """Phrasings of an activity; an unknown class name falls back to generic ones built from the name."""
    words = class_name.replace("_", " ")
    return TEMPLATES.get(class_name, ["a person {}".format(words), "someone is {}".format(words), words])


def _magnitude(x: np.ndarray) -> np.ndarray:
    """``[N, T, 3]`` -> ``[N, T]`` Euclidean norm over the 3 axes."""
    return np.sqrt((x.astype(np.float64) ** 2).sum(-1))


def intensity(acc: np.ndarray) -> np.ndarray:
    """Standard deviation over time of the acceleration magnitude, per window ``[N]`` (data units)."""
    return _magnitude(acc).std(axis=1)


def cadence(acc: np.ndarray, rate_hz: float, band: Tuple[float, float] = (1.0, 3.5),
            min_peak_ratio: float = 3.0, min_std_g: float = 0.05) -> np.ndarray:
    """Steps per minute from the dominant frequency of the acceleration magnitude (``acc`` in g), per
    window ``[N]``.

    NaN where the magnitude barely moves (std below ``min_std_g``: no steps), where the peak in
    ``band`` (Hz) is not ``min_peak_ratio`` times the band's median power (no clear rhythm), or where
    the window is shorter than two periods of the band's low edge.
    """
    mag = _magnitude(acc)
    moving = mag.std(axis=1) >= min_std_g
    mag = mag - mag.mean(axis=1, keepdims=True)
    n = mag.shape[1]
    out = np.full(mag.shape[0], np.nan)
    if n < 2 * rate_hz / band[0]:
        return out
    power = np.abs(np.fft.rfft(mag * np.hanning(n), axis=1)) ** 2
    freqs = np.fft.rfftfreq(n, 1.0 / rate_hz)
    sel = (freqs >= band[0]) & (freqs <= band[1])
    if sel.sum() < 3:
        return out
    p = power[:, sel]
    peak = p.argmax(axis=1)
    clear = moving & (p[np.arange(len(p)), peak] >= min_peak_ratio * np.maximum(np.median(p, axis=1), 1e-12))
    out[clear] = 60.0 * freqs[sel][peak[clear]]
    return out


@dataclass
class NarratedDataset:
    """Windows plus one text per window (``texts[i]`` describes window ``i``)."""

    data: MultimodalDataset
    texts: List[str]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.data):
            raise DataError("narrated dataset: {} texts for {} windows".format(len(self.texts), len(self.data)))

    def save(self, path: str) -> None:
        base = path[:-4] if path.endswith(".npz") else path
        self.data.save(base)
        with open(base + ".texts.json", "w") as f:
            json.dump(self.texts, f, indent=0)

    @classmethod
    def load(cls, path: str) -> "NarratedDataset":
        base = path[:-4] if path.endswith(".npz") else path
        p = base + ".texts.json"
        texts = read_json(p, "texts file not found (a narrated dataset is .npz + .json + .texts.json)")
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise DataError("{}: expected a JSON list of strings".format(p))
        return cls(MultimodalDataset.load(base), texts)


def narrate(ds: MultimodalDataset, seed: int = 0, attributes: bool = True, acc_modality: str = "acc",
            unit_g: Optional[float] = None) -> NarratedDataset:
    """Describe every labeled window of ``ds`` (unlabeled ones are dropped) in words.

    ``unit_g``: how many data units make 1 g (1 for HAPT, 9.81 for data in m/s^2); by default 1 when
    the spec's units are ``"g"``, 9.81 for ``"m/s^2"``, else attributes are skipped (their thresholds are
    in g). Attributes are computed on the raw (un-normalized) windows.
    """
    labeled = ds.subset(np.flatnonzero(ds.labels >= 0))
    rng = np.random.RandomState(seed)
    n = len(labeled)
    inten = cad = None
    if attributes and acc_modality in labeled.x and labeled.x[acc_modality].shape[2] == 3:
        spec = labeled.specs[acc_modality]
        scale = unit_g if unit_g else {"g": 1.0, "m/s^2": 9.81, "m/s2": 9.81}.get(spec.units)
        if scale:
            acc = labeled.x[acc_modality] / scale
            inten = intensity(acc)
            cad = cadence(acc, spec.rate_hz)
    texts = []
    for i in range(n):
        name = labeled.class_names[labeled.labels[i]]
        options = phrases_for(name)
        text = options[rng.randint(len(options))]
        extra = []
        if inten is not None:
            word = next(w for limit, w in INTENSITY if inten[i] < limit)
            if rng.rand() < 0.5:
                extra.append("with " + word)
        if cad is not None and name in GAIT and np.isfinite(cad[i]) and rng.rand() < 0.7:
            extra.append("at about {:d} steps per minute".format(int(round(cad[i] / 5.0) * 5)))
        texts.append(" ".join([text] + extra))
    return NarratedDataset(labeled, texts)


_NARRATION_PREFIX = re.compile(r"^#\s*[Cc]\s+[Cc]\s+|^#\s*[Cc]\s+")


def clean_narration(text: str) -> str:
    """Ego4D narrations start with ``#C C`` (the camera wearer): ``"#C C picks a cup"`` -> ``"the person
    picks a cup"``; trailing ``#unsure`` / ``#summary`` tags are removed."""
    t = _NARRATION_PREFIX.sub("the person ", text.strip())
    t = re.sub(r"#\w+", "", t)
    return re.sub(r"\s+", " ", t).strip()


def read_ego4d(imu_dir: str, narrations_json: str, window_s: float = 5.0, rate_hz: float = 200.0,
               channels: Sequence[str] = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"),
               class_names: Optional[List[str]] = None) -> NarratedDataset:
    """Ego4D-style data: ``imu_dir/<video_uid>.npy`` holds ``[S, 1 + C]`` rows ``(time_s, channels...)``
    for each video, ``narrations_json`` maps ``video_uid -> [{"timestamp_sec": t, "narration_text": ...}]``.

    Each narration gives one window of ``window_s`` seconds centred on its timestamp, resampled onto
    ``rate_hz``; narrations whose window runs past the recording are skipped. Subjects = video index,
    labels = -1 (narrations are free text) unless ``class_names`` is given and a narration names one.
    """
    narr = read_json(narrations_json, "narrations file not found")
    if not isinstance(narr, dict):
        raise DataError("{}: expected an object video_uid -> list of narrations".format(narrations_json))
    length = int(round(window_s * rate_hz))
    xs, texts, subjects, labels = [], [], [], []
    for vi, uid in enumerate(sorted(narr)):
        path = os.path.join(imu_dir, "{}.npy".format(uid))
        if not os.path.isfile(path):
            raise DataError("{}: IMU file for video {!r} not found".format(path, uid))
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataError("{}: unreadable .npy: {}".format(path, e)) from e
        if arr.ndim != 2 or arr.shape[1] != 1 + len(channels):
            raise DataError("{}: expected [S, {}] rows (time_s, {}), got {}".format(
                path, 1 + len(channels), ", ".join(channels), arr.shape))
        t = arr[:, 0]
        if not np.isfinite(arr).all() or (np.diff(t) <= 0).any():
            raise DataError("{}: times must increase and values be finite".format(path))
        for k, item in enumerate(narr[uid]):
            try:
                ts, text = float(item["timestamp_sec"]), str(item["narration_text"])
            except (KeyError, TypeError, ValueError) as e:
                raise DataError("{}: video {!r} narration {}: needs timestamp_sec and narration_text ({})".format(
                    narrations_json, uid, k, e)) from e
            t0, t1 = ts - window_s / 2.0, ts + window_s / 2.0
            if t0 < t[0] or t1 > t[-1]:
                continue
            grid = t0 + np.arange(length) / rate_hz
            win = np.stack([np.interp(grid, t, arr[:, 1 + c]) for c in range(len(channels))], 1)
            xs.append(win.astype(np.float32))
            cleaned = clean_narration(text)
            texts.append(cleaned)
            subjects.append(vi)
            lab = -1
            if class_names:
                hits = [i for i, c in enumerate(class_names) if c.replace("_", " ") in cleaned]
                lab = hits[0] if len(hits) == 1 else -1
            labels.append(lab)
    if not xs:
        raise DataError("{}: no narration has a full {} s IMU window".format(narrations_json, window_s))
    spec = ModalitySpec("imu", rate_hz, tuple(channels))
    data = MultimodalDataset(x=OrderedDict([("imu", np.stack(xs).astype(np.float32))]),
                             specs=OrderedDict([("imu", spec)]), labels=np.asarray(labels, np.int64),
                             subjects=np.asarray(subjects, np.int64), class_names=class_names or ["narrated"],
                             name="ego4d")
    return NarratedDataset(data, texts)

