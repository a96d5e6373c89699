"""The edge against a rogue cloud and hostile apps: manifest paths confined, TLS to the cloud, the
Inference service authenticated and bounded, no NaN in any answer, state paths absolute. Real gRPC
servers on loopback and unix sockets, the tiny real model of test_runtime."""
import json
import os
import stat
import threading
from concurrent import futures

import grpc
import numpy as np
import pytest

from edge.holders import ModelHolder
from edge.runtime import Runtime
from edge.service import EdgeLimits, serve_inference
from edge.wire import encode_windows
from shared import rpc
from shared.client import connect, pull
from shared.errors import DataError
from shared.rpc import pb
from tests.edge.test_runtime import build_model_dir, raw_windows
from tests.util import self_signed, wait_until

pytest.importorskip("onnxruntime")
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    built = build_model_dir(str(tmp_path_factory.mktemp("edge_sec")), version=3, seed=0)
    return built, Runtime.load(built["dir"])


@pytest.fixture()
def served(model):
    """(built, runtime, stub) of a plain Inference service on loopback."""
    built, rt = model
    server, port = serve_inference(ModelHolder(rt), "127.0.0.1:0")
    yield built, rt, rpc.InferenceStub(grpc.insecure_channel("127.0.0.1:{}".format(port)))
    server.stop(None)


def _code(fn):
    try:
        fn()
    except grpc.RpcError as e:
        return e.code(), e.details()
    return None, None


# ----------------------------------------------------------------------------------- a rogue cloud
class _RogueRegistry(object):
    """Answers GetManifest with whatever file list it is given, and Download with a few bytes."""

    def __init__(self, files):
        self.files = files

    def GetManifest(self, request, context):
        man = {"format": "cosmo-har/manifest", "name": request.name, "version": 1, "input_schema": {},
               "classes": [], "files": self.files}
        return pb.ModelVersion(name=request.name, version=1, manifest_json=json.dumps(man))

    def Download(self, request, context):
        yield pb.Chunk(offset=0, data=b"pwned", total_size=5)


@pytest.mark.parametrize("path", ["../../../../pwned.txt", "/tmp/pwned-abs.txt", "a/../../pwned.txt", "a\\..\\x",
                                  "", "./x", "a//b", "x\x00y"])
def test_rogue_manifest_paths_never_written(tmp_path, path):
    sha = "0" * 64
    server = grpc.server(futures.ThreadPoolExecutor(2))
    rpc.add_ModelRegistryServicer_to_server(_RogueRegistry([{"path": path, "size": 5, "sha256": sha,
                                                             "kind": "onnx"}]), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    state = tmp_path / "state" / "models"
    try:
        with pytest.raises(DataError) as e:
            pull(grpc.insecure_channel("127.0.0.1:{}".format(port)), "m", str(state))
        assert "files[0].path" in str(e.value)
    finally:
        server.stop(None)
    written = [os.path.join(d, f) for d, _, fs in os.walk(str(tmp_path)) for f in fs]
    assert written == [] and not os.path.exists("/tmp/pwned-abs.txt")


def test_pull_over_tls_from_the_cli(tmp_path):
    from cloud.server import CloudServer
    from edge.cli import main as edge_main
    from shared.rpc.auth import server_credentials
    cert, key = self_signed(tmp_path, "cloud")
    srv = CloudServer(str(tmp_path / "cloud"), "127.0.0.1:0", tls=server_credentials(cert, key, None),
                      token="s3cret")
    port = srv.start()
    blob = tmp_path / "w.bin"
    blob.write_bytes(os.urandom(4096))
    srv.registry.publish("m", {"w.bin": (str(blob), "state_dict")},
                         {"format": "cosmo-har/manifest", "input_schema": {}, "classes": ["a"]})
    (tmp_path / "token").write_text("s3cret\n")
    args = ["pull", "--state-dir", str(tmp_path / "edge"), "--name", "m", "--cloud", "localhost:{}".format(port),
            "--token-file", str(tmp_path / "token")]
    try:
        assert edge_main(args + ["--tls-ca", cert]) == 0
        got = tmp_path / "edge" / "models" / "m" / "v1" / "w.bin"
        assert got.read_bytes() == blob.read_bytes()
        assert edge_main(["pull", "--state-dir", str(tmp_path / "e2"), "--name", "m",
                          "--cloud", "localhost:{}".format(port)]) == 1  # plaintext against TLS: one-line error
    finally:
        srv.stop(grace=1)


# -------------------------------------------------------------------------- the Inference service
def test_inference_token_health_open_reflection_closed(model, tmp_path):
    built, rt = model
    server, port = serve_inference(ModelHolder(rt), "127.0.0.1:0", token="t0ken")
    target = "127.0.0.1:{}".format(port)
    req = encode_windows(raw_windows(built, 2))
    try:
        anon = rpc.InferenceStub(grpc.insecure_channel(target))
        for fn in (lambda: anon.Predict(req, timeout=TIMEOUT), lambda: anon.Info(pb.InfoRequest(), timeout=TIMEOUT),
                   lambda: list(anon.StreamPredict(iter([]), timeout=TIMEOUT))):
            assert _code(fn)[0] == grpc.StatusCode.UNAUTHENTICATED
        wrong = rpc.InferenceStub(connect(target, token="nope"))
        assert _code(lambda: wrong.Predict(req, timeout=TIMEOUT))[0] == grpc.StatusCode.UNAUTHENTICATED
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        h = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
        assert h.Check(health_pb2.HealthCheckRequest(service="cosmo.v1.Inference"), timeout=TIMEOUT).status == \
            health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
        refl = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(target))
        code, _ = _code(lambda: next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            list_services="")]), timeout=TIMEOUT)))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        import shared.rpc.auth as auth
        compared = []
        real = auth.hmac.compare_digest
        auth.hmac.compare_digest = lambda a, b: compared.append(1) or real(a, b)  # constant-time, every call
        try:
            ok = rpc.InferenceStub(connect(target, token="t0ken"))
            assert len(ok.Predict(req, timeout=TIMEOUT).predictions) == 2
        finally:
            auth.hmac.compare_digest = real
        assert compared
    finally:
        server.stop(None)


