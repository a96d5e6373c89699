"""benchmarks/suite.py: the headline figures it derives from the two benchmarks' JSON, and a real run of
the suite on tiny synthetic sizes (stages only) writing report.md, report.json and the plot."""
import json

import pytest

from tests.bench import load_benchmark


def _cell(accs):
    return {"accuracy": accs, "macro_f1": accs, "labeled": 59}


def test_headline_accuracy_picks_the_best_baseline_per_setting():
    suite = load_benchmark("suite")
    acc = {"tables": {"hapt": {"methods": ["Cosmo-HAR", "Cosmo (paper)", "DeepSense", "CPC"], "rows": [
        {"setting": "1%", "Cosmo-HAR": _cell([0.80, 0.90]), "Cosmo (paper)": _cell([0.95, 0.95]),
         "DeepSense": _cell([0.70, 0.80]), "CPC": _cell([0.86, 0.86])},
        {"setting": "5%", "Cosmo-HAR": _cell([0.92]), "Cosmo (paper)": _cell([]), "DeepSense": _cell([0.93]),
         "CPC": _cell([])}]}}}
    h = suite.headline_accuracy(acc)
    assert [r["setting"] for r in h] == ["1%", "5%"]
    assert h[0]["best_baseline"] == "CPC" and h[0]["margin"] == pytest.approx(0.85 - 0.86)
    assert h[0]["cosmo_std"] == pytest.approx(0.05) and h[0]["seeds"] == 2
    assert h[1]["best_baseline"] == "DeepSense" and h[1]["margin"] == pytest.approx(-0.01)


def test_stage2_ratios_divide_wall_times_per_label_rate():
    suite = load_benchmark("suite")

    def step(s):
        return {"cost": {"wall_s": s}}
    stages = {"steps": {"hapt/stage2/Cosmo/1%": step(10.0), "hapt/stage2/DeepSense/1%": step(20.0),
                        "hapt/stage2/AttnSense/1%": step(40.0), "hapt/stage2/Cosmo/2%": step(12.0),
                        "hapt/stage2/DeepSense/2%": step(24.0), "hapt/stage1": step(99.0)}}
    r = suite.stage2_ratios(stages)
    assert [x["labels"] for x in r] == ["1%", "2%"]
    assert r[0]["cosmo/DeepSense"] == pytest.approx(0.5) and r[0]["cosmo/AttnSense"] == pytest.approx(0.25)
    assert "cosmo/AttnSense" not in r[1] and r[1]["cosmo/DeepSense"] == pytest.approx(0.5)


def test_budget_caps_steps_equally_and_keeps_alternating():
    acc = load_benchmark("accuracy")
    from shared.training import Stage2Config

    cfg = Stage2Config(epochs=100, batch_size=16, t_iter=5)
    assert acc.budget(cfg, 59, 0) == cfg  # no cap
    assert acc.budget(cfg, 59, 500).epochs == 100  # 4 steps/epoch: 400 steps fit
    big = acc.budget(cfg, 5883, 500)  # 368 steps/epoch
    assert big.epochs == 4 and big.t_iter == 1
    mid = acc.budget(cfg, 590, 500)  # 37 steps/epoch -> 14 epochs
    assert mid.epochs == 14 and mid.t_iter == 3


def test_suite_runs_and_writes_one_report(tmp_path):
    pytest.importorskip("matplotlib")
    suite = load_benchmark("suite")
    stages_args = ("--synthetic-only --syn-windows 4 --syn-T 32 --syn-s1-epochs 1 --syn-s2-epochs 1 --idle-s 0.1")
    rc = suite.main(["--quick", "--only", "stages", "--out", str(tmp_path), "--run-name", "r", "--threads", "1",
                     "--stages-args", stages_args])
    assert rc == 0
    root = tmp_path / "r"
    for f in ("report.md", "report.json", "scaling.png", "suite.log"):
        assert (root / f).is_file(), f
    doc = json.loads((root / "report.json").read_text())
    assert doc["quick"] and doc["failures"] == [] and doc["accuracy"] is None
    assert set(doc["scaling"]) >= {"stage-1 s/epoch vs windows", "stage-2 s/epoch vs windows"}
    md = (root / "report.md").read_text()
    assert "How cost grows" in md and "stages/report.md" in md
