"""Smoke test of benchmarks/pooling.py on synthetic windows: both poolings run the real pretrain, the
outputs agree exactly, and the report is written."""
import json

from tests.bench import load_benchmark


def test_pooling_benchmark_small(tmp_path):
    bench = load_benchmark("pooling")
    assert bench.main(["--out", str(tmp_path), "--dataset", "synthetic", "--windows", "64", "--epochs", "2",
                       "--repeats", "1", "--batch", "16", "--threads", "1"]) == 0
    r = json.loads((tmp_path / "pooling.json").read_text())
    assert r["max_abs_diff"] == 0.0 and r["speedup"] > 0 and r["encoder_speedup"] > 0
    assert all(len(r["summary"][v]["epochs_s"]) == 1 for v in ("MaxPool1d", "MaxPool2"))
    assert "MaxPool1d / MaxPool2" in (tmp_path / "pooling.md").read_text() and (tmp_path / "pooling.png").exists()
