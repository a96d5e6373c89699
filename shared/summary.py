"""Summaries of long recordings: per-window activity labels -> merged segments -> a short text.

Windows start every ``hop_s`` seconds and last ``window_s``; each sample takes the label of the window
whose centre is nearest (so the timeline has the resolution of the hop). Segments shorter than
``min_segment_s`` are merged into their longer neighbour before the text is written.
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np


def fmt_time(seconds: float) -> str:
    s = int(round(seconds))
    return "{:d}:{:02d}".format(s // 60, s % 60)


def window_labels_to_timeline(labels: Sequence[int], hop_s: float, window_s: float, duration_s: float,
                              rate_hz: float) -> np.ndarray:
    """Per-sample labels ``[round(duration_s * rate_hz)]`` from per-window labels (nearest window centre)."""
    n = int(round(duration_s * rate_hz))
    labels = np.asarray(labels)
    if len(labels) == 0:
        return np.full(n, -1, np.int64)
    t = np.arange(n) / rate_hz
    idx = np.clip(np.round((t - window_s / 2.0) / hop_s).astype(np.int64), 0, len(labels) - 1)
    return labels[idx].astype(np.int64)


def segments(timeline: np.ndarray, rate_hz: float, min_segment_s: float = 0.0) -> List[Tuple[float, float, int]]:
    """``[(start_s, end_s, label)]`` runs of equal labels; runs shorter than ``min_segment_s`` are merged
    into the longer neighbouring run (repeated until none is left)."""
    tl = np.asarray(timeline)
    if len(tl) == 0:
        return []
    cut = np.flatnonzero(np.diff(tl)) + 1
    starts = np.concatenate([[0], cut])
    ends = np.concatenate([cut, [len(tl)]])
    segs = [[int(a), int(b), int(tl[a])] for a, b in zip(starts, ends)]
    min_len = min_segment_s * rate_hz
    changed = True
    while changed and len(segs) > 1:
        changed = False
        i = min(range(len(segs)), key=lambda k: segs[k][1] - segs[k][0])
        if segs[i][1] - segs[i][0] >= min_len:
            break
        left = segs[i - 1] if i > 0 else None
        right = segs[i + 1] if i + 1 < len(segs) else None
        target = left if right is None or (left is not None and left[1] - left[0] >= right[1] - right[0]) else right
        if target is left:
            left[1] = segs[i][1]
        else:
            right[0] = segs[i][0]
        del segs[i]
        merged = [segs[0]]
        for s in segs[1:]:
            if s[2] == merged[-1][2]:
                merged[-1][1] = s[1]
            else:
                merged.append(s)
        segs = merged
        changed = True
    return [(a / rate_hz, b / rate_hz, lab) for a, b, lab in segs]


def describe(segs: Sequence[Tuple[float, float, int]], class_names: Sequence[str]) -> str:
    """``"0:00–0:42 walking, 0:42–1:30 sitting, …"``."""
    return ", ".join("{}\u2013{} {}".format(fmt_time(a), fmt_time(b),
                                            class_names[lab].replace("_", " ") if lab >= 0 else "unknown")
                     for a, b, lab in segs)


def score(pred_timeline: np.ndarray, true_timeline: np.ndarray, rate_hz: float) -> Dict[str, float]:
    """Frame accuracy over labeled samples (true >= 0), and segment accuracy: the fraction of true
    segments (labeled) whose majority predicted label is their label."""
    pred, true = np.asarray(pred_timeline), np.asarray(true_timeline)
    m = true >= 0
    frame = float((pred[m] == true[m]).mean()) if m.any() else float("nan")
    ok, total = 0, 0
    for a, b, lab in segments(true, rate_hz):
        if lab < 0:
            continue
        s, e = int(round(a * rate_hz)), int(round(b * rate_hz))
        vals, counts = np.unique(pred[s:e], return_counts=True)
        ok += int(vals[counts.argmax()] == lab)
        total += 1
    return {"frame_accuracy": frame, "segment_accuracy": ok / total if total else float("nan"),
            "true_segments": total}
