"""Tests of shared.data: the dataset form, windowing, splits, and every loader.

Real data: the packaged UCI HAPT copy and sktime's BasicMotions. USC-HAD and UTD-MHAD are not
redistributable, so their tests write small .mat files in the real on-disk layouts.
"""
import gzip
import importlib.util
import os
import pickle
import sys
import time
from collections import OrderedDict

import numpy as np
import pytest
import scipy.io

try:
    import shared  # noqa: F401
except ImportError:  # running `pytest` (not `python -m pytest`) without the project installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import shared.data as data_pkg  # noqa: E402
from shared.data import (  # noqa: E402
    LOADERS,
    ModalitySpec,
    MultimodalDataset,
    Normalizer,
    Recording,
    labeled_unlabeled,
    load_basicmotions,
    load_hapt,
    load_named,
    load_uschad,
    load_utdmhad,
    make_dataset,
    make_synthetic,
    read_hapt_pickle,
    read_hapt_uci,
    read_ts,
    read_uschad,
    resample,
    sample_labels,
    sliding_windows,
    subject_split,
)
from shared.errors import ConfigError, DataError  # noqa: E402

A = ModalitySpec("a", 50.0, ("a_x", "a_y", "a_z"), units="g")
B = ModalitySpec("b", 25.0, ("b_0", "b_1"), units="rad/s")


def _tiny(n=12, num_subjects=4, seed=0):
    """A small valid dataset whose x['a'][i, 0, 0] == i identifies window i."""
    rng = np.random.RandomState(seed)
    xa = rng.randn(n, 8, 3).astype(np.float32)
    xa[:, 0, 0] = np.arange(n)
    xb = rng.randn(n, 4, 2).astype(np.float32)
    labels = np.arange(n) % 3
    subjects = np.arange(n) % num_subjects + 1
    return make_dataset({"a": xa, "b": xb}, [A, B], labels, subjects, ["c0", "c1", "c2"], name="tiny",
                        meta={"note": "test", "list": [1, 2]})


def _mk(xa=None, xb=None, labels=None, subjects=None, specs=None, classes=("c0", "c1", "c2")):
    d = _tiny()
    x = OrderedDict([("a", d.x["a"] if xa is None else xa), ("b", d.x["b"] if xb is None else xb)])
    return MultimodalDataset(x=x, specs=OrderedDict([("a", A), ("b", B)]) if specs is None else specs,
                             labels=d.labels if labels is None else labels,
                             subjects=d.subjects if subjects is None else subjects,
                             class_names=list(classes))


# ------------------------------------------------------------------------------------------------
# MultimodalDataset
class TestDatasetValidation:
    def test_valid(self):
        d = _tiny()
        assert len(d) == 12 and d.modalities == ["a", "b"] and d.num_classes == 3
        assert d.x["a"].dtype == np.float32 and d.labels.dtype == np.int64
        assert "tiny" in d.summary()

    def test_wrong_ndim(self):
        with pytest.raises(DataError, match=r"modality 'a' must be \[N, T, C\]"):
            _mk(xa=np.zeros((12, 8), np.float32))

    def test_mismatched_n(self):
        with pytest.raises(DataError, match=r"modality 'b' has 11 windows but labels has 12"):
            _mk(xb=np.zeros((11, 4, 2), np.float32))

    def test_subjects_shape(self):
        with pytest.raises(DataError, match="subjects"):
            _mk(subjects=np.zeros(5, np.int64))

    def test_channel_count(self):
        with pytest.raises(DataError, match=r"modality 'a' has 4 channels but its spec names 3"):
            _mk(xa=np.zeros((12, 8, 4), np.float32))

    def test_nan(self):
        xa = np.zeros((12, 8, 3), np.float32)
        xa[3, 2, 1] = np.nan
        with pytest.raises(DataError, match=r"modality 'a' has NaN/Inf values in 1 of 12"):
            _mk(xa=xa)

    def test_label_out_of_range(self):
        labels = np.zeros(12, np.int64)
        labels[0] = 3
        with pytest.raises(DataError, match=r"labels must be -1 \(unlabeled\) or in \[0, 3\)"):
            _mk(labels=labels)
        labels[0] = -2
        with pytest.raises(DataError, match="labels"):
            _mk(labels=labels)

    def test_label_dtype_and_ndim(self):
        with pytest.raises(DataError, match="labels must be integers"):
            _mk(labels=np.zeros(12, np.float32))
        with pytest.raises(DataError, match="labels must be 1-D"):
            _mk(labels=np.zeros((12, 1), np.int64))

    def test_spec_mismatch(self):
        with pytest.raises(DataError, match="do not match specs"):
            _mk(specs=OrderedDict([("a", A)]))


