"""Smoke test of benchmarks/sensor_loss.py on a small synthetic pretrain: both configurations run for every
seed, each sensor is switched off in turn, the paired table and the reports are written."""
import json

from tests.bench import load_benchmark
from tests.util import synthetic_pretrain


def test_sensor_loss_benchmark_small(tmp_path):
    out = synthetic_pretrain(tmp_path, epochs=1, extra=["--no-onnx"])
    bench = load_benchmark("sensor_loss")
    rep = tmp_path / "rep"
    assert bench.main(["--model", str(out), "--labels", str(out / "edge_data"), "--seeds", "0", "1",
                       "--epochs", "3", "--out", str(rep)]) == 0
    r = json.loads((rep / "sensor_loss.json").read_text())
    assert len(r["rows"]) == 4 and set(r["table"]) == {"all", "without_a", "without_b"}
    for case in r["table"].values():
        assert len(case["cosmo"]["per_seed"]) == 2 and case["robust_minus_cosmo"]["ci_low"] <= \
            case["robust_minus_cosmo"]["mean"] <= case["robust_minus_cosmo"]["ci_high"]
    assert r["table"]["without_b"]["single_modal"]["modality"] == "a" and len(r["single_modal"]["a"]) == 2
    assert "SingleModal of the sensor left" in (rep / "sensor_loss.md").read_text()
    assert "robust − cosmo" in (rep / "sensor_loss.md").read_text() and (rep / "sensor_loss.png").stat().st_size > 0
    assert bench.main(["--model", str(out), "--labels", str(out / "edge_data"), "--seeds", "0"]) == 2
