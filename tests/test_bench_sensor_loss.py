"""Smoke test of benchmarks/sensor_loss.py on a small synthetic pretrain: both configurations run for every
seed, each sensor is switched off in turn, the paired table and the reports are written."""
import json

from tests.bench import load_benchmark


def test_sensor_loss_benchmark_small(tmp_path):
    from cloud.cli import main as cloud_main
    from shared.data import make_synthetic
    ds = make_synthetic(num_subjects=8, windows_per_subject=30, num_classes=3,
                        modalities=(("a", 32, 3), ("b", 32, 3)), informativeness=(1.0, 0.3), seed=0)
    ds.save(str(tmp_path / "syn"))
    cfg = tmp_path / "s1.yaml"
    cfg.write_text("encoder_widths: [8, 8, 8]\nout_steps: 4\nproj_hidden: 32\nbatch_size: 32\n")
    out = tmp_path / "cloud"
    assert cloud_main(["pretrain", "--dataset", str(tmp_path / "syn.npz"), "--config", str(cfg), "--epochs", "1",
                       "--labels-per-class", "3", "--out", str(out), "--no-progress", "--no-onnx"]) == 0
    bench = load_benchmark("sensor_loss")
    rep = tmp_path / "rep"
    assert bench.main(["--model", str(out), "--labels", str(out / "edge_data"), "--seeds", "0", "1",
                       "--epochs", "3", "--out", str(rep)]) == 0
    r = json.loads((rep / "sensor_loss.json").read_text())
    assert len(r["rows"]) == 4 and set(r["table"]) == {"all", "without_a", "without_b"}
    for case in r["table"].values():
        assert len(case["cosmo"]["per_seed"]) == 2 and case["robust_minus_cosmo"]["ci_low"] <= \
            case["robust_minus_cosmo"]["mean"] <= case["robust_minus_cosmo"]["ci_high"]
    assert "robust − cosmo" in (rep / "sensor_loss.md").read_text() and (rep / "sensor_loss.png").stat().st_size > 0
    assert bench.main(["--model", str(out), "--labels", str(out / "edge_data"), "--seeds", "0"]) == 2
