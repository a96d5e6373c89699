"""Continuous recordings, resampling and sliding windows.

A ``Recording`` is one continuous session of one subject: per modality a float array ``[L_j, C_j]``
sampled at ``spec.rate_hz`` and, optionally, per-sample labels at the rate of the first modality.
``sliding_windows`` turns recordings into the windowed ``MultimodalDataset``.
"""
from collections import OrderedDict
from typing import List, Optional, Sequence

import numpy as np
from dataclasses import dataclass, replace

from ..errors import DataError
from .dataset import ModalitySpec, MultimodalDataset


@dataclass
class Recording:
    """One continuous multimodal recording.

    Attributes:
        subject: subject id.
        signals: modality name -> float array ``[L_j, C_j]`` at ``specs[name].rate_hz``.
        specs: modality name -> spec (same keys and order as ``signals``).
        labels: per-sample class index ``[L_0]`` at the first modality's rate (-1 = unlabeled), or
            ``None`` when the whole recording has one label ``label``.
        label: the recording-level label when ``labels`` is ``None``.
        source: where it came from (a file name), for error messages.
    """

    subject: int
    signals: "OrderedDict[str, np.ndarray]"
    specs: "OrderedDict[str, ModalitySpec]"
    labels: Optional[np.ndarray] = None
    label: int = -1
    source: str = ""

    def duration_s(self) -> float:
        m = next(iter(self.signals))
        return self.signals[m].shape[0] / float(self.specs[m].rate_hz)