def test_inference_over_tls(model, tmp_path):
    from shared.rpc.auth import server_credentials
    built, rt = model
    cert, key = self_signed(tmp_path, "edge")
    server, port = serve_inference(ModelHolder(rt), "127.0.0.1:0", tls=server_credentials(cert, key, None))
    try:
        stub = rpc.InferenceStub(connect("localhost:{}".format(port), ca=cert))
        assert len(stub.Predict(encode_windows(raw_windows(built, 1)), timeout=TIMEOUT).predictions) == 1
    finally:
        server.stop(None)


def test_exposed_listen_refused_without_credentials_and_socket_private(model, tmp_path, capsys):
    from edge.cli import main as edge_main
    rc = edge_main(["serve", "--state-dir", str(tmp_path / "s"), "--listen", "0.0.0.0:0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--insecure" in err and "--listen-token-file" in err and "Traceback" not in err
    sock = str(tmp_path / "inference.sock")
    server, _ = serve_inference(ModelHolder(model[1]), "unix:" + sock)
    try:
        mode = stat.S_IMODE(os.stat(sock).st_mode)
        assert mode & 0o007 == 0, oct(mode)  # no access for others
    finally:
        server.stop(None)


def test_huge_finite_values_refused_never_nan(served):
    built, rt, stub = served
    for value in (3e38, -3e38, 1e30):
        w = raw_windows(built, 2)
        w["gyro"][:] = value
        w["gyro"][:, ::2] = 0.0  # not flat
        for call in (stub.Predict, stub.Embed):
            code, details = _code(lambda call=call, w=w: call(encode_windows(w), timeout=TIMEOUT))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("gyro:"), details
    resp = stub.Predict(encode_windows(raw_windows(built, 2)), timeout=TIMEOUT)
    assert all(np.isfinite(p.beta).all() and np.isfinite(p.proba).all() for p in resp.predictions)


def test_raw_and_repeated_forms_agree_and_malformed_raw_refused(served):
    built, rt, stub = served
    w = raw_windows(built, 3)
    compact = stub.Predict(encode_windows(w), timeout=TIMEOUT)
    old = stub.Predict(pb.PredictRequest(windows=[pb.ModalityWindows(
        modality=m, shape=list(a.shape), data=a.ravel().tolist()) for m, a in w.items()]), timeout=TIMEOUT)
    assert [list(p.proba) for p in compact.predictions] == [list(p.proba) for p in old.predictions]
    a = w["acc"]
    for bad in (pb.ModalityWindows(modality="acc", shape=list(a.shape), raw=a.tobytes()[:-1]),
                pb.ModalityWindows(modality="acc", shape=list(a.shape), raw=a.tobytes()[:-4]),
                pb.ModalityWindows(modality="acc", shape=list(a.shape), raw=a.astype("<f4").tobytes(),
                                   data=[1.0])):
        code, details = _code(lambda bad=bad: stub.Predict(pb.PredictRequest(windows=[bad]), timeout=TIMEOUT))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("acc:"), details


def test_streams_cannot_starve_predict_or_health(model):
    """64 StreamPredict streams held open by clients that send nothing: Predict and health still answer,
    and the 65th stream is refused at once (RESOURCE_EXHAUSTED), not queued."""
    built, rt = model
    server, port = serve_inference(ModelHolder(rt), "127.0.0.1:0", limits=EdgeLimits(max_streams=64))
    ch = grpc.insecure_channel("127.0.0.1:{}".format(port))
    stub = rpc.InferenceStub(ch)
    release = threading.Event()

    def silent():
        release.wait()
        return
        yield  # a request iterator that sends nothing until released
    calls = [stub.StreamPredict(silent(), timeout=60) for _ in range(64)]
    try:
        wait_until(lambda: server.servicer.streams == 64, 30, "64 streams to be open")
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        h = health_pb2_grpc.HealthStub(ch)
        req = encode_windows(raw_windows(built, 1))
        for _ in range(20):
            assert h.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT).status == \
                health_pb2.HealthCheckResponse.SERVING
            assert len(stub.Predict(req, timeout=TIMEOUT).predictions) == 1
        code, details = _code(lambda: list(stub.StreamPredict(silent(), timeout=TIMEOUT)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-streams 64" in details
    finally:
        release.set()
        for c in calls:
            c.cancel()
        server.stop(None)


def test_engine_cache_keyed_by_model_and_device(model, tmp_path):
    from edge.runtime import SessionSettings, device_key
    from shared.manifest import sha256_file
    built, _ = model
    onnx = os.path.join(built["dir"], "model.onnx")
    s = SessionSettings(engine_cache=str(tmp_path / "cache"))
    trt, cpu = s.provider_list(["TensorrtExecutionProvider", "CPUExecutionProvider"], onnx)
    assert cpu == "CPUExecutionProvider" and trt[0] == "TensorrtExecutionProvider"
    assert trt[1]["trt_engine_cache_enable"] is True
    assert trt[1]["trt_engine_cache_path"] == str(tmp_path / "cache" / "{}-{}".format(sha256_file(onnx)[:16],
                                                                                      device_key()))
    assert os.path.isdir(trt[1]["trt_engine_cache_path"])
    assert SessionSettings().provider_list(["TensorrtExecutionProvider"], onnx) == ["TensorrtExecutionProvider"]
    with pytest.raises(Exception) as e:
        SessionSettings(graph_optimization="max")
    assert "--graph-optimization" in str(e.value)


def test_intra_op_threads_sleep_between_inferences_when_asked():
    import onnxruntime as ort

    from edge.runtime import SessionSettings
    key = "session.intra_op.allow_spinning"
    assert SessionSettings(spin=False).session_options(ort).get_session_config_entry(key) == "0"
    with pytest.raises(RuntimeError, match="allow_spinning"):  # not set: ORT's default, spinning
        SessionSettings().session_options(ort).get_session_config_entry(key)


def test_relative_state_dir_stored_absolute(model, tmp_path, monkeypatch):
    from edge.agent import Agent
    built, _ = model
    import shutil
    monkeypatch.chdir(str(tmp_path))
    agent = Agent("state", "")
    shutil.copytree(built["dir"], agent.finetuned_dir("tiny", 3))
    agent.swap_to(agent.finetuned_dir("tiny", 3))
    monkeypatch.chdir("/")
    st = json.loads((tmp_path / "state" / "state.json").read_text())
    assert os.path.isabs(st["serving"]["path"])
    again = Agent(str(tmp_path / "state"), "")
    assert again.load_serving() is not None
