"""Smoke test of benchmarks/latency.py on the tiny real model of test_runtime: engines agree and are
timed, gRPC calls (unary, and a StreamPredict stream with a prediction per window) reach real
`edge-agent serve` processes, cold starts are measured without torch mapped,
and the JSON, Markdown and PNG reports are written. (Figures are the benchmark's job, not asserted.)"""
import json

import numpy as np

from tests.bench import load_benchmark


def test_latency_benchmark_small(tmp_path):
    from tests.edge.test_runtime import build_model_dir, raw_windows
    built = build_model_dir(str(tmp_path / "m"), version=3, seed=0)
    from shared.data.dataset import MultimodalDataset
    windows = raw_windows(built)
    ds = built["raw"]
    assert isinstance(ds, MultimodalDataset) and len(ds) >= 32
    ds.save(str(tmp_path / "w"))
    latency = load_benchmark("latency")
    out = tmp_path / "out"
    assert latency.main(["--model", built["dir"], "--windows", str(tmp_path / "w.npz"), "--n", "20",
                         "--starts", "1", "--out", str(out)]) == 0
    r = json.loads((out / "latency.json").read_text())
    for b in ("batch_1", "batch_32"):
        assert r["engines"][b]["onnxruntime"]["p50_ms"] > 0 and r["engines"][b]["torch_eager"]["p50_ms"] > 0
    for k in ("loopback", "unix_socket", "loopback_repeated_float", "loopback_empty_rpc", "loopback_stream",
              "unix_socket_stream"):
        assert r["grpc"][k]["p50_ms"] > 0 and np.isfinite(r["grpc"]["ratio_p50"][k])
    assert r["grpc"]["unix_socket_stream"]["n"] == 20  # two halves of 10 windows, one prediction each
    cs = r["cold_start"]
    assert cs["edge_agent_serve"]["torch_mapped"] is False and cs["edge_agent_serve"]["peak_rss_mb_median"] > 0
    assert r["ort_profile_batch_32"] and 0 < sum(s for _, s in r["ort_profile_batch_32"]) <= 1.0 + 1e-6
    assert "ORT speed-up" in (out / "latency.md").read_text() and (out / "latency.png").stat().st_size > 0
    assert len(windows) == 2
