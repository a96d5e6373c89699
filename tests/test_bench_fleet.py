"""Smoke test of benchmarks/fleet.py: a real cloud-server and a handful of simulated edges in their own
processes; every edge ends with verified files, the prober saw answers, the reports are written."""
import json

from tests.bench import load_benchmark


def test_fleet_benchmark_small(tmp_path):
    fleet = load_benchmark("fleet")
    out = tmp_path / "fleet"
    assert fleet.main(["--edges", "3", "--procs", "2", "--stalled", "2", "--file-kb", "40", "1",
                       "--timeout", "120", "--out", str(out)]) == 0
    run = json.loads((out / "fleet.json").read_text())["runs"][0]
    assert run["edges"] == 3 and run["verified"] == 3 and run["errors"] == 0
    assert run["bytes_total"] == 3 * 41 * 1024
    assert run["health_ms"]["n"] > 0 and run["health_ms"]["failed"] == 0
    assert 0 < run["publish_to_verified_s"]["p50"] <= run["publish_to_verified_s"]["max"]
    assert run["server_peak_rss_mb"] > 0 and run["server_fds_watching"] >= run["server_fds_idle"]
    assert (out / "fleet.md").read_text().count("\n| 3 |") == 1 and (out / "fleet.png").stat().st_size > 0
