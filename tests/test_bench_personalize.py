"""Smoke test of benchmarks/personalize.py on a tiny synthetic data set: each method is trained per seed as
the accuracy benchmark trains it, every candidate adapts on each subject's first half and is scored on its
second half, the choice is made on validation subjects only, the report is written, and cached runs are
read back (--report-only trains nothing)."""
import json
import os

import pytest

from tests.bench import study_on_synthetic


@pytest.fixture()
def bench(monkeypatch):
    return study_on_synthetic(monkeypatch, "personalize", 80)


def test_personalize_benchmark_small(bench, tmp_path):
    rep, work = tmp_path / "rep", tmp_path / "work"
    args = ["--methods", "Cosmo-HAR", "AttnSense", "--seeds", "0", "1", "--s1-epochs", "1", "--s2-epochs", "2",
            "--threads", "1", "--work", str(work), "--out", str(rep)]
    with pytest.raises(SystemExit, match="--report-only: no cached run of 'Cosmo-HAR' seed 0"):
        bench.main(args + ["--report-only"])
    assert bench.main(args) == 0
    r = json.loads((rep / "personalize.json").read_text())
    assert r["methods"] == ["Cosmo-HAR", "AttnSense"] and len(r["rows"]) == 4
    for m in r["methods"]:
        s = r["summary"][m]
        # chosen on validation only, and only with a gain whose interval is above zero
        assert s["chosen"] == "none" or s["val_gain_ci"][s["chosen"]]["ci_low"] > 0
        assert s["loose_rule"]["chosen"] == "none" or s["val_gain_points"][s["loose_rule"]["chosen"]] > 0
        assert s["improved"] + s["worsened"] <= len(s["per_subject_gain"])
        row = r["rows"]["{}/0".format(m)]
        assert set(row["val"]).isdisjoint(row["test"])  # validation and test subjects never mix
        for subj in row["test"].values():  # halves of one subject's windows, both scored or adapted on
            assert abs(subj["windows"][0] - subj["windows"][1]) <= 1
    assert "AttnSense" in r["summary"]["first_minus_others"]
    assert "per-subject gain" in (rep / "personalize.md").read_text() and (rep / "personalize.png").exists()
    # Cosmo-HAR's stage 1 in the accuracy run's layout, reusable with --stage1-from
    assert os.path.isfile(work / "hapt" / "seed0" / "stage1" / "encoders.pt")
    before = sorted(os.listdir(work))
    assert bench.main(args + ["--report-only"]) == 0
    assert sorted(os.listdir(work)) == before
    assert bench.main(["--methods", "Nope", "--seeds", "0", "1"]) == 2
    assert bench.main(["--setting", "3%", "--seeds", "0", "1"]) == 2
