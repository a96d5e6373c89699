"""UTD-MHAD (UTD Multimodal Human Action Dataset), one of the Cosmo paper's datasets.

8 subjects, 27 actions, 4 trials each (861 usable sequences). Used here: the wearable inertial sensor
(right wrist or right thigh; accelerometer in g, gyroscope in deg/s, 50 Hz) and the Kinect v1 skeleton
(20 joints x 3 coordinates in metres, 30 Hz). File names::

    aA_sS_tT_inertial.mat   variable d_iner  [L, 6]        (acc x, y, z, gyro x, y, z)
    aA_sS_tT_skeleton.mat   variable d_skel  [20, 3, F]

usually in ``Inertial/`` and ``Skeleton/`` folders; the files are searched recursively under ``root``.

As in the Cosmo reference, each trial is one sample: the inertial series is linearly resampled in time
to ``imu_steps`` steps and the skeleton to ``skeleton_frames`` frames, flattened joint-major to
``[frames, 60]`` (``j01_x, j01_y, j01_z, j02_x, ...``). Since trials differ in duration, the rate of the
resampled time axis differs per trial; the specs carry the nominal recording rates (50 Hz, 30 Hz) and
``meta`` records the resampling and each trial's original duration.
"""
import os
import re
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..errors import DataError
from .dataset import ModalitySpec, MultimodalDataset
from .uschad import read_mat_array
from .windows import resample

IMU_RATE_HZ = 50.0
SKELETON_RATE_HZ = 30.0
NUM_JOINTS = 20
CLASSES = [
    "right_arm_swipe_left", "right_arm_swipe_right", "right_hand_wave", "two_hand_front_clap",
    "right_arm_throw", "cross_arms_in_chest", "basketball_shoot", "right_hand_draw_x",
    "right_hand_draw_circle_clockwise", "right_hand_draw_circle_counter_clockwise", "draw_triangle",
    "bowling", "front_boxing", "baseball_swing_from_right", "tennis_right_hand_forehand_swing", "arm_curl",
    "tennis_serve", "two_hand_push", "right_hand_knock_on_door", "right_hand_catch_object",
    "right_hand_pick_up_and_throw", "jogging_in_place", "walking_in_place", "sit_to_stand",
    "stand_to_sit", "forward_lunge_left_foot_forward", "squat_two_arms_stretch_out",
]
MODALITIES = ("imu", "skeleton")
IMU = ModalitySpec("imu", IMU_RATE_HZ, ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"),
                   units="g (acc), deg/s (gyro)")
SKELETON = ModalitySpec(
    "skeleton", SKELETON_RATE_HZ,
    tuple("j{:02d}_{}".format(j + 1, c) for j in range(NUM_JOINTS) for c in "xyz"),
    units="m", layout="skeleton", joints=NUM_JOINTS, coords=3)
_KIND = {"imu": ("inertial", "d_iner"), "skeleton": ("skeleton", "d_skel")}
_FILE_RE = re.compile(r"^a(\d+)_s(\d+)_t(\d+)_(inertial|skeleton)\.mat$", re.IGNORECASE)

TrialKey = Tuple[int, int, int]


