"""Smoke test of benchmarks/augment.py on a tiny synthetic data set: every candidate runs stage 1, the
probe and stage 2 on the same labels, the choice is the best validation accuracy, the report is
written, and the combined candidate is built from the single transforms that beat the default."""
import json
import os

import pytest

from tests.bench import study_on_synthetic


@pytest.fixture()
def bench(monkeypatch):
    return study_on_synthetic(monkeypatch, "augment", 40)


def test_augment_benchmark_chooses_on_validation(bench, tmp_path):
    out = str(tmp_path / "aug")
    argv = ["--out", out, "--seeds", "0", "1", "--s1-epochs", "1", "--s2-epochs", "2", "--threads", "1",
            "--candidates", "paper", "copies", "+permute", "+mask", "+winners"]
    assert bench.main(argv) == 0
    for f in ("augment.json", "augment.md", "augment.png"):
        assert os.path.isfile(os.path.join(out, f)), f
    with open(os.path.join(out, "augment.json")) as f:
        r = json.load(f)
    rows = r["rows"]
    assert r["chosen"] == max(rows, key=lambda n: (rows[n]["stage2_val"]["mean"], rows[n]["stage2_val_f1"]["mean"]))
    assert rows["copies"]["test_vs_default"]["mean"] == 0.0
    assert rows["paper"]["config"]["fusion"] == "grid"
    base = rows["copies"]["stage2_val"]["mean"]
    winners = [n for n in ("+permute", "+mask") if rows[n]["stage2_val"]["mean"] > base]
    assert ("+winners" in rows) == (len(winners) >= 2)
    # every candidate of a seed trained on the same labeled windows
    labeled = {json.load(open(os.path.join(out, d, "seed0", "stage2.json")))["labeled"]
               for d in ("paper", "copies", "plus_permute")}
    assert len(labeled) == 1



def test_augment_report_only_never_trains(bench, tmp_path):
    out = str(tmp_path / "aug")
    argv = ["--out", out, "--seeds", "0", "--s1-epochs", "1", "--s2-epochs", "2", "--threads", "1",
            "--candidates", "paper", "copies"]
    with pytest.raises(SystemExit, match="--report-only: no cached run of paper seed 0"):
        bench.main(argv + ["--report-only"])
    assert not os.path.exists(os.path.join(out, "paper"))
    assert bench.main(argv + ["--no-report"]) == 0
    assert bench.main(argv + ["--report-only"]) == 0
    assert os.path.isfile(os.path.join(out, "augment.md"))
