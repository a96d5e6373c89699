"""edge.service: the Inference gRPC service on a real server (127.0.0.1:0 and a unix socket) with the tiny
real model of test_runtime: status codes, dynamic sensor selection on the wire, StreamPredict windowing,
Info, health, and model swaps under concurrent Predict calls."""
import os
import tempfile
import threading
from typing import Dict, List

import grpc
import numpy as np
import pytest

from edge.runtime import Runtime
from edge.service import ModelHolder, serve_inference
from shared import rpc
from shared.rpc import pb
from tests.edge.test_runtime import build_model_dir, raw_windows

pytest.importorskip("onnxruntime")
pytest.importorskip("grpc_health")
TIMEOUT = 10.0
MAX_BATCH = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("edge_models"))
    a = build_model_dir(root, version=3, seed=0)
    b = build_model_dir(root, version=4, seed=1)
    return a, b, Runtime.load(a["dir"]), Runtime.load(b["dir"])


@pytest.fixture(scope="module")
def served(models):
    holder = ModelHolder(models[2])
    server, port = serve_inference(holder, "127.0.0.1:0", max_batch=MAX_BATCH, max_workers=6)
    channel = grpc.insecure_channel("127.0.0.1:{}".format(port))
    yield holder, rpc.InferenceStub(channel), channel
    channel.close()
    server.stop(None)


def request(windows: Dict[str, np.ndarray], rates: Dict[str, float] = None, batch: int = 0) -> pb.PredictRequest:
    rates = rates or {}
    return pb.PredictRequest(batch=batch, windows=[
        pb.ModalityWindows(modality=m, shape=list(a.shape), data=np.asarray(a, np.float32).ravel().tolist(),
                           rate_hz=rates.get(m, 0.0)) for m, a in windows.items()])


def code_and_details(fn):
    try:
        fn()
    except grpc.RpcError as e:
        return e.code(), e.details()
    return None, None


