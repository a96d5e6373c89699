"""Smoke test of benchmarks/accuracy.py on a tiny synthetic data set (1 epoch everywhere): every method
runs, the outputs are written, and a second call resumes from the cache without retraining."""
import json
import os
from collections import OrderedDict

import pytest

from tests.bench import load_benchmark, synthetic_hapt_like


@pytest.fixture()
def bench(monkeypatch):
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    mod = load_benchmark("accuracy")
    monkeypatch.setattr(mod, "SETTINGS", OrderedDict([("synth", [("10%", 0.1, None), ("100%", 1.0, None)])]))
    monkeypatch.setattr(mod, "TITLES", {"synth": "Synthetic (test)"})
    monkeypatch.setattr(mod, "prepare_dataset", synthetic_hapt_like(24))
    return mod


def test_accuracy_benchmark_smoke_and_resume(bench, tmp_path, monkeypatch):
    out = str(tmp_path / "acc")
    argv = ["--out", out, "--datasets", "synth", "--seeds", "0", "--s1-epochs", "1", "--s2-epochs", "1",
            "--ratio-dataset", "synth", "--ratio-setting", "10%", "--ratios", "1", "all", "--threads", "1"]
    assert bench.main(argv) == 0
    for f in ("results.json", "report.md", "accuracy_vs_labels.png", "unlabeled_ratio.png"):
        assert os.path.isfile(os.path.join(out, f)), f
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    assert not res["failures"]
    table = res["tables"]["synth"]
    assert table["methods"] == ["Cosmo-HAR", "Cosmo (paper)", "SingleModal (acc)", "SingleModal (gyro)",
                                "DeepSense", "AttnSense", "CMC", "CPC", "CPC + pseudo-labels",
                                "Cosmo-HAR, fusion only"]
    for row in table["rows"]:
        for m in table["methods"]:
            assert len(row[m]["accuracy"]) == 1 and 0.0 <= row[m]["accuracy"][0] <= 1.0
    assert [r["ratio"] for r in res["ratio_table"]] == ["1", "all"]
    # multimodal methods are scored with each sensor off too; Cosmo-HAR's stage 2 learned from the pool
    ours = res["runs"]["synth|10%|Cosmo-HAR|0"]
    assert set(ours["test"]["without"]) == {"acc", "gyro"}
    assert "without" not in res["runs"]["synth|10%|SingleModal (acc)|0"]["test"]
    with open(os.path.join(out, "report.md")) as f:
        report = f.read()
    assert "10%: test accuracy (%) with one sensor switched off" in report and "Cosmo-HAR: acc off" in report
    assert "Stage-1 choice, validation accuracy" in report  # the stage-1 candidate is judged on validation
    # the 100 % setting labels every training window; the other settings' labels are held out of the pool
    pool = res["runs"]["pretrain|synth|cosmo|0"]["windows"]
    assert 0 < pool < table["rows"][1]["Cosmo-HAR"]["labeled"]
    assert res["runs"]["pretrain|synth|cosmo_paper|0"]["windows"] == pool
    # resume: cached runs are read back, not retrained
    cached = os.path.join(out, "synth", "seed0", "s2_10pct_Cosmo-HAR.json")
    mtime = os.path.getmtime(cached)
    assert bench.main(argv) == 0
    assert os.path.getmtime(cached) == mtime
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["tables"] == res["tables"]
    # a cached stage 1 made with another config is an error, not silently reused
    monkeypatch.setitem(bench.STAGE1, "cosmo", dict(bench.STAGE1["cosmo"], predictive=0.0))
    with pytest.raises(SystemExit, match="stage1: the cached stage 1 was made with other predictive"):
        bench.main(argv)


def test_accuracy_benchmark_runs_a_subset_of_methods_and_reports_the_cache(bench, tmp_path):
    out = str(tmp_path / "acc")
    base = ["--out", out, "--datasets", "synth", "--seeds", "0", "--s1-epochs", "1", "--s2-epochs", "1",
            "--ratio-dataset", "none", "--threads", "1"]
    assert bench.main(base + ["--methods", "Cosmo (paper)", "AttnSense", "--settings", "10%"]) == 0
    seed = os.path.join(out, "synth", "seed0")
    assert sorted(f for f in os.listdir(seed) if f.startswith("s2_")) == ["s2_10pct_AttnSense.json",
                                                                          "s2_10pct_Cosmo_paper.json"]
    assert not os.path.exists(os.path.join(seed, "stage1")) and not os.path.exists(os.path.join(seed, "cmc"))
    assert bench.main(base + ["--methods", "AttnSense", "--settings", "100%"]) == 0
    with pytest.raises(SystemExit, match="--methods: unknown \\['Cosmo'\\]"):
        bench.main(base + ["--methods", "Cosmo"])
    # the report of everything cached, without training anything more
    before = sorted(os.listdir(seed))
    assert bench.main(base + ["--report-only"]) == 0
    assert sorted(os.listdir(seed)) == before
    with open(os.path.join(out, "results.json")) as f:
        table = json.load(f)["tables"]["synth"]
    assert table["methods"] == ["Cosmo (paper)", "AttnSense"]
    assert [len(r["Cosmo (paper)"]["accuracy"]) for r in table["rows"]] == [1, 0]
    assert [len(r["AttnSense"]["accuracy"]) for r in table["rows"]] == [1, 1]


def test_sensor_off_lines_pair_each_cosmo_with_the_singlemodal_of_the_sensor_left(bench):
    def run(acc, without=None):
        t = {"accuracy": acc}
        if without:
            t["without"] = without
        return {"test": t}
    runs = {}
    for s, (off_gyro, off_acc) in enumerate(((0.80, 0.50), (0.84, 0.56))):
        runs["d|1%|Cosmo-HAR|{}".format(s)] = run(0.9, {"acc": off_acc, "gyro": off_gyro})
        runs["d|1%|SingleModal (acc)|{}".format(s)] = run(0.82 + 0.01 * s)
        runs["d|1%|SingleModal (gyro)|{}".format(s)] = run(0.55)
    lines = bench._sensor_off_lines("d", [("1%", 0.01, None)], ["Cosmo-HAR", "SingleModal (acc)"], runs, [0, 1],
                                    ["acc", "gyro"])
    text = "\n".join(lines)
    # gyro off leaves the accelerometer: (0.80 - 0.82 + 0.84 - 0.83) / 2 = -0.5 points
    assert "Cosmo-HAR, gyro off − SingleModal (acc): -0.5" in text
    assert "Cosmo-HAR, acc off − SingleModal (gyro): -2.0" in text  # (0.50 + 0.56) / 2 - 0.55
    assert "Cosmo-HAR: acc off 53.0 ± 3.0, gyro off 82.0 ± 2.0" in text
