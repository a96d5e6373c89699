import numpy as np
import pytest

from shared.summary import describe, fmt_time, score, segments, window_labels_to_timeline


def test_timeline_segments_and_text():
    # windows of 2 s every 1 s over 10 s: labels 0,0,0,1,1,1,1,0(blip),1,1
    tl = window_labels_to_timeline([0, 0, 0, 1, 1, 1, 1, 0, 1, 1], hop_s=1.0, window_s=2.0, duration_s=11.0,
                                   rate_hz=10.0)
    assert tl.shape == (110,)
    raw = segments(tl, 10.0)
    assert [s[2] for s in raw] == [0, 1, 0, 1]
    merged = segments(tl, 10.0, min_segment_s=2.0)
    assert [s[2] for s in merged] == [0, 1]
    assert merged[0][0] == 0.0 and merged[-1][1] == pytest.approx(11.0)
    text = describe(merged, ["walking", "sitting_down"])
    assert text.startswith("0:00\u2013") and "sitting down" in text
    assert fmt_time(90) == "1:30"


def test_score_frame_and_segment_accuracy():
    true = np.array([0] * 50 + [-1] * 10 + [1] * 40)
    pred = np.array([0] * 45 + [1] * 15 + [1] * 30 + [0] * 10)
    s = score(pred, true, 10.0)
    assert s["frame_accuracy"] == pytest.approx((45 + 30) / 90)
    assert s["segment_accuracy"] == 1.0 and s["true_segments"] == 2