def test_predict_matches_runtime_and_reports_modalities(models, served):
    _, stub, _ = served
    built, rt = models[0], models[2]
    w = raw_windows(built, 5)
    w["gyro"][2] = -0.5  # flat in window 2
    resp = stub.Predict(request(w, {"acc": 50.0, "gyro": 50.0}, batch=5), timeout=TIMEOUT)
    ref = rt.predict(w)
    assert (resp.model_name, resp.model_version, resp.provider) == ("tiny", 3, "CPUExecutionProvider")
    assert list(resp.modalities) == ["acc", "gyro"]
    assert list(resp.used_modalities) == ["acc", "gyro"] and list(resp.dropped_modalities) == ["gyro"]
    assert len(resp.predictions) == 5
    for i, p in enumerate(resp.predictions):
        np.testing.assert_allclose(p.proba, ref["proba"][i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(p.beta, ref["beta"][i], rtol=1e-5, atol=1e-6)
        assert p.label == int(ref["label"][i]) and p.label_name == rt.classes[p.label]
        assert list(p.dropped) == (["gyro"] if i == 2 else [])
    assert resp.predictions[2].beta[1] == 0.0 and abs(sum(resp.predictions[2].beta) - 1) < 1e-5

    only = stub.Predict(request({"gyro": w["gyro"][:1]}), timeout=TIMEOUT)
    assert list(only.used_modalities) == ["gyro"] and list(only.dropped_modalities) == ["acc"]
    assert only.predictions[0].beta[0] == 0.0

    emb = stub.Embed(request(w), timeout=TIMEOUT)
    assert emb.dim == 16 and len(emb.embeddings) == 5 and emb.model_version == 3
    np.testing.assert_allclose(emb.embeddings[4].values, ref["embedding"][4], rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_invalid_argument_naming_the_modality(models, served):
    _, stub, _ = served
    w = raw_windows(models[0], 2)
    acc = w["acc"]
    nan = acc.copy()
    nan[1, 5, 0] = np.inf
    bad = [
        ("magnet", request({"magnet": acc})),
        ("acc", pb.PredictRequest(windows=[pb.ModalityWindows(modality="acc", shape=[2, 32], data=[0.0] * 64)])),
        ("acc", request({"acc": acc[:, :31]})),  # window length
        ("acc", request({"acc": acc[:, :, :2]})),  # channel count
        ("acc", pb.PredictRequest(windows=[pb.ModalityWindows(modality="acc", shape=[2, 32, 3], data=[0.0] * 10)])),
        ("acc", request({"acc": acc}, {"acc": 100.0})),  # sampling rate
        ("acc", request({"acc": nan})),
        ("gyro", request({"acc": acc, "gyro": w["gyro"][:1]})),  # batch sizes differ
        ("acc", request({"acc": acc}, batch=3)),
        ("windows", pb.PredictRequest()),
        ("windows", request({"acc": np.zeros_like(acc)})),  # every modality flat
    ]
    for field, req in bad:
        for call in (stub.Predict, stub.Embed):
            code, details = code_and_details(lambda call=call, req=req: call(req, timeout=TIMEOUT))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, details)
            assert details.startswith(field + ":"), details
    _, details = code_and_details(lambda: stub.Predict(request({"acc": acc[:, :31]}), timeout=TIMEOUT))
    assert details == "acc: shape [2, 31, 3]; expected float32 windows [N, 32, 3] (channels acc_0,acc_1,acc_2) " \
                      "at 50 Hz", details
    big = {"acc": np.repeat(acc, 9, axis=0)[:MAX_BATCH + 1]}
    code, details = code_and_details(lambda: stub.Predict(request(big), timeout=TIMEOUT))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 16" in details
    # the server keeps serving
    assert len(stub.Predict(request(w), timeout=TIMEOUT).predictions) == 2


def test_lone_stream_runs_on_the_loop_and_streams_side_by_side_in_the_pool(models, served, monkeypatch):
    """A stream that is the only one open runs its windows on the event loop (no thread hand-offs); with a
    second stream open, both run theirs in the model executor. Same answers either way."""
    import queue
    _, stub, _ = served
    built, rt = models[0], models[2]
    raw = raw_windows(built, 4)
    threads = []  # type: List[str]
    predict = rt.predict

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return predict(*args, **kwargs)
    monkeypatch.setattr(rt, "predict", spy)

    def window(q: "queue.Queue", k: int) -> None:  # hop = window: window k's samples, acc then gyro
        for m in ("acc", "gyro"):
            q.put(pb.SamplesChunk(modality=m, raw=raw[m][k].astype("<f4").tobytes(), channels=raw[m].shape[2],
                                  hop_fraction=1.0))

    qa, qb = queue.Queue(), queue.Queue()  # type: queue.Queue, queue.Queue
    a = stub.StreamPredict(iter(qa.get, None), timeout=TIMEOUT)
    b = None
    got = []
    try:
        for k in range(4):
            if k == 2:  # a second stream joins
                b = stub.StreamPredict(iter(qb.get, None), timeout=TIMEOUT)
                window(qb, 0)
                assert next(b).window_index == 0
            window(qa, k)
            got.append(next(a))
    finally:
        qa.put(None)
        qb.put(None)
    assert [list(x) for x in (a, b)] == [[], []]  # both end cleanly
    assert [r.window_index for r in got] == [0, 1, 2, 3]
    for k in (1, 2, 3):  # window 0 was formed from acc alone: gyro had not streamed yet
        np.testing.assert_allclose(got[k].predictions[0].proba, predict({m: raw[m][k:k + 1] for m in raw})["proba"][0],
                                   rtol=1e-5, atol=1e-6)
    assert threads[:2] == ["edge-aio"] * 2, threads  # alone
    assert all(t.startswith("edge-model") for t in threads[2:5]), threads  # side by side


def test_stream_predict_forms_windows(models, served):
    """Window 32, 50 % hop = 16 samples: 80 streamed samples per modality = windows starting at 0, 16, 32,
    48 (4 predictions); hop_fraction 1.0: windows at 0 and 32 (2 predictions; 16 samples left over)."""
    _, stub, _ = served
    built, rt = models[0], models[2]
    raw = raw_windows(built, 3)
    series = {m: np.concatenate([raw[m][0], raw[m][1], raw[m][2][:16]]) for m in raw}  # [80, C]

    def chunks(hop_fraction: float = 0.0, step: int = 10) -> List[pb.SamplesChunk]:
        out = []
        for s in range(0, 80, step):
            for m in ("acc", "gyro"):
                out.append(pb.SamplesChunk(modality=m, data=series[m][s:s + step].ravel().tolist(),
                                           channels=series[m].shape[1], rate_hz=50.0, hop_fraction=hop_fraction))
        return out

    resps = list(stub.StreamPredict(iter(chunks()), timeout=TIMEOUT))
    assert [r.window_index for r in resps] == [0, 1, 2, 3]
    for k, r in enumerate(resps):
        ref = rt.predict({m: series[m][None, 16 * k:16 * k + 32] for m in series})
        np.testing.assert_allclose(r.predictions[0].proba, ref["proba"][0], rtol=1e-5, atol=1e-6)
        assert r.model_version == 3 and list(r.used_modalities) == ["acc", "gyro"]
    resps = list(stub.StreamPredict(iter(chunks(hop_fraction=1.0, step=7)), timeout=TIMEOUT))
    assert [r.window_index for r in resps] == [0, 1]
    ref = rt.predict({m: series[m][None, 32:64] for m in series})
    np.testing.assert_allclose(resps[1].predictions[0].proba, ref["proba"][0], rtol=1e-5, atol=1e-6)

    # one modality only: the other is dropped
    only = [c for c in chunks() if c.modality == "acc"]
    resps = list(stub.StreamPredict(iter(only), timeout=TIMEOUT))
    assert len(resps) == 4 and all(list(r.dropped_modalities) == ["gyro"] for r in resps)

    bad = chunks()[:3] + [pb.SamplesChunk(modality="gyro", data=[0.0] * 9, channels=3)]
    it = stub.StreamPredict(iter(bad), timeout=TIMEOUT)
    code, details = code_and_details(lambda: list(it))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("gyro: 3 channels; expected"), details
    code, details = code_and_details(lambda: list(stub.StreamPredict(
        iter([pb.SamplesChunk(modality="radar", data=[1.0], channels=1)]), timeout=TIMEOUT)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("radar: unknown modality")
    # gyro stalls after 5 samples while acc streams on: bounded buffer, RESOURCE_EXHAUSTED
    ahead = [pb.SamplesChunk(modality="gyro", data=series["gyro"][:5].ravel().tolist(), channels=2)] + [
        pb.SamplesChunk(modality="acc", data=series["acc"].ravel().tolist(), channels=3) for _ in range(8)]
    code, details = code_and_details(lambda: list(stub.StreamPredict(iter(ahead), timeout=TIMEOUT)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and details.startswith("acc: ") and "ahead" in details, details


def test_info_and_health(models, served):
    _, stub, channel = served
    info = stub.Info(pb.InfoRequest(), timeout=TIMEOUT)
    assert (info.model_name, info.model_version, info.provider, info.fallback) == (
        "tiny", 3, "CPUExecutionProvider", "onnxruntime")
    assert "CPUExecutionProvider" in info.available_providers and info.max_batch == MAX_BATCH
    assert [(s.name, s.channels, s.window, s.rate_hz) for s in info.modalities] == [
        ("acc", 3, 32, 50.0), ("gyro", 2, 32, 50.0)]
    assert list(info.classes) == models[2].classes and info.embedding_dim == 16
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    h = health_pb2_grpc.HealthStub(channel)
    for name in ("", "cosmo.v1.Inference"):
        assert h.Check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT).status == \
            health_pb2.HealthCheckResponse.SERVING


def test_no_model_is_failed_precondition_then_swap_in(models):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    holder = ModelHolder()
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "inference.sock")
        server, _ = serve_inference(holder, "unix:" + sock)
        channel = grpc.insecure_channel("unix:" + sock)
        try:
            stub, h = rpc.InferenceStub(channel), health_pb2_grpc.HealthStub(channel)
            w = raw_windows(models[0], 1)
            for fn in (lambda: stub.Predict(request(w), timeout=TIMEOUT),
                       lambda: stub.Info(pb.InfoRequest(), timeout=TIMEOUT),
                       lambda: list(stub.StreamPredict(iter([pb.SamplesChunk(modality="acc", data=[0.0] * 3,
                                                                             channels=3)]), timeout=TIMEOUT))):
                code, details = code_and_details(fn)
                assert code == grpc.StatusCode.FAILED_PRECONDITION and "no model installed" in details
            assert h.Check(health_pb2.HealthCheckRequest(service="cosmo.v1.Inference"), timeout=TIMEOUT).status == \
                health_pb2.HealthCheckResponse.NOT_SERVING
            assert holder.swap(models[3]) is None
            assert stub.Predict(request(w), timeout=TIMEOUT).model_version == 4
            assert h.Check(health_pb2.HealthCheckRequest(service="cosmo.v1.Inference"), timeout=TIMEOUT).status == \
                health_pb2.HealthCheckResponse.SERVING
        finally:
            channel.close()
            server.stop(None)


def test_swap_during_concurrent_predicts(models, served):
    holder, stub, _ = served
    built, rt_a, rt_b = models[0], models[2], models[3]
    w = raw_windows(built, 4)
    expect = {3: rt_a.predict(w)["proba"], 4: rt_b.predict(w)["proba"]}
    assert not np.allclose(expect[3], expect[4])
    req = request(w)
    errors, seen = [], []  # type: List[str], List[int]
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                r = stub.Predict(req, timeout=TIMEOUT)
                proba = np.array([p.proba for p in r.predictions])
                if not np.allclose(proba, expect[r.model_version], rtol=1e-5, atol=1e-6):
                    errors.append("version {} answered another model's probabilities".format(r.model_version))
                seen.append(r.model_version)
            except grpc.RpcError as e:
                errors.append("{}: {}".format(e.code(), e.details()))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(30):
            holder.swap(rt_b if i % 2 == 0 else rt_a)
            stop.wait(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(TIMEOUT)
        holder.swap(rt_a)
    assert not errors, errors[:3]
    assert len(seen) >= 10 and set(seen) == {3, 4}
