import json

import numpy as np
import pytest

from shared.data import make_dataset
from shared.data.dataset import ModalitySpec
from shared.data.narration import NarratedDataset, cadence, clean_narration, intensity, narrate, read_ego4d
from shared.errors import DataError


def _gait(n, rate=50.0, t=128, f=2.0, amp=0.3, seed=0):
    """Acceleration whose magnitude oscillates at ``f`` Hz around 1 g (a step every 1/f s)."""
    rng = np.random.RandomState(seed)
    time = np.arange(t) / rate
    mag = 1.0 + amp * np.sin(2 * np.pi * f * time + rng.rand(n, 1) * 6.28)
    acc = np.zeros((n, t, 3), np.float32)
    acc[:, :, 2] = mag + 0.01 * rng.randn(n, t)
    return acc


def test_cadence_and_intensity_from_the_signal():
    acc = _gait(4, f=2.0)
    c = cadence(acc, 50.0)
    assert np.all(np.abs(c - 120.0) <= 12.0)  # 2 Hz steps = 120 steps/min, within the FFT's 0.39 Hz bins
    still = np.zeros((3, 128, 3), np.float32)
    still[:, :, 2] = 1.0
    assert np.isnan(cadence(still + 1e-4 * np.random.RandomState(0).randn(3, 128, 3), 50.0)).all()
    assert (intensity(still) < 1e-6).all() and (intensity(acc) > 0.1).all()


def _dataset():
    acc = np.concatenate([_gait(6, f=1.9), np.tile(np.array([0, 0, 1.0], np.float32), (6, 128, 1))])
    gyro = np.zeros((12, 128, 3), np.float32)
    return make_dataset({"acc": acc, "gyro": gyro},
                        [ModalitySpec("acc", 50.0, ("x", "y", "z"), units="g"), ModalitySpec("gyro", 50.0, ("x", "y", "z"))],
                        labels=np.array([0] * 6 + [1] * 5 + [-1]), subjects=np.arange(12) % 3,
                        class_names=["walking", "sitting"])


def test_narrate_is_seeded_and_describes_each_labeled_window():
    ds = _dataset()
    a, b = narrate(ds, seed=1), narrate(ds, seed=1)
    assert a.texts == b.texts and len(a.texts) == 11 and len(a.data) == 11
    assert narrate(ds, seed=2).texts != a.texts
    for y, t in zip(a.data.labels, a.texts):
        if y == 0:
            assert "walk" in t
            assert "steps per minute" not in t or "at about 11" in t  # 1.9 Hz -> 114 -> "about 115"
        else:
            assert "sit" in t or "seated" in t
            assert "steps per minute" not in t
    assert any("steps per minute" in t for t in a.texts)
    plain = narrate(ds, seed=1, attributes=False)
    assert not any("movement" in t or "steps" in t for t in plain.texts)


def test_narrated_save_load(tmp_path):
    nd = narrate(_dataset(), seed=0)
    nd.save(str(tmp_path / "n"))
    back = NarratedDataset.load(str(tmp_path / "n.npz"))
    assert back.texts == nd.texts and np.array_equal(back.data.x["acc"], nd.data.x["acc"])
    (tmp_path / "n.texts.json").write_text("{not json")
    with pytest.raises(DataError, match="texts.json"):
        NarratedDataset.load(str(tmp_path / "n"))
    with pytest.raises(DataError, match="texts"):
        NarratedDataset(nd.data, nd.texts[:-1])


def test_clean_narration():
    assert clean_narration("#C C picks a cup from the table #unsure") == "the person picks a cup from the table"
    assert clean_narration("#c C walks") == "the person walks"


def test_read_ego4d_layout(tmp_path):
    rate = 50.0
    for uid, seconds in (("vid_a", 20.0), ("vid_b", 8.0)):
        t = np.arange(0, seconds, 1.0 / rate)
        data = np.concatenate([t[:, None], np.random.RandomState(0).randn(len(t), 6)], 1)
        np.save(str(tmp_path / "{}.npy".format(uid)), data)
    narr = {"vid_a": [{"timestamp_sec": 5.0, "narration_text": "#C C walks to the door"},
                      {"timestamp_sec": 10.0, "narration_text": "#C C sits down"},
                      {"timestamp_sec": 19.5, "narration_text": "#C C runs"}],  # window past the end: skipped
            "vid_b": [{"timestamp_sec": 4.0, "narration_text": "#C C stands"}]}
    (tmp_path / "narrations.json").write_text(json.dumps(narr))
    nd = read_ego4d(str(tmp_path), str(tmp_path / "narrations.json"), window_s=5.0, rate_hz=rate)
    assert nd.data.x["imu"].shape == (3, 250, 6)
    assert nd.texts == ["the person walks to the door", "the person sits down", "the person stands"]
    assert nd.data.subjects.tolist() == [0, 0, 1]
    src = np.load(str(tmp_path / "vid_a.npy"))
    start = int(round(2.5 * rate))
    np.testing.assert_allclose(nd.data.x["imu"][0], src[start:start + 250, 1:], atol=1e-5)
    (tmp_path / "vid_b.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match="vid_b.npy"):
        read_ego4d(str(tmp_path), str(tmp_path / "narrations.json"), rate_hz=rate)
    with pytest.raises(DataError, match="nope.json"):
        read_ego4d(str(tmp_path), str(tmp_path / "nope.json"))


def test_hapt_walking_cadence_is_plausible():
    from shared.data.hapt import load_hapt
    ds = load_hapt()
    walking = ds.x["acc"][ds.labels == ds.class_names.index("walking")]
    c = cadence(walking, 50.0)
    assert np.isfinite(c).mean() > 0.7
    assert 95 <= np.nanmedian(c) <= 130  # adults walk at roughly 100-120 steps per minute
    nd = narrate(ds.subset(np.arange(0, len(ds), 50)), seed=0)
    assert len(set(nd.texts)) > 20