class TestSaveLoad:
    def test_round_trip(self, tmp_path):
        d = _tiny()
        d.x["a"][0, 0, 1] = 1e-30  # exact, not approximately
        npz, js = d.save(str(tmp_path / "sub" / "ds"))
        assert npz.endswith(".npz") and js.endswith(".json")
        for p in (npz, js, str(tmp_path / "sub" / "ds")):
            e = MultimodalDataset.load(p)
            assert e.modalities == d.modalities
            for m in d.modalities:
                np.testing.assert_array_equal(e.x[m], d.x[m])
                assert e.x[m].dtype == np.float32
                assert e.specs[m] == d.specs[m]
            np.testing.assert_array_equal(e.labels, d.labels)
            np.testing.assert_array_equal(e.subjects, d.subjects)
            assert e.class_names == d.class_names and e.name == "tiny"
            assert e.meta == {"note": "test", "list": [1, 2]}

    def test_missing_file(self, tmp_path):
        p = str(tmp_path / "nothing.npz")
        with pytest.raises(DataError, match="nothing.npz: file not found"):
            MultimodalDataset.load(p)

    def test_corrupt_npz(self, tmp_path):
        npz, _ = _tiny().save(str(tmp_path / "ds"))
        with open(npz, "wb") as f:
            f.write(b"this is not a zip file at all" * 10)
        with pytest.raises(DataError, match=r"ds\.npz: corrupt or unreadable"):
            MultimodalDataset.load(npz)

    def test_damaged_npz_member(self, tmp_path):
        """Flipped bytes inside a compressed member (zlib.error or bad CRC) -> DataError, never else."""
        npz, _ = make_synthetic(num_subjects=2, windows_per_subject=20).save(str(tmp_path / "ds"))
        good = open(npz, "rb").read()
        rng = np.random.RandomState(0)
        for _ in range(60):
            bad = bytearray(good)
            i = rng.randint(len(bad) // 10, len(bad) * 9 // 10)
            bad[i:i + 8] = bytes(b ^ 0xA5 for b in bad[i:i + 8])
            with open(npz, "wb") as f:
                f.write(bytes(bad))
            try:
                MultimodalDataset.load(npz)
            except DataError as e:
                assert "ds.npz" in str(e)

    def test_bad_json(self, tmp_path):
        _, js = _tiny().save(str(tmp_path / "ds"))
        with open(js, "w") as f:
            f.write("{not json")
        with pytest.raises(DataError, match=r"ds\.json: not valid JSON"):
            MultimodalDataset.load(js)
        with open(js, "w") as f:
            f.write('{"format": "something-else"}')
        with pytest.raises(DataError, match=r"ds\.json: not a cosmo-har dataset header"):
            MultimodalDataset.load(js)
        with open(js, "w") as f:
            f.write('{"format": "cosmo-har/dataset", "class_names": ["a"]}')
        with pytest.raises(DataError, match=r"ds\.json: missing field"):
            MultimodalDataset.load(js)


# ------------------------------------------------------------------------------------------------
# windows
class TestResample:
    def test_length(self):
        x = np.stack([np.arange(10.0), 2 * np.arange(10.0)], 1)
        y = resample(x, 0, 0, length=19)
        assert y.shape == (19, 2) and y.dtype == np.float32
        np.testing.assert_allclose(y[:, 0], np.arange(19) / 2.0, atol=1e-6)
        np.testing.assert_allclose(y[:, 1], np.arange(19), atol=1e-5)
        assert resample(x, 0, 0, length=1).shape == (1, 2)

    def test_rate(self):
        x = np.arange(100.0)[:, None]  # ramp at 100 Hz
        y = resample(x, 100.0, 50.0)
        assert y.shape == (50, 1)
        np.testing.assert_allclose(y[:, 0], 2 * np.arange(50), atol=1e-5)
        up = resample(x, 100.0, 200.0)
        assert up.shape == (199, 1)
        np.testing.assert_allclose(up[:, 0], np.arange(199) / 2.0, atol=1e-5)
        np.testing.assert_array_equal(resample(x, 50.0, 50.0), x.astype(np.float32))

    def test_errors(self):
        with pytest.raises(DataError, match=r"expected \[L, C\]"):
            resample(np.zeros(5), 10, 5)
        with pytest.raises(DataError, match="rates must be > 0"):
            resample(np.zeros((5, 1)), 0, 5)


def _rec(n=1000, change=525, subject=1, with_b=False):
    a = np.zeros((n, 3), np.float32)
    a[:, 0] = np.arange(n)
    labels = np.zeros(n, np.int64)
    labels[change:] = 1
    sig = OrderedDict([("a", a)])
    specs = OrderedDict([("a", A)])
    if with_b:
        b = np.zeros((n // 2, 2), np.float32)
        b[:, 0] = np.arange(n // 2)
        sig["b"], specs["b"] = b, B
    return Recording(subject=subject, signals=sig, specs=specs, labels=labels, source="rec")


class TestSlidingWindows:
    def test_count_and_values(self):
        # 1000 samples at 50 Hz, 2 s windows (100 samples), 50 % overlap: floor((1000-100)/50)+1 = 19
        rec = _rec(change=1000)  # one class throughout
        d = sliding_windows([rec], ["x", "y"], window_s=2.0, overlap=0.5)
        assert len(d) == 19 and d.x["a"].shape == (19, 100, 3)
        np.testing.assert_array_equal(d.x["a"][:, 0, 0], np.arange(19) * 50)
        assert (d.labels == 0).all() and (d.subjects == 1).all()
        assert len(sliding_windows([rec], ["x", "y"], window_s=2.0, overlap=0.0)) == 10
        assert len(sliding_windows([rec], ["x", "y"], window_s=2.0, overlap=0.75)) == 37

    def test_purity(self):
        rec = _rec(change=525)
        # windows start at 0, 50, ..., 900; pure ones: start <= 400 (9, class 0), start >= 550 (8, class 1)
        d = sliding_windows([rec], ["x", "y"], window_s=2.0, overlap=0.5)
        assert len(d) == 17
        assert (d.labels == 0).sum() == 9 and (d.labels == 1).sum() == 8
        starts = d.x["a"][:, 0, 0]
        assert not np.isin(starts, [450, 500]).any()
        keep = sliding_windows([rec], ["x", "y"], window_s=2.0, overlap=0.5, keep_unlabeled=True)
        assert len(keep) == 19 and (keep.labels == -1).sum() == 2
        np.testing.assert_array_equal(np.sort(keep.x["a"][keep.labels == -1, 0, 0]), [450, 500])
        loose = sliding_windows([rec], ["x", "y"], window_s=2.0, overlap=0.5, min_purity=0.7)
        assert len(loose) == 19
        lab = dict(zip(loose.x["a"][:, 0, 0].tolist(), loose.labels.tolist()))
        assert lab[450] == 0 and lab[500] == 1  # 75 % of [450, 550) is class 0; of [500, 600) class 1

    def test_unlabeled_samples_dropped(self):
        rec = _rec(change=1000)
        rec.labels[:300] = -1
        d = sliding_windows([rec], ["x", "y"], window_s=2.0, overlap=0.5)
        assert d.x["a"][:, 0, 0].min() >= 300

    def test_multi_rate_and_resample(self):
        rec = _rec(change=1000, with_b=True)
        d = sliding_windows([rec], ["x", "y"], window_s=2.0, overlap=0.5)
        assert d.x["a"].shape[1:] == (100, 3) and d.x["b"].shape[1:] == (50, 2)
        np.testing.assert_array_equal(d.x["b"][:, 0, 0], np.arange(len(d)) * 25)
        r = sliding_windows([rec], ["x", "y"], window_s=2.0, overlap=0.5, rate_hz=25.0)
        assert r.x["a"].shape[1:] == (50, 3) and r.specs["a"].rate_hz == 25.0

    def test_errors(self):
        with pytest.raises(DataError, match="overlap"):
            sliding_windows([_rec()], ["x", "y"], window_s=2.0, overlap=1.0)
        with pytest.raises(DataError, match="no window"):
            sliding_windows([_rec(n=50)], ["x", "y"], window_s=2.0)
        bad = _rec()
        bad.signals["a"][5, 1] = np.nan
        with pytest.raises(DataError, match="NaN"):
            sliding_windows([bad], ["x", "y"], window_s=2.0)


# ------------------------------------------------------------------------------------------------
# splits
def _subjects_ds(num_subjects=10, per=6):
    return make_synthetic(num_subjects=num_subjects, windows_per_subject=per, num_classes=3,
                          modalities=(("a", 16, 2),), informativeness=1.0, seed=3)


class TestSplits:
    def test_subject_split_disjoint(self):
        d = _subjects_ds()
        s = subject_split(d, val_fraction=0.2, test_fraction=0.3, seed=1)
        tr, va, te = set(s.train_subjects), set(s.val_subjects), set(s.test_subjects)
        assert not (tr & va) and not (tr & te) and not (va & te)
        assert tr | va | te == set(range(1, 11))
        assert len(te) == 3 and len(va) == 2
        assert set(s.train.subjects.tolist()) == tr and set(s.test.subjects.tolist()) == te
        assert len(s.train) + len(s.val) + len(s.test) == len(d)

    def test_subject_split_deterministic(self):
        d = _subjects_ds()
        a, b = subject_split(d, seed=7), subject_split(d, seed=7)
        assert (a.train_subjects, a.val_subjects, a.test_subjects) == \
            (b.train_subjects, b.val_subjects, b.test_subjects)
        others = {tuple(subject_split(d, seed=s).test_subjects) for s in range(8)}
        assert len(others) > 1

    def test_subject_split_explicit(self):
        d = _subjects_ds()
        s = subject_split(d, test_subjects=[1, 2], val_subjects=[3])
        assert s.test_subjects == [1, 2] and s.val_subjects == [3]
        for seed in range(20):  # a given val list is never drawn again as test
            s = subject_split(d, val_subjects=[4], seed=seed)
            assert 4 not in s.test_subjects and s.val_subjects == [4]
        with pytest.raises(DataError, match="unknown subjects"):
            subject_split(d, test_subjects=[99])
        with pytest.raises(DataError, match="both test and val"):
            subject_split(d, test_subjects=[1], val_subjects=[1])
        with pytest.raises(DataError, match="at least 3 subjects"):
            subject_split(_subjects_ds(num_subjects=2))

    def test_normalizer_train_only(self):
        d = _subjects_ds()
        s = subject_split(d, seed=0)
        test = s.test.subset(np.arange(len(s.test)))
        test.x["a"] = test.x["a"] * 3.0 + 5.0
        norm = Normalizer.fit(s.train)
        tr = norm.apply(s.train).x["a"].reshape(-1, 2)
        np.testing.assert_allclose(tr.mean(0), 0.0, atol=1e-4)
        np.testing.assert_allclose(tr.std(0), 1.0, atol=1e-4)
        te = norm.apply(test).x["a"]
        expect = (test.x["a"] - s.train.x["a"].reshape(-1, 2).mean(0)) / s.train.x["a"].reshape(-1, 2).std(0)
        np.testing.assert_allclose(te, expect, rtol=1e-4, atol=1e-4)
        assert abs(te.mean()) > 1.0  # test data are not re-centred on their own statistics
        again = Normalizer.from_json(norm.to_json())
        np.testing.assert_allclose(again.apply(test).x["a"], te)
        with pytest.raises(DataError, match="no statistics for modality 'b'"):
            norm.apply(_tiny().select_modalities(["b"]))
        with pytest.raises(DataError, match="modality 'a' has 3 channels, statistics have 2"):
            norm.apply(_tiny().select_modalities(["a"]))

    def test_sample_labels_per_class(self):
        labels = np.repeat(np.arange(4), 50)
        idx = sample_labels(labels, 4, per_class=3, seed=0)
        assert len(idx) == 12 and np.bincount(labels[idx], minlength=4).tolist() == [3, 3, 3, 3]
        np.testing.assert_array_equal(idx, sample_labels(labels, 4, per_class=3, seed=0))
        assert not np.array_equal(idx, sample_labels(labels, 4, per_class=3, seed=1))
        assert (np.diff(idx) > 0).all()

    def test_sample_labels_rate(self):
        labels = np.concatenate([np.repeat(np.arange(4), 50), np.full(30, -1)])
        idx = sample_labels(labels, 4, rate=0.1, seed=0)
        counts = np.bincount(labels[idx], minlength=4)
        assert counts.sum() == 20 and counts.max() - counts.min() <= 1 and (labels[idx] >= 0).all()
        assert len(sample_labels(labels, 4, rate=0.001, seed=0)) == 4  # at least one per class
        odd = sample_labels(labels, 4, rate=0.11, seed=2)  # 22 over 4 classes
        assert sorted(np.bincount(labels[odd], minlength=4).tolist()) == [5, 5, 6, 6]
        np.testing.assert_array_equal(sample_labels(labels, 4, rate=1.0), np.flatnonzero(labels >= 0))

    def test_sample_labels_errors(self):
        labels = np.repeat(np.arange(3), 10)
        with pytest.raises(DataError, match=r"classes \[3\] have no labeled windows"):
            sample_labels(labels, 4, per_class=2)
        with pytest.raises(DataError, match="exactly one"):
            sample_labels(labels, 3)
        with pytest.raises(DataError, match="exactly one"):
            sample_labels(labels, 3, rate=0.1, per_class=1)
        with pytest.raises(DataError, match="rate"):
            sample_labels(labels, 3, rate=1.5)

    def test_labeled_unlabeled(self):
        d = _tiny(n=30)
        idx = sample_labels(d.labels, 3, per_class=2, seed=0)
        lab, unl = labeled_unlabeled(d, idx)
        ids_l = set(lab.x["a"][:, 0, 0].astype(int).tolist())
        ids_u = set(unl.x["a"][:, 0, 0].astype(int).tolist())
        assert not (ids_l & ids_u) and ids_l | ids_u == set(range(30))
        assert ids_l == set(idx.tolist()) and len(lab) == 6 and len(unl) == 24
        assert (unl.labels == -1).all() and (lab.labels >= 0).all()
        np.testing.assert_array_equal(lab.labels, d.labels[idx])


# ------------------------------------------------------------------------------------------------
# UCI HAPT
@pytest.fixture(scope="module")
def hapt():
    return load_hapt()


class _Evil(object):
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class TestHapt:
    def test_packaged(self, hapt):
        assert hapt.name == "hapt" and hapt.num_classes == 6
        assert len(np.unique(hapt.subjects)) == 30 and set(hapt.subjects.tolist()) == set(range(1, 31))
        assert len(hapt) > 9000
        for m in ("acc", "gyro"):
            assert hapt.x[m].shape == (len(hapt), 128, 3)
            assert hapt.specs[m].rate_hz == 50.0
        assert set(np.unique(hapt.labels).tolist()) == set(range(6))
        assert abs(float(np.median(np.linalg.norm(hapt.x["acc"], axis=2))) - 1.0) < 0.1  # gravity in g

    def test_restricted_unpickler_refuses_os_system(self, tmp_path):
        marker = tmp_path / "pwned"
        path = str(tmp_path / "evil.pkl.gz")
        with gzip.open(path, "wb") as f:
            f.write(pickle.dumps({1: _Evil("touch {}".format(marker))}))
        with pytest.raises(DataError, match="evil.pkl.gz: corrupt or disallowed pickle"):
            read_hapt_pickle(path)
        assert not marker.exists()

    def test_corrupt_gz(self, tmp_path):
        path = str(tmp_path / "bad.pkl.gz")
        with open(path, "wb") as f:
            f.write(b"\x00garbage, not gzip" * 20)
        with pytest.raises(DataError, match="bad.pkl.gz"):
            read_hapt_pickle(path)
        with pytest.raises(DataError, match="file not found"):
            read_hapt_pickle(str(tmp_path / "absent.pkl.gz"))

    def test_uci_layout(self, tmp_path):
        raw = tmp_path / "HAPT" / "RawData"
        raw.mkdir(parents=True)
        for exp, user in ((1, 1), (2, 2)):
            acc = np.zeros((300, 3))
            acc[:, 0] = np.arange(300)
            acc[:, 2] = user
            np.savetxt(str(raw / "acc_exp{:02d}_user{:02d}.txt".format(exp, user)), acc)
            np.savetxt(str(raw / "gyro_exp{:02d}_user{:02d}.txt".format(exp, user)), -acc)
        # exp 1 user 1: walking (1) on samples 1..200; exp 2 user 2: sitting (4) on 51..300 (1-based)
        (raw / "labels.txt").write_text("1 1 1 1 200\n2 2 4 51 300\n")
        recs = read_hapt_uci(str(tmp_path / "HAPT"))
        assert [r.subject for r in recs] == [1, 2]
        assert (recs[0].labels[:200] == 0).all() and (recs[0].labels[200:] == -1).all()
        assert (recs[1].labels[:50] == -1).all() and (recs[1].labels[50:] == 3).all()
        d = load_hapt(str(tmp_path / "HAPT"))
        # 128-sample windows every 64 samples: starts 0, 64, 128 per file; pure ones:
        # exp 1 -> 0, 64 (walking); exp 2 -> 64, 128 (sitting)
        assert d.x["acc"].shape == (4, 128, 3) and d.x["gyro"].shape == (4, 128, 3)
        assert d.labels.tolist() == [0, 0, 3, 3] and d.subjects.tolist() == [1, 1, 2, 2]
        assert d.x["acc"][:, 0, 0].tolist() == [0, 64, 64, 128]
        np.testing.assert_array_equal(d.x["gyro"], -d.x["acc"])
        k = load_hapt(str(tmp_path / "HAPT"), keep_unlabeled=True)
        assert len(k) == 6 and (k.labels == -1).sum() == 2

    def test_uci_errors(self, tmp_path):
        with pytest.raises(DataError, match="labels.txt: file not found"):
            read_hapt_uci(str(tmp_path))
        (tmp_path / "labels.txt").write_text("1 1 1 1\n")
        with pytest.raises(DataError, match="labels.txt"):
            read_hapt_uci(str(tmp_path))


# ------------------------------------------------------------------------------------------------
# BasicMotions
def _have_basicmotions():
    return importlib.util.find_spec("sktime") is not None or importlib.util.find_spec("aeon") is not None


_TS_HEADER = ("# comment\n@problemName Tiny\n@timeStamps false\n@univariate false\n@dimensions 6\n"
              "@equalLength true\n@seriesLength 100\n@classLabel true Standing Running Walking Badminton\n@data\n")


def _ts_line(label, value=0.0, dims=6, length=100):
    return ":".join(",".join(str(value + d) for _ in range(length)) for d in range(dims)) + ":" + label + "\n"


class TestBasicMotions:
    @pytest.mark.skipif(not _have_basicmotions(), reason="sktime/aeon (BasicMotions .ts files) not installed")
    def test_packaged(self):
        d = load_basicmotions()
        assert len(d) == 80 and d.class_names == ["standing", "running", "walking", "badminton"]
        for m in ("acc", "gyro"):
            assert d.x[m].shape == (80, 100, 3) and d.specs[m].rate_hz == 10.0
        assert np.bincount(d.labels).tolist() == [20, 20, 20, 20]
        assert d.meta["original_split"] == ["train"] * 40 + ["test"] * 40
        assert d.subjects.tolist() == list(range(80))
        folder = os.path.dirname(d.meta["source"][0])
        again = load_basicmotions(folder)
        np.testing.assert_array_equal(again.x["gyro"], d.x["gyro"])

    def _write(self, folder, train_body, test_body=None):
        folder.mkdir(exist_ok=True)
        (folder / "BasicMotions_TRAIN.ts").write_text(_TS_HEADER + train_body)
        (folder / "BasicMotions_TEST.ts").write_text(
            _TS_HEADER + (test_body if test_body is not None else _ts_line("Walking")))

    def test_parser(self, tmp_path):
        self._write(tmp_path / "bm", _ts_line("Running", 1.0) + "\n" + _ts_line("Badminton", 2.0))
        ts = read_ts(str(tmp_path / "bm" / "BasicMotions_TRAIN.ts"))
        assert ts.x.shape == (2, 6, 100) and ts.labels == ["Running", "Badminton"] and ts.lines == [10, 12]
        assert ts.header["dimensions"] == "6"
        np.testing.assert_array_equal(ts.x[1, :, 0], 2.0 + np.arange(6))
        d = load_basicmotions(str(tmp_path / "bm"))
        assert d.labels.tolist() == [1, 3, 2] and d.meta["original_split"] == ["train", "train", "test"]
        np.testing.assert_array_equal(d.x["gyro"][0, 5], [4.0, 5.0, 6.0])
        self._write(tmp_path / "bm", _ts_line("Running", length=3))
        with pytest.raises(DataError, match="expected series of 100 steps"):
            load_basicmotions(str(tmp_path / "bm"))

    def test_errors_name_file_and_line(self, tmp_path):
        folder = tmp_path / "bm"
        self._write(folder, _ts_line("Running") + _ts_line("Running", dims=5))
        with pytest.raises(DataError, match=r"BasicMotions_TRAIN\.ts, line 11: 5 dimensions, header says @dimensions 6"):
            load_basicmotions(str(folder))
        self._write(folder, _ts_line("Running") + _ts_line("Swimming"))
        with pytest.raises(DataError, match=r"BasicMotions_TRAIN\.ts, line 11: unknown class label 'Swimming'"):
            load_basicmotions(str(folder))
        self._write(folder, _ts_line("Running"), _ts_line("Running").replace("0.0,", "abc,", 1))
        with pytest.raises(DataError, match=r"BasicMotions_TEST\.ts, line 10: dimension 0: non-numeric"):
            load_basicmotions(str(folder))
        self._write(folder, _ts_line("Running") + _ts_line("Running", length=4))
        with pytest.raises(DataError, match=r"line 11: dimension 0 has 4 values, expected 100"):
            load_basicmotions(str(folder))
        self._write(folder, "garbage line without colon\n")
        with pytest.raises(DataError, match=r"line 10: expected dimensions separated by ':'"):
            load_basicmotions(str(folder))
        os.remove(str(folder / "BasicMotions_TEST.ts"))
        with pytest.raises(DataError, match=r"BasicMotions_TEST\.ts: file not found"):
            load_basicmotions(str(folder))
        with pytest.raises(DataError, match="not a folder"):
            load_basicmotions(str(tmp_path / "nowhere"))


# ------------------------------------------------------------------------------------------------
# USC-HAD
def _write_uschad(root, files, length=450):
    """files: [(subject, activity, trial)]; sensor_readings[i, c] = 1000 * activity + i + c / 10."""
    for s, a, t in files:
        d = root / "Subject{}".format(s)
        d.mkdir(parents=True, exist_ok=True)
        x = 1000.0 * a + np.arange(length)[:, None] + np.arange(6)[None, :] / 10.0
        scipy.io.savemat(str(d / "a{}t{}.mat".format(a, t)),
                         {"sensor_readings": x, "activity_number": str(a), "subject": str(s), "trial": str(t)})


class TestUscHad:
    def test_load(self, tmp_path):
        _write_uschad(tmp_path, [(1, 1, 1), (1, 12, 2), (14, 5, 1)])
        (tmp_path / "Subject1" / "readme.txt").write_text("ignored")
        recs = read_uschad(str(tmp_path))
        assert [(r.subject, r.label) for r in recs] == [(1, 0), (1, 11), (14, 4)]
        assert recs[0].signals["acc"].shape == (450, 3) and recs[0].specs["gyro"].units == "deg/s"
        d = load_uschad(str(tmp_path))
        # 200-sample windows every 100 samples: floor((450 - 200) / 100) + 1 = 3 per file
        assert d.x["acc"].shape == (9, 200, 3) and d.x["gyro"].shape == (9, 200, 3)
        assert d.labels.tolist() == [0] * 3 + [11] * 3 + [4] * 3
        assert d.subjects.tolist() == [1] * 6 + [14] * 3
        assert d.num_classes == 12 and d.class_names[11] == "elevator_down"
        np.testing.assert_allclose(d.x["acc"][1, :, 1], 1000 + 100 + np.arange(200) + 0.1, rtol=1e-6)
        np.testing.assert_allclose(d.x["gyro"][0, 0], [1000.3, 1000.4, 1000.5], rtol=1e-6)
        assert len(load_uschad(str(tmp_path), window_s=1.0, overlap=0.0)) == 12

    def test_errors(self, tmp_path):
        with pytest.raises(DataError, match="no USC-HAD files"):
            read_uschad(str(tmp_path))
        _write_uschad(tmp_path, [(2, 3, 1)])
        bad = tmp_path / "Subject2" / "a4t1.mat"
        bad.write_bytes(b"\x00\x01garbage not a mat file" * 20)
        with pytest.raises(DataError, match=r"Subject2/a4t1\.mat: corrupt or unreadable"):
            read_uschad(str(tmp_path))
        scipy.io.savemat(str(bad), {"other": np.zeros((10, 6))})
        with pytest.raises(DataError, match=r"a4t1\.mat: missing variable 'sensor_readings'"):
            read_uschad(str(tmp_path))
        scipy.io.savemat(str(bad), {"sensor_readings": np.zeros((10, 5))})
        with pytest.raises(DataError, match=r"a4t1\.mat: 'sensor_readings' must be \[L, 6\]"):
            read_uschad(str(tmp_path))
        x = np.zeros((10, 6))
        x[3, 3] = np.nan
        scipy.io.savemat(str(bad), {"sensor_readings": x})
        with pytest.raises(DataError, match=r"a4t1\.mat: variable 'sensor_readings' has 1 NaN"):
            read_uschad(str(tmp_path))
        os.remove(str(bad))
        _write_uschad(tmp_path, [(2, 13, 1)])
        with pytest.raises(DataError, match=r"a13t1\.mat: activity number 13 out of range"):
            read_uschad(str(tmp_path))


# ------------------------------------------------------------------------------------------------
# UTD-MHAD
def _write_utd(root, trials, skeleton=True, lengths=(180, 60)):
    """IMU d_iner[i, c] = a*100 + s*10 + c (+ a ramp); skeleton d_skel[j, c, f] = j*10 + c (constant)."""
    (root / "Inertial").mkdir(parents=True, exist_ok=True)
    (root / "Skeleton").mkdir(parents=True, exist_ok=True)
    for a, s, t in trials:
        n, f = lengths
        iner = a * 100.0 + s * 10.0 + np.arange(6)[None, :] + np.linspace(0.0, 1.0, n)[:, None]
        scipy.io.savemat(str(root / "Inertial" / "a{}_s{}_t{}_inertial.mat".format(a, s, t)), {"d_iner": iner})
        if skeleton:
            skel = np.broadcast_to((np.arange(20)[:, None] * 10.0 + np.arange(3)[None, :])[:, :, None],
                                   (20, 3, f)).copy()
            scipy.io.savemat(str(root / "Skeleton" / "a{}_s{}_t{}_skeleton.mat".format(a, s, t)),
                             {"d_skel": skel})


class TestUtdMhad:
    def test_load(self, tmp_path):
        _write_utd(tmp_path, [(1, 1, 1), (27, 2, 1), (5, 1, 2)])
        d = load_utdmhad(str(tmp_path))
        assert d.modalities == ["imu", "skeleton"] and d.num_classes == 27
        assert d.x["imu"].shape == (3, 120, 6) and d.x["skeleton"].shape == (3, 40, 60)
        # sorted by subject, action, trial
        assert d.meta["trials"] == ["a1_s1_t1", "a5_s1_t2", "a27_s2_t1"]
        assert d.labels.tolist() == [0, 4, 26] and d.subjects.tolist() == [1, 1, 2]
        assert d.class_names[26] == "squat_two_arms_stretch_out" and d.class_names[0] == "right_arm_swipe_left"
        sk = d.specs["skeleton"]
        assert sk.layout == "skeleton" and sk.joints == 20 and sk.coords == 3
        assert sk.channels[:4] == ("j01_x", "j01_y", "j01_z", "j02_x") and sk.channels[-1] == "j20_z"
        assert d.specs["imu"].rate_hz == 50.0 and sk.rate_hz == 30.0
        expect = (np.arange(20)[:, None] * 10.0 + np.arange(3)[None, :]).reshape(60)  # joint-major
        np.testing.assert_allclose(d.x["skeleton"][2], np.broadcast_to(expect, (40, 60)))
        np.testing.assert_allclose(d.x["imu"][0, 0], 110 + np.arange(6), rtol=1e-6)
        np.testing.assert_allclose(d.x["imu"][0, -1], 111 + np.arange(6), rtol=1e-6)
        assert d.meta["duration_s"]["imu"] == [3.6, 3.6, 3.6] and d.meta["duration_s"]["skeleton"][0] == 2.0
        small = load_utdmhad(str(tmp_path), imu_steps=30, skeleton_frames=10)
        assert small.x["imu"].shape == (3, 30, 6) and small.x["skeleton"].shape == (3, 10, 60)

    def test_flat_folder_and_imu_only(self, tmp_path):
        _write_utd(tmp_path, [(3, 4, 1), (3, 4, 2)], skeleton=False)
        for p in (tmp_path / "Inertial").iterdir():
            os.rename(str(p), str(tmp_path / p.name))  # files directly in root
        with pytest.raises(DataError, match=r"a3_s4_t1_inertial\.mat: no matching a3_s4_t1_skeleton\.mat"):
            load_utdmhad(str(tmp_path))
        d = load_utdmhad(str(tmp_path), modalities=("imu",))
        assert d.modalities == ["imu"] and d.x["imu"].shape == (2, 120, 6) and d.labels.tolist() == [2, 2]
        with pytest.raises(DataError, match="modalities"):
            load_utdmhad(str(tmp_path), modalities=("depth",))

    def test_errors(self, tmp_path):
        with pytest.raises(DataError, match="no UTD-MHAD files"):
            load_utdmhad(str(tmp_path))
        _write_utd(tmp_path, [(2, 1, 1)])
        bad = tmp_path / "Skeleton" / "a2_s1_t1_skeleton.mat"
        bad.write_bytes(b"MATLAB garbage" * 30)
        with pytest.raises(DataError, match=r"a2_s1_t1_skeleton\.mat: corrupt or unreadable"):
            load_utdmhad(str(tmp_path))
        scipy.io.savemat(str(bad), {"skeleton": np.zeros((20, 3, 5))})
        with pytest.raises(DataError, match=r"a2_s1_t1_skeleton\.mat: missing variable 'd_skel'"):
            load_utdmhad(str(tmp_path))
        scipy.io.savemat(str(bad), {"d_skel": np.zeros((25, 3, 5))})
        with pytest.raises(DataError, match=r"a2_s1_t1_skeleton\.mat: 'd_skel' must be \[20, 3, frames\]"):
            load_utdmhad(str(tmp_path))
        inertial = tmp_path / "Inertial" / "a2_s1_t1_inertial.mat"
        scipy.io.savemat(str(inertial), {"d_iner": np.zeros((10, 3))})
        with pytest.raises(DataError, match=r"a2_s1_t1_inertial\.mat: 'd_iner' must be \[L, 6\]"):
            load_utdmhad(str(tmp_path), modalities=("imu",))
        scipy.io.savemat(str(tmp_path / "a2_s1_t1_inertial.mat"), {"d_iner": np.zeros((10, 6))})
        with pytest.raises(DataError, match="duplicate"):
            load_utdmhad(str(tmp_path), modalities=("imu",))


# ------------------------------------------------------------------------------------------------
# synthetic
def _nearest_centroid_acc(ds, m):
    """Train on the first half of the subjects, test on the rest; features = per-channel window means."""
    f = ds.x[m].mean(axis=1)
    tr = ds.subjects <= np.median(np.unique(ds.subjects))
    cen = np.stack([f[tr & (ds.labels == k)].mean(0) for k in range(ds.num_classes)])
    pred = np.argmin(((f[~tr][:, None, :] - cen[None]) ** 2).sum(-1), axis=1)
    return float((pred == ds.labels[~tr]).mean())


class TestSynthetic:
    def test_shapes_and_labels(self):
        d = make_synthetic(num_subjects=5, windows_per_subject=20, num_classes=4,
                           modalities=(("imu", 50, 6), ("skel", 20, 60)), informativeness=(1.0, 0.3))
        assert d.x["imu"].shape == (100, 50, 6) and d.x["skel"].shape == (100, 20, 60)
        assert d.subjects.tolist() == sorted(d.subjects.tolist()) and set(d.subjects.tolist()) == set(range(1, 6))
        for s in range(1, 6):
            assert np.bincount(d.labels[d.subjects == s], minlength=4).tolist() == [5, 5, 5, 5]
        assert d.class_names == ["class0", "class1", "class2", "class3"]
        assert d.meta["informativeness"] == {"imu": 1.0, "skel": 0.3}
        assert d.specs["imu"].channels[0] == "imu_0" and d.specs["imu"].rate_hz == 50.0

    def test_deterministic(self):
        a, b = make_synthetic(seed=5), make_synthetic(seed=5)
        c = make_synthetic(seed=6)
        for m in a.modalities:
            np.testing.assert_array_equal(a.x[m], b.x[m])
        np.testing.assert_array_equal(a.labels, b.labels)
        assert not np.array_equal(a.x["a"], c.x["a"])

    def test_informativeness(self):
        for seed in range(3):
            d = make_synthetic(num_subjects=8, windows_per_subject=80, num_classes=4, seed=seed,
                               informativeness=(1.0, 0.0))
            assert _nearest_centroid_acc(d, "a") > 0.9  # chance = 0.25
            assert _nearest_centroid_acc(d, "b") < 0.45

    def test_fast_and_errors(self):
        t0 = time.perf_counter()
        d = make_synthetic(num_subjects=20, windows_per_subject=200)
        assert len(d) == 4000 and time.perf_counter() - t0 < 2.0
        with pytest.raises(DataError, match="informativeness has 1 values for 2 modalities"):
            make_synthetic(informativeness=(1.0,))
        with pytest.raises(DataError, match=r"informativeness must be in \[0, 1\]"):
            make_synthetic(informativeness=(1.5, 0.0))
        with pytest.raises(DataError, match="distinct"):
            make_synthetic(modalities=(("a", 8, 1), ("a", 8, 1)), informativeness=0.5)


# ------------------------------------------------------------------------------------------------
# package API
class TestPackage:
    def test_all_exports(self):
        for name in data_pkg.__all__:
            assert hasattr(data_pkg, name), name
        assert set(LOADERS) == {"hapt", "basicmotions", "synthetic", "uschad", "utdmhad", "seglearn_watch",
                                "crowdsignals"}

    def test_load_named(self, tmp_path):
        d = load_named("synthetic", num_subjects=3, windows_per_subject=8, seed=1)
        assert len(d) == 24 and d.name == "synthetic"
        npz, js = d.save(str(tmp_path / "saved"))
        for p in (npz, js):
            np.testing.assert_array_equal(load_named(p).x["a"], d.x["a"])
        _write_uschad(tmp_path / "usc", [(1, 2, 1)])
        assert load_named("USC-HAD", root=str(tmp_path / "usc")).labels.tolist() == [1, 1, 1]
        _write_utd(tmp_path / "utd", [(4, 2, 1)])
        assert load_named("utd_mhad", root=str(tmp_path / "utd")).labels.tolist() == [3]
        with pytest.raises(DataError, match="basicmotions, crowdsignals, hapt, seglearn_watch, synthetic, uschad, "
                                            "utdmhad"):
            load_named("mnist")
        with pytest.raises(ConfigError, match="unknown arguments"):
            load_named("synthetic", num_subject=3)
        with pytest.raises(DataError, match="missing.npz: file not found"):
            load_named(str(tmp_path / "missing.npz"))