def resample(x: np.ndarray, src_hz: float, dst_hz: float, length: Optional[int] = None) -> np.ndarray:
    """Linearly resample ``x [L, C]`` from ``src_hz`` to ``dst_hz`` (or to exactly ``length`` samples).

    Linear interpolation on the sample grid; adequate for inertial data whose content is well below
    the new Nyquist rate. Returns float32 ``[L', C]``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DataError("resample: expected [L, C], got shape {}".format(x.shape))
    n = x.shape[0]
    if length is None:
        if src_hz <= 0 or dst_hz <= 0:
            raise DataError("resample: rates must be > 0, got {} -> {} Hz".format(src_hz, dst_hz))
        if src_hz == dst_hz:
            return x.astype(np.float32)
        length = int(np.floor((n - 1) * dst_hz / src_hz)) + 1 if n > 0 else 0
        t_new = np.arange(length) / float(dst_hz)
        t_old = np.arange(n) / float(src_hz)
    else:
        t_new = np.linspace(0.0, 1.0, length)
        t_old = np.linspace(0.0, 1.0, n)
    if n == 0 or length == 0:
        return np.zeros((length, x.shape[1]), np.float32)
    out = np.empty((length, x.shape[1]), np.float64)
    for c in range(x.shape[1]):
        out[:, c] = np.interp(t_new, t_old, x[:, c])
    return out.astype(np.float32)


def _label_resample(labels: np.ndarray, src_hz: float, dst_hz: float, length: int) -> np.ndarray:
    """Nearest-neighbour resampling of per-sample labels."""
    idx = np.minimum(np.round(np.arange(length) * src_hz / dst_hz).astype(np.int64), len(labels) - 1)
    return labels[idx]


def sliding_windows(recordings: Sequence[Recording], class_names: List[str], window_s: float,
                    overlap: float = 0.5, rate_hz: Optional[float] = None,
                    keep_unlabeled: bool = False, min_purity: float = 1.0,
                    name: str = "") -> MultimodalDataset:
    """Cut recordings into fixed-length windows.

    Args:
        recordings: the recordings; all must have the same modalities and channels.
        class_names: names of the classes; per-sample labels index into this list.
        window_s: window length in seconds.
        overlap: fraction of a window shared with the next one, in [0, 1).
        rate_hz: resample every modality to this rate first (None keeps each modality's own rate,
            so window lengths T_j may differ across modalities).
        keep_unlabeled: keep windows with no single dominant class as unlabeled (-1) instead of
            dropping them (useful as extra unlabeled data for pretraining).
        min_purity: fraction of a window's samples that must carry its label for it to count as
            labeled.
        name: dataset name.
    """
    if not 0.0 <= overlap < 1.0:
        raise DataError("sliding_windows: overlap must be in [0, 1), got {}".format(overlap))
    if window_s <= 0:
        raise DataError("sliding_windows: window_s must be > 0, got {}".format(window_s))
    if not recordings:
        raise DataError("sliding_windows: no recordings")
    mods = list(recordings[0].signals.keys())
    out_specs = OrderedDict()  # type: Dict[str, ModalitySpec]
    for m in mods:
        s = recordings[0].specs[m]
        out_specs[m] = replace(s, rate_hz=float(rate_hz)) if rate_hz else s
    xs = OrderedDict((m, []) for m in mods)  # type: Dict[str, List[np.ndarray]]
    ys, subs = [], []  # type: List[int], List[int]
    ref = mods[0]
    for rec in recordings:
        if list(rec.signals.keys()) != mods:
            raise DataError("{}: modalities {} differ from {}".format(rec.source, list(rec.signals), mods))
        sig = OrderedDict()
        for m in mods:
            a = np.asarray(rec.signals[m])
            if a.ndim != 2 or a.shape[1] != len(out_specs[m].channels):
                raise DataError("{}: modality {!r} must be [L, {}], got {}".format(
                    rec.source, m, len(out_specs[m].channels), a.shape))
            if not np.isfinite(a).all():
                raise DataError("{}: modality {!r} contains NaN/Inf".format(rec.source, m))
            src = rec.specs[m].rate_hz
            sig[m] = resample(a, src, rate_hz) if rate_hz else a.astype(np.float32)
        ref_rate = out_specs[ref].rate_hz
        n_ref = sig[ref].shape[0]
        if rec.labels is not None:
            lab = np.asarray(rec.labels).astype(np.int64)
            if lab.shape[0] != rec.signals[ref].shape[0]:
                raise DataError("{}: {} labels for {} samples of {!r}".format(
                    rec.source, lab.shape[0], rec.signals[ref].shape[0], ref))
            if rate_hz:
                lab = _label_resample(lab, rec.specs[ref].rate_hz, rate_hz, n_ref)
        else:
            lab = np.full(n_ref, rec.label, np.int64)
        w_ref = int(round(window_s * ref_rate))
        step = max(1, int(round(w_ref * (1.0 - overlap))))
        duration = n_ref / ref_rate
        start_t = 0.0
        while start_t + window_s <= duration + 1e-9:
            i0 = int(round(start_t * ref_rate))
            seg = lab[i0:i0 + w_ref]
            if len(seg) < w_ref:
                break
            vals, counts = np.unique(seg, return_counts=True)
            top = int(np.argmax(counts))
            y = int(vals[top]) if counts[top] >= min_purity * w_ref else -1
            if y >= len(class_names):
                y = -1
            if y >= 0 or keep_unlabeled:
                ok = True
                pieces = {}
                for m in mods:
                    r = out_specs[m].rate_hz
                    w = int(round(window_s * r))
                    j0 = int(round(start_t * r))
                    piece = sig[m][j0:j0 + w]
                    if piece.shape[0] < w:
                        ok = False
                        break
                    pieces[m] = piece
                if ok:
                    for m in mods:
                        xs[m].append(pieces[m])
                    ys.append(y)
                    subs.append(rec.subject)
            start_t += step / ref_rate
    if not ys:
        raise DataError("sliding_windows: no window of {} s fits in the recordings".format(window_s))
    return MultimodalDataset(
        x=OrderedDict((m, np.stack(v).astype(np.float32)) for m, v in xs.items()),
        specs=out_specs, labels=np.asarray(ys, np.int64), subjects=np.asarray(subs, np.int64),
        class_names=list(class_names), name=name,
        meta={"window_s": window_s, "overlap": overlap})
