"""The benchmarks package, for the benchmark tests."""
import importlib


def load_benchmark(name):
    """``benchmarks.<name>`` (imported as a module of the package, the way ``python -m`` runs it)."""
    return importlib.import_module("benchmarks." + name)


def study_on_synthetic(monkeypatch, name, windows_per_subject):
    """``benchmarks.<name>`` (a study that writes a plot: skipped without matplotlib) with its
    ``prepare_dataset`` replaced by ``synthetic_hapt_like(windows_per_subject)``."""
    import pytest
    pytest.importorskip("matplotlib")
    mod = load_benchmark(name)
    monkeypatch.setattr(mod, "prepare_dataset", synthetic_hapt_like(windows_per_subject))
    return mod


def synthetic_hapt_like(windows_per_subject):
    """A ``prepare_dataset`` stand-in for the benchmark tests: 6 synthetic subjects with acc + gyro
    (3 classes), split by subject and normalized like ``benchmarks.accuracy.prepare_dataset``."""
    from shared.data.splits import Normalizer, subject_split
    from shared.data.synthetic import make_synthetic

    def prepare(name, seed=0):
        ds = make_synthetic(num_subjects=6, windows_per_subject=windows_per_subject, num_classes=3,
                            modalities=(("acc", 32, 3), ("gyro", 32, 3)), seed=0)
        split = subject_split(ds, val_fraction=0.2, test_fraction=0.2, seed=seed)
        norm = Normalizer.fit(split.train)
        return norm.apply(split.train), norm.apply(split.val), norm.apply(split.test), "synthetic subject split"
    return prepare
