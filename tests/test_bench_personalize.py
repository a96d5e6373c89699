"""Smoke test of benchmarks/personalize.py on a small synthetic pretrain: both methods are trained per
seed, every candidate adapts on each subject's first half and is scored on its second half, the choice is
made on validation subjects only, and the report is written."""
import json

from tests.bench import load_benchmark
from tests.util import synthetic_pretrain


def test_personalize_benchmark_small(tmp_path):
    out = synthetic_pretrain(tmp_path, epochs=1, extra=["--no-onnx"])
    bench = load_benchmark("personalize")
    rep = tmp_path / "rep"
    args = ["--model", str(out), "--dataset", str(tmp_path / "syn.npz"), "--baseline", "attnsense", "--seeds", "0",
            "1", "--epochs", "2", "--label-rate", "0.2", "--work", str(tmp_path / "work"), "--out", str(rep),
            "--stage2-json", '{"gru_hidden": 16, "mlp_hidden": 16}']
    assert bench.main(args) == 0
    r = json.loads((rep / "personalize.json").read_text())
    assert r["methods"] == ["cosmo", "attnsense"] and len(r["rows"]) == 4
    for m in r["methods"]:
        s = r["summary"][m]
        assert s["chosen"] == "none" or s["val_gain_points"][s["chosen"]] > 0  # chosen on validation only
        assert s["improved"] + s["worsened"] <= len(s["per_subject_gain"])
        row = r["rows"]["{}/0".format(m)]
        assert set(row["val"]).isdisjoint(row["test"])  # validation and test subjects never mix
    assert "per-subject gain" in (rep / "personalize.md").read_text() and (rep / "personalize.png").exists()
    # cached: a second run reads the scores back
    assert bench.main(args) == 0
