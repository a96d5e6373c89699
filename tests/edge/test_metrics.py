"""``edge-agent serve/run --metrics-listen``: the edge's Prometheus endpoint over a real Inference server
with the tiny real model: RPCs by method and code, model run time per method, the model and execution
provider being served, open calls and streams."""
import grpc
import numpy as np
import pytest

from edge.runtime import Runtime
from edge.service import EdgeServer, ModelHolder
from shared import rpc
from shared.rpc import pb
from tests.edge.test_runtime import build_model_dir, raw_windows
from tests.edge.test_service import request
from tests.util import sample, scrape

pytest.importorskip("onnxruntime")
pytest.importorskip("prometheus_client")


def test_edge_metrics(tmp_path_factory):
    built = build_model_dir(str(tmp_path_factory.mktemp("edge_metrics")), version=3, seed=0)
    holder = ModelHolder(None)
    server = EdgeServer(holder, "127.0.0.1:0", metrics_listen="127.0.0.1:0")
    port = server.start()
    ch = grpc.insecure_channel("127.0.0.1:{}".format(port))
    stub = rpc.InferenceStub(ch)
    try:
        m = scrape(server.metrics_port)
        assert not [k for k in m if k[0] == "cosmo_edge_model_info"]  # nothing installed: no row
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(request(raw_windows(built, 2)), timeout=10)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        rt = Runtime.load(built["dir"])
        holder.swap(rt)
        for n in (1, 3, 8):
            stub.Predict(request(raw_windows(built, n)), timeout=10)
        bad = request(raw_windows(built, 2))
        bad.windows[0].shape[:] = [2, 999, 1]
        with pytest.raises(grpc.RpcError) as e:
            stub.Predict(bad, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        w = raw_windows(built, 1)
        chunks = [pb.SamplesChunk(modality=mod, data=np.asarray(a[0], np.float32).ravel().tolist(),
                                  channels=a.shape[2], rate_hz=50.0) for mod, a in w.items()]
        assert len(list(stub.StreamPredict(iter(chunks), timeout=10))) == 1  # one full window

        m = scrape(server.metrics_port)
        svc = {"grpc_service": "cosmo.v1.Inference"}
        assert sample(m, "grpc_server_handled_total", grpc_method="Predict", grpc_code="OK", **svc) == 3
        assert sample(m, "grpc_server_handled_total", grpc_method="Predict", grpc_code="FAILED_PRECONDITION", **svc) == 1
        assert sample(m, "grpc_server_handled_total", grpc_method="Predict", grpc_code="INVALID_ARGUMENT", **svc) == 1
        assert sample(m, "grpc_server_handled_total", grpc_method="StreamPredict", grpc_code="OK",
                      grpc_type="bidi_stream") == 1
        # every admitted call is timed, failures in the call included (no model yet, a bad shape); the
        # stream once per window
        assert sample(m, "cosmo_edge_model_seconds_count", method="Predict") == 5
        assert sample(m, "cosmo_edge_model_seconds_count", method="StreamPredict") == 1
        assert sample(m, "cosmo_edge_model_seconds_sum", method="Predict") > 0
        assert sample(m, "cosmo_edge_model_info", name=rt.name, version=str(rt.version),
                      provider="CPUExecutionProvider", fallback="onnxruntime") == 1
        assert sample(m, "cosmo_edge_open", kind="inflight") == 0
        assert sample(m, "cosmo_build_info", daemon="edge-agent") == 1
    finally:
        ch.close()
        server.stop(None)
