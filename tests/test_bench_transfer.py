"""Smoke test of benchmarks/transfer.py: a real cloud-server and a plain TCP server in their own
processes send the same blob; every path got every byte, the figures and the report are written."""
import json

import pytest

from tests.bench import load_benchmark


def test_transfer_benchmark_small(tmp_path):
    transfer = load_benchmark("transfer")
    out = tmp_path / "transfer"
    assert transfer.main(["--mb", "4", "--repeats", "1", "--chunk-kb", "256", "1024", "--out", str(out)]) == 0
    result = json.loads((out / "transfer.json").read_text())
    assert result["malloc_tuned"] is True and result["best_chunk_kb"] in (256, 1024)
    for kb in ("256", "1024"):
        s = result["summary"][kb]
        for path in ("grpc_download", "client_helper", "tcp_socket"):
            assert s[path]["MB_per_s_median"] > 0
            # client + server CPU over wall time; no upper bound here: the server's CPU is read in 10 ms
            # clock ticks, coarse against a few milliseconds of transfer
            assert s[path]["cores_busy_median"] > 0
        assert s["grpc_over_tcp"] > 0 and s["helper_time_over_stream"] > 0
    md = (out / "transfer.md").read_text()
    assert md.count("\n| 256 |") == 1 and md.count("\n| 1024 |") == 1 and "Best chunk size" in md


def test_transfer_benchmark_refuses_a_short_stream(tmp_path, monkeypatch):
    transfer = load_benchmark("transfer")
    whole = transfer.tcp_stream
    monkeypatch.setattr(transfer, "tcp_stream", lambda *a: dict(whole(*a), bytes=1))  # as if it ended early
    with pytest.raises(SystemExit, match="tcp_socket at 1024 KiB received 1 of 4194304 bytes"):
        transfer.main(["--mb", "4", "--repeats", "1", "--chunk-kb", "1024", "--out", str(tmp_path / "t")])