def find_trials(root: str) -> "OrderedDict[TrialKey, Dict[str, str]]":
    """``(action, subject, trial) -> {"inertial": path, "skeleton": path}`` for every
    ``aA_sS_tT_{inertial,skeleton}.mat`` under ``root`` (recursively), sorted by subject, action, trial."""
    root = str(root)
    if not os.path.isdir(root):
        raise DataError("{}: UTD-MHAD folder not found".format(root))
    found: Dict[TrialKey, Dict[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            m = _FILE_RE.match(fn)
            if m is None:
                continue
            a, s, t = int(m.group(1)), int(m.group(2)), int(m.group(3))
            kind = m.group(4).lower()
            path = os.path.join(dirpath, fn)
            if not 1 <= a <= len(CLASSES):
                raise DataError("{}: action number {} out of range 1..{}".format(path, a, len(CLASSES)))
            files = found.setdefault((a, s, t), {})
            if kind in files:
                raise DataError("{}: duplicate of {}".format(path, files[kind]))
            files[kind] = path
    if not found:
        raise DataError("{}: no UTD-MHAD files (expected aA_sS_tT_inertial.mat / _skeleton.mat)".format(root))
    return OrderedDict((k, found[k]) for k in sorted(found, key=lambda k: (k[1], k[0], k[2])))


def _read_imu(path: str) -> np.ndarray:
    a = read_mat_array(path, "d_iner")
    if a.ndim != 2 or a.shape[1] != 6 or a.shape[0] == 0:
        raise DataError("{}: 'd_iner' must be [L, 6] (acc xyz, gyro xyz) with L > 0, got shape {}".format(
            path, a.shape))
    return a


def _read_skeleton(path: str) -> np.ndarray:
    """``d_skel [20, 3, F]`` as ``[F, 60]`` joint-major (j01_x, j01_y, j01_z, j02_x, ...)."""
    a = read_mat_array(path, "d_skel")
    if a.ndim == 2 and a.shape == (NUM_JOINTS, 3):  # MATLAB drops a trailing singleton frame axis
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[0] != NUM_JOINTS or a.shape[1] != 3 or a.shape[2] == 0:
        raise DataError("{}: 'd_skel' must be [{}, 3, frames] with frames > 0, got shape {}".format(
            path, NUM_JOINTS, a.shape))
    return a.transpose(2, 0, 1).reshape(a.shape[2], NUM_JOINTS * 3)


def load_utdmhad(root: str, imu_steps: int = 120, skeleton_frames: int = 40,
                 modalities: Sequence[str] = MODALITIES) -> MultimodalDataset:
    """UTD-MHAD with one sample per trial: ``imu [N, imu_steps, 6]`` and ``skeleton
    [N, skeleton_frames, 60]``; labels index ``CLASSES`` (action A -> A - 1), subjects 1..8.

    Args:
        root: folder searched recursively for ``aA_sS_tT_inertial.mat`` / ``_skeleton.mat``.
        imu_steps: length the inertial series is resampled to.
        skeleton_frames: number of frames the skeleton is resampled to.
        modalities: which of ``("imu", "skeleton")`` to load; every trial found must have a file for
            each (a trial lacking one is an error naming the file that is there).
    """
    modalities = [str(m) for m in modalities]
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown or not modalities or len(set(modalities)) != len(modalities):
        raise DataError("load_utdmhad: modalities must be distinct names from {}, got {}".format(
            list(MODALITIES), modalities))
    for name, v in (("imu_steps", imu_steps), ("skeleton_frames", skeleton_frames)):
        if int(v) < 1:
            raise DataError("load_utdmhad: {} must be >= 1, got {}".format(name, v))
    steps = {"imu": int(imu_steps), "skeleton": int(skeleton_frames)}
    trials = find_trials(root)
    kinds = [_KIND[m][0] for m in modalities]
    keys = [k for k, files in trials.items() if any(kd in files for kd in kinds)]
    if not keys:
        raise DataError("{}: no {} files".format(root, " or ".join("_{}.mat".format(k) for k in kinds)))
    xs: Dict[str, List[np.ndarray]] = OrderedDict((m, []) for m in modalities)
    durations: Dict[str, List[float]] = OrderedDict((m, []) for m in modalities)
    labels: List[int] = []
    subjects: List[int] = []
    names: List[str] = []
    for key in keys:
        files = trials[key]
        a, s, t = key
        for m in modalities:
            kind = _KIND[m][0]
            if kind not in files:
                there = next(iter(files.values()))
                raise DataError("{}: no matching a{}_s{}_t{}_{}.mat for modality {!r} (pass modalities=... "
                                "to load fewer)".format(there, a, s, t, kind, m))
            if m == "imu":
                sig, rate = _read_imu(files[kind]), IMU_RATE_HZ
            else:
                sig, rate = _read_skeleton(files[kind]), SKELETON_RATE_HZ
            durations[m].append(round(sig.shape[0] / rate, 4))
            xs[m].append(resample(sig, 0, 0, length=steps[m]))
        labels.append(a - 1)
        subjects.append(s)
        names.append("a{}_s{}_t{}".format(a, s, t))
    specs = OrderedDict((m, IMU if m == "imu" else SKELETON) for m in modalities)
    return MultimodalDataset(
        x=OrderedDict((m, np.stack(v).astype(np.float32)) for m, v in xs.items()),
        specs=specs, labels=np.asarray(labels, np.int64), subjects=np.asarray(subjects, np.int64),
        class_names=list(CLASSES), name="utdmhad",
        meta={
            "resampling": "each trial linearly resampled in time to a fixed length ({}); rate_hz is the "
                          "nominal recording rate, the per-trial rate is length / duration_s".format(
                              ", ".join("{} {}".format(m, steps[m]) for m in modalities)),
            "lengths": OrderedDict((m, steps[m]) for m in modalities),
            "duration_s": durations,
            "trials": names,
            "root": str(root),
        })
