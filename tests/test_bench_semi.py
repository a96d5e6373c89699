"""Smoke test of benchmarks/semi.py on a tiny synthetic data set: the candidates share one stage 1 and the
labels of a seed, the choice is the best validation accuracy over sensor subsets, the longer candidates
get the longer budget, --stage1-from reuses encoders, --report-only trains nothing, and --paired-with
sets the candidate the others are compared with."""
import json
import os

import pytest

from tests.bench import study_on_synthetic


@pytest.fixture()
def bench(monkeypatch):
    return study_on_synthetic(monkeypatch, "semi", 40)


def test_semi_benchmark_chooses_on_validation_over_sensor_subsets(bench, tmp_path):
    out = str(tmp_path / "semi")
    argv = ["--out", out, "--seeds", "0", "1", "--s1-epochs", "1", "--s2-epochs", "2", "--threads", "1",
            "--candidates", "labels only", "pseudo 0.8 + drop", "pseudo 0.8 + drop, x2.5 steps"]
    with pytest.raises(SystemExit, match="--report-only: no cached run of 'labels only' seed 0"):
        bench.main(argv + ["--report-only"])
    assert bench.main(argv) == 0
    for f in ("semi.json", "semi.md", "semi.png"):
        assert os.path.isfile(os.path.join(out, f)), f
    with open(os.path.join(out, "semi.json")) as f:
        r = json.load(f)
    rows = r["rows"]
    assert r["chosen"] == max(rows, key=lambda n: (rows[n]["val_subsets"]["mean"], rows[n]["val"]["mean"]))
    assert rows["labels only"]["test_vs_base"] is None and r["base"] == "labels only"
    d = rows["pseudo 0.8 + drop"]["val_subsets_vs_base"]  # the selection score, paired by seed
    assert d["ci_low"] <= d["mean"] <= d["ci_high"]
    assert [rows[n]["epochs"] for n in rows] == [2, 2, 5]
    runs = [json.load(open(os.path.join(out, d, "seed0.json")))
            for d in ("labels_only", "pseudo_08_plus_drop", "pseudo_08_plus_drop_x25_steps")]
    assert len({x["labeled"] for x in runs}) == 1 and runs[0]["pseudo_labeled_last"] is None
    for x in runs:  # the subsets score is the mean of every sensor present and each one off
        v = x["val"]
        assert v["subsets"] == pytest.approx((v["accuracy"] + sum(v["without"].values())) / 3)
    # another study reuses these encoders (an accuracy run's layout); a missing seed is a one-line error
    other = str(tmp_path / "other")
    enc = os.path.join(out, "hapt", "seed0", "stage1", "encoders.pt")
    mtime = os.path.getmtime(enc)
    assert bench.main(["--out", other, "--stage1-from", out, "--seeds", "0", "--s2-epochs", "1", "--threads", "1",
                       "--candidates", "labels only"]) == 0
    assert os.path.getmtime(enc) == mtime and not os.path.exists(os.path.join(other, "hapt"))
    with pytest.raises(SystemExit, match="--stage1-from: .*seed2"):
        bench.main(["--out", other, "--stage1-from", out, "--seeds", "2", "--candidates", "labels only"])
    before = sorted(os.listdir(out))
    assert bench.main(argv + ["--report-only", "--paired-with", "pseudo 0.8 + drop, x2.5 steps"]) == 0
    assert sorted(os.listdir(out)) == before
    with open(os.path.join(out, "semi.json")) as f:
        r = json.load(f)
    assert r["base"] == "pseudo 0.8 + drop, x2.5 steps" and r["rows"]["labels only"]["test_vs_base"] is not None
    assert "val, sensor subsets − pseudo 0.8 + drop, x2.5 steps" in open(os.path.join(out, "semi.md")).read()


def test_semi_benchmark_pairs_every_candidate_with_a_baseline_of_an_accuracy_run(bench, tmp_path):
    out = str(tmp_path / "semi")
    argv = ["--out", out, "--seeds", "0", "1", "--s1-epochs", "1", "--s2-epochs", "1", "--threads", "1",
            "--candidates", "labels only", "pseudo 0.8 + drop"]
    acc = tmp_path / "acc"
    with pytest.raises(SystemExit, match="--baseline: no 1 % run of CPC at seed 0"):  # before any training
        bench.main(argv + ["--baseline", "{}:CPC".format(acc)])
    assert not os.path.exists(out)
    with pytest.raises(SystemExit, match="--baseline: expected DIR:METHOD"):
        bench.main(argv + ["--baseline", "CPC"])
    cpc = {0: 0.5, 1: 0.25}
    for seed, a in cpc.items():  # benchmarks.accuracy's layout
        os.makedirs(str(acc / "hapt" / "seed{}".format(seed)))
        with open(str(acc / "hapt" / "seed{}".format(seed) / "s2_1pct_CPC.json"), "w") as f:
            json.dump({"test": {"accuracy": a}}, f)
    assert bench.main(argv + ["--baseline", "{}:CPC".format(acc)]) == 0
    with open(os.path.join(out, "semi.json")) as f:
        r = json.load(f)
    assert r["baseline"]["method"] == "CPC" and r["baseline"]["per_seed_test"] == [0.5, 0.25]
    for row in r["rows"].values():
        want = sum(t - cpc[s] for s, t in zip((0, 1), row["per_seed_test"])) / 2
        assert row["test_vs_baseline"]["mean"] == pytest.approx(want)
    assert "test − CPC [95 % CI]" in open(os.path.join(out, "semi.md")).read()
