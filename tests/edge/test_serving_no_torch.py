"""`edge-agent serve` without torch: the serving process runs with an import guard that makes any
``import torch`` fail, answers Predict (compact wire form), Info, health and its Prometheus endpoint, and
maps no torch library.

Also the edge half of the Python 3.6 check (scripts/check_py36.sh runs this file in a venv with the TX2
stack's pins and onnxruntime 1.10, and no torch at all): there the model folder comes prebuilt
(``COSMO_EDGE_FIXTURE``, written by ``python -m tests.edge.fixture DIR`` in the main venv) with the
answers the main venv's ONNX Runtime gave for its windows."""
import json
import os
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from tests.util import sample, scrape

pytest.importorskip("onnxruntime")
GUARD = ("import sys; sys.modules['torch'] = None; from edge.cli import main; sys.exit(main(sys.argv[1:]))")
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    root = os.environ.get("COSMO_EDGE_FIXTURE")
    if not root:
        from tests.edge.fixture import write_fixture
        root = str(tmp_path_factory.mktemp("no_torch"))
        write_fixture(root)
    with open(os.path.join(root, "expected.json")) as f:
        expected = json.load(f)
    windows = dict(np.load(os.path.join(root, "windows.npz")))
    return root, windows, expected


def test_serve_without_torch(fixture, tmp_path):
    from edge.agent import Agent
    from edge.wire import encode_windows
    from shared import rpc
    from shared.rpc import pb

    root, windows, expected = fixture
    state = str(tmp_path / "state")
    Agent(state, "").swap_to(os.path.join(root, "model"))  # what `run` leaves behind: state.json names it
    ready = str(tmp_path / "port")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, "-c", GUARD, "serve", "--state-dir", state, "--listen", "127.0.0.1:0",
                             "--ready-file", ready, "--metrics-listen", "127.0.0.1:0", "--ort-no-spin"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        end = time.time() + 60
        while not os.path.exists(ready):
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.time() < end, "edge-agent serve did not start"
            time.sleep(0.05)
        with open(ready) as f:
            port = int(f.read())
        ch = grpc.insecure_channel("127.0.0.1:{}".format(port))
        stub = rpc.InferenceStub(ch)
        resp = stub.Predict(encode_windows(windows), timeout=TIMEOUT)
        got = np.array([list(p.proba) for p in resp.predictions])
        np.testing.assert_allclose(got, np.array(expected["proba"]), rtol=1e-4, atol=1e-5)
        info = stub.Info(pb.InfoRequest(), timeout=TIMEOUT)
        assert info.fallback == "onnxruntime" and info.graph_optimization == "all" and not info.ort_spin
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="cosmo.v1.Inference"),
                                                    timeout=TIMEOUT).status == health_pb2.HealthCheckResponse.SERVING
        lines = [proc.stdout.readline().decode() for _ in range(2)]  # printed before the ready file
        assert lines[1].startswith("Prometheus metrics on http://127.0.0.1:"), lines
        metrics = scrape(int(lines[1].rsplit(":", 1)[1].split("/")[0]))
        assert sample(metrics, "grpc_server_handled_total", grpc_method="Predict", grpc_code="OK") == 1
        assert sample(metrics, "cosmo_edge_model_info", provider="CPUExecutionProvider") == 1
        with open("/proc/{}/maps".format(proc.pid)) as f:
            maps = f.read()
        assert "libtorch" not in maps and "/torch/" not in maps
        ch.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"Traceback" not in err
