"""A seeded synthetic multimodal data set with a known per-modality informativeness.

Each window of modality j with informativeness ``w_j`` in [0, 1] is::

    x = gain_s * (w_j * class_pattern + (1 - w_j) * distractor + noise) + offset_s

* ``class_pattern``: per channel a sinusoid whose frequency, amplitude and offset depend on the class
  (random phase per window, small per-window jitter of amplitude and frequency);
* ``distractor``: the same kind of signal with frequency, amplitude and offset drawn afresh for every
  window, independently of the class;
* ``noise``: white Gaussian noise (std 0.3);
* ``gain_s``, ``offset_s``: small per-subject, per-channel gain and offset, so that subject-wise splits
  matter.

So ``w_j = 1`` gives clearly separable classes, ``w_j = 0`` a modality whose values are independent of
the class (a quality score should rank it last), and values in between interpolate.
"""
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

from ..errors import DataError
from .dataset import ModalitySpec, MultimodalDataset

NOISE_STD = 0.3


def make_synthetic(num_subjects: int = 8, windows_per_subject: int = 60, num_classes: int = 4,
                   modalities: Sequence[Tuple[str, int, int]] = (("a", 64, 3), ("b", 64, 3)),
                   informativeness: Union[float, Sequence[float]] = (1.0, 0.0), rate_hz: float = 50.0,
                   seed: int = 0) -> MultimodalDataset:
    """Generate ``num_subjects * windows_per_subject`` labeled windows.

    Args:
        num_subjects: subjects 1..num_subjects, each with ``windows_per_subject`` windows whose labels
            are balanced over the classes (as evenly as the count allows) and shuffled.
        num_classes: K >= 2; class names ``class0 .. class{K-1}``.
        modalities: ``(name, T, C)`` per modality: windows ``[N, T, C]``.
        informativeness: one value in [0, 1] per modality (or one value for all).
        rate_hz: sampling rate of every modality.
        seed: everything is a deterministic function of the arguments.
    """
    mods = [(str(m[0]), int(m[1]), int(m[2])) for m in modalities]
    if not mods:
        raise DataError("make_synthetic: modalities is empty")
    names = [m[0] for m in mods]
    if len(set(names)) != len(names):
        raise DataError("make_synthetic: modality names must be distinct, got {}".format(names))
    for name, t, c in mods:
        if t < 1 or c < 1:
            raise DataError("make_synthetic: modality {!r} needs T >= 1 and C >= 1, got ({}, {})".format(name, t, c))
    if np.ndim(informativeness) == 0:
        info = [float(informativeness)] * len(mods)  # type: ignore[arg-type]
    else:
        info = [float(v) for v in informativeness]
    if len(info) != len(mods):
        raise DataError("make_synthetic: informativeness has {} values for {} modalities {}".format(
            len(info), len(mods), names))
    if any(not 0.0 <= v <= 1.0 for v in info):
        raise DataError("make_synthetic: informativeness must be in [0, 1], got {}".format(info))
    if num_classes < 2:
        raise DataError("make_synthetic: num_classes must be >= 2, got {}".format(num_classes))
    if num_subjects < 1 or windows_per_subject < 1:
        raise DataError("make_synthetic: num_subjects and windows_per_subject must be >= 1, got {} and {}"
                        .format(num_subjects, windows_per_subject))
    if rate_hz <= 0:
        raise DataError("make_synthetic: rate_hz must be > 0, got {}".format(rate_hz))

    rng = np.random.RandomState(seed)
    n = num_subjects * windows_per_subject
    subjects = np.repeat(np.arange(1, num_subjects + 1, dtype=np.int64), windows_per_subject)
    base = np.arange(windows_per_subject) % num_classes
    labels = np.concatenate([rng.permutation(base) for _ in range(num_subjects)]).astype(np.int64)
    # frequencies between ~1 cycle per window and a fifth of the sampling rate
    xs: Dict[str, np.ndarray] = OrderedDict()
    specs: List[ModalitySpec] = []
    for (name, t_len, ch), w in zip(mods, info):
        duration = t_len / float(rate_hz)
        f_lo = min(1.0 / duration, 0.1 * rate_hz)
        f_hi = max(f_lo * 1.5, 0.2 * rate_hz)
        t = (np.arange(t_len) / float(rate_hz))[None, :, None]  # [1, T, 1]
        # class-specific patterns [K, C]
        c_freq = rng.uniform(f_lo, f_hi, (num_classes, ch))
        c_amp = rng.uniform(0.5, 1.5, (num_classes, ch))
        c_off = rng.normal(0.0, 1.0, (num_classes, ch))
        # per-window draws [N, C]
        phase = rng.uniform(0.0, 2 * np.pi, (n, ch))
        jitter_f = 1.0 + 0.05 * rng.randn(n, ch)
        jitter_a = 1.0 + 0.1 * rng.randn(n, ch)
        d_freq = rng.uniform(f_lo, f_hi, (n, ch))
        d_amp = rng.uniform(0.5, 1.5, (n, ch))
        d_off = rng.normal(0.0, 1.0, (n, ch))
        d_phase = rng.uniform(0.0, 2 * np.pi, (n, ch))
        noise = rng.randn(n, t_len, ch) * NOISE_STD
        s_gain = 1.0 + 0.1 * rng.randn(num_subjects, ch)
        s_off = 0.2 * rng.randn(num_subjects, ch)
        pattern = (c_amp[labels] * jitter_a)[:, None, :] * np.sin(
            2 * np.pi * (c_freq[labels] * jitter_f)[:, None, :] * t + phase[:, None, :]) + c_off[labels][:, None, :]
        distractor = d_amp[:, None, :] * np.sin(2 * np.pi * d_freq[:, None, :] * t + d_phase[:, None, :]) \
            + d_off[:, None, :]
        x = w * pattern + (1.0 - w) * distractor + noise
        si = subjects - 1
        x = s_gain[si][:, None, :] * x + s_off[si][:, None, :]
        xs[name] = x.astype(np.float32)
        specs.append(ModalitySpec(name, float(rate_hz), tuple("{}_{}".format(name, i) for i in range(ch)),
                                  units="a.u."))
    return MultimodalDataset(
        x=xs, specs=OrderedDict((s.name, s) for s in specs), labels=labels, subjects=subjects,
        class_names=["class{}".format(k) for k in range(num_classes)], name="synthetic",
        meta={"generator": "shared.data.synthetic.make_synthetic", "seed": int(seed),
              "informativeness": OrderedDict(zip(names, info)), "noise_std": NOISE_STD})
