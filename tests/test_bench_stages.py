"""Smoke test of benchmarks/stages.py on synthetic data only (tiny sizes, 1 epoch): the report files are
written, the energy source is labeled, every scaling exponent is finite, and a second call reads the
cached steps back."""
import json
import math
import os

import pytest

from tests.bench import load_benchmark


def test_stages_benchmark_synthetic_smoke(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    mod = load_benchmark("stages")
    argv = ["--out", str(tmp_path), "--run-name", "smoke", "--quick", "--synthetic-only", "--syn-windows", "4",
            "--syn-T", "32", "--syn-s1-epochs", "1", "--syn-s2-epochs", "1", "--idle-s", "0.1", "--threads", "1"]
    assert mod.main(argv) == 0
    root = tmp_path / "smoke"
    for f in ("report.md", "report.json", "scaling.png", "idle.json"):
        assert (root / f).is_file(), f
    res = json.loads((root / "report.json").read_text())
    assert res["idle"]["source"] and isinstance(res["idle"]["is_estimate"], bool)
    for key, step in res["steps"].items():
        cost = step["cost"]
        assert cost["source"] == res["idle"]["source"], key
        assert isinstance(cost["is_estimate"], bool) and cost["wall_s"] > 0 and cost["peak_rss_mb"] > 0, key
    assert set(res["scaling"]) == {"stage-1 s/epoch vs windows", "stage-1 s/epoch vs modalities",
                                   "stage-1 s/epoch vs fused views P", "stage-2 s/epoch vs windows"}
    for name, s in res["scaling"].items():
        assert math.isfinite(s["exponent"]), name
    assert res["device"]["jetson_l4t"] and res["device"]["nvpmodel"] and "torch" in res["device"]["versions"]
    md = (root / "report.md").read_text()
    assert "Energy source: **{}".format(res["idle"]["source"]) in md and "exponent" in md
    # resume: cached steps are read back, not rerun
    cached = root / "steps" / "scaling_stage1_windows_x1.json"
    mtime = os.path.getmtime(cached)
    assert mod.main(argv) == 0
    assert os.path.getmtime(cached) == mtime


def test_fit_exponent_recovers_power_law():
    mod = load_benchmark("stages")
    fit = mod.fit_exponent([1, 2, 4, 8], [3.0 * x ** 1.5 for x in (1, 2, 4, 8)])
    assert abs(fit["exponent"] - 1.5) < 1e-9 and abs(fit["r2"] - 1.0) < 1e-9
