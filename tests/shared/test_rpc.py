"""shared.rpc: the checked-in descriptor set matches protos/, messages, real servers on loopback, and the
compatibility tier (docs/DESIGN.md): the stubs load and interoperate on Python 3.6 + grpcio 1.48 +
protobuf 3.19 (C++ and pure Python) as well as on the newest runtime.

This file is also the peer program the compatibility tests start in another interpreter, so it stays
Python 3.6 syntax and imports only what ``.venv36`` has (grpcio, protobuf, grpcio-health-checking,
grpcio-reflection, pytest)::

    python -m tests.shared.test_rpc call PORT   # act as a client of the server on 127.0.0.1:PORT
    python -m tests.shared.test_rpc serve       # serve on 127.0.0.1:0, print {"port": ...}, stop on EOF
"""
import functools
import hashlib
import json
import os
import select
import subprocess
import sys
from concurrent import futures
from typing import Dict, List, Optional, Tuple

import grpc
import pytest

from shared import rpc
from shared.rpc import pb

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV36_PY = os.path.join(ROOT, ".venv36", "bin", "python")
PB320_DIR = os.path.join(ROOT, ".venv36", "protobuf-3.20.3")  # scripts/check_py36.sh puts it there
TIMEOUT = 10.0  # seconds, per RPC and per peer start-up
BLOB = bytes(bytearray(i * 7 % 256 for i in range(1000)))  # the fake registry's one file
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()


# ------------------------------------------------------------------------------------ fake servicers

class FakeRegistry(object):
    """ModelRegistry that answers from constants (echo-like), with the status codes of docs/DESIGN.md."""

    def ListModels(self, request, context):
        name = request.name or "all"
        return pb.ListModelsResponse(versions=[
            pb.ModelVersion(name=name, version=v, aliases=["latest"] if v == 2 else [],
                            files=[pb.FileEntry(path="encoders.onnx", kind="onnx", size=len(BLOB),
                                                sha256=BLOB_SHA)])
            for v in (1, 2)])

    def GetManifest(self, request, context):
        ref = request.WhichOneof("ref")
        if ref is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ref: set version or alias")
        if ref == "version":
            return pb.ModelVersion(name=request.name, version=request.version)
        return pb.ModelVersion(name=request.name, version=7, aliases=[request.alias],
                               manifest_json=json.dumps({"alias": request.alias}))

    def Download(self, request, context):
        if request.offset > len(BLOB):
            context.abort(grpc.StatusCode.OUT_OF_RANGE, "offset: %d > size %d" % (request.offset, len(BLOB)))
        step = request.chunk_size or 300
        for off in range(request.offset, len(BLOB), step):
            yield pb.Chunk(offset=off, data=BLOB[off:off + step], size=len(BLOB), sha256=BLOB_SHA)

    def WatchModels(self, request, context):
        yield pb.ModelEvent(kind=pb.ModelEvent.PUBLISHED, name=request.name, version=3,
                            model=pb.ModelVersion(name=request.name, version=3))
        yield pb.ModelEvent(kind=pb.ModelEvent.ALIAS_MOVED, name=request.name, version=3, alias="stable")

    def ReportMetrics(self, request, context):
        total = sum(request.metrics.values()) + sum(s.wall_seconds for s in request.stages)
        return pb.ReportMetricsResponse(report_id=int(round(total * 1000)))


class FakeTraining(object):
    """Training with GetJob and WatchJob only: SubmitJob and CancelJob must answer UNIMPLEMENTED."""

    def GetJob(self, request, context):
        return pb.Job(id=request.id, state=pb.Job.RUNNING, progress=pb.JobProgress(epoch=1, epochs=3))

    def WatchJob(self, request, context):
        for state in (pb.Job.QUEUED, pb.Job.RUNNING, pb.Job.SUCCEEDED):
            yield pb.Job(id=request.id, state=state)


def streams_contract() -> rpc.Contract:
    """A contract with one RPC of each streaming kind (what inference.proto will need), built without
    protoc so that Python 3.6 peers can build it too."""
    from google.protobuf import descriptor_pb2 as d

    f = d.FileDescriptorProto(name="rpctest/v1/streams.proto", package="rpctest.v1", syntax="proto3")
    f.message_type.add(name="Num").field.add(name="value", json_name="value", number=1,
                                             type=d.FieldDescriptorProto.TYPE_INT64,
                                             label=d.FieldDescriptorProto.LABEL_OPTIONAL)
    svc = f.service.add(name="Streams")
    for name, cs, ss in (("Square", False, False), ("Count", False, True), ("Sum", True, False),
                         ("Double", True, True)):
        svc.method.add(name=name, input_type=".rpctest.v1.Num", output_type=".rpctest.v1.Num",
                       client_streaming=cs, server_streaming=ss)
    return rpc.Contract(d.FileDescriptorSet(file=[f]).SerializeToString())


class FakeStreams(object):
    def __init__(self, contract: rpc.Contract) -> None:
        self.Num = contract.message_class("rpctest.v1.Num")

    def Square(self, request, context):
        return self.Num(value=request.value ** 2)

    def Count(self, request, context):
        for i in range(request.value):
            yield self.Num(value=i)

    def Sum(self, request_iterator, context):
        return self.Num(value=sum(r.value for r in request_iterator))

    def Double(self, request_iterator, context):
        for r in request_iterator:
            yield self.Num(value=2 * r.value)


def serve(max_workers: int = 4) -> Tuple[grpc.Server, int]:
    """ModelRegistry, Training, rpctest Streams, health and reflection on 127.0.0.1 (a free port)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    rpc.add_ModelRegistryServicer_to_server(FakeRegistry(), server)
    rpc.add_TrainingServicer_to_server(FakeTraining(), server)
    streams = streams_contract()
    rpc.add_servicer_to_server("rpctest.v1.Streams", FakeStreams(streams), server, contract=streams)
    rpc.add_health(server)
    rpc.enable_reflection(server, extra_service_names=["grpc.health.v1.Health"])
    port = server.add_insecure_port("127.0.0.1:0")
    assert port, "could not bind 127.0.0.1:0"
    server.start()
    return server, port


def runtime_info() -> Dict[str, str]:
    from google import protobuf
    from google.protobuf.internal import api_implementation

    return {"python": "%d.%d.%d" % sys.version_info[:3], "grpc": grpc.__version__,
            "protobuf": protobuf.__version__, "impl": api_implementation.Type()}


# ------------------------------------------------------------------- client checks (both interpreters)

def _code(fn) -> Optional[grpc.StatusCode]:
    try:
        fn()
    except grpc.RpcError as e:
        return e.code()
    return None


def exercise_registry(channel: grpc.Channel) -> List[str]:
    """Every ModelRegistry RPC (unary and server-streaming) plus error codes; returns what was checked."""
    stub = rpc.ModelRegistryStub(channel)
    resp = stub.ListModels(pb.ListModelsRequest(name="cosmo"), timeout=TIMEOUT)
    assert [(v.name, v.version, list(v.aliases)) for v in resp.versions] == \
        [("cosmo", 1, []), ("cosmo", 2, ["latest"])], resp
    assert resp.versions[0].files[0].sha256 == BLOB_SHA

    by_alias = stub.GetManifest(pb.GetManifestRequest(name="cosmo", alias="stable"), timeout=TIMEOUT)
    assert (by_alias.version, list(by_alias.aliases)) == (7, ["stable"])
    assert json.loads(by_alias.manifest_json) == {"alias": "stable"}
    assert stub.GetManifest(pb.GetManifestRequest(name="cosmo", version=4), timeout=TIMEOUT).version == 4
    assert _code(lambda: stub.GetManifest(pb.GetManifestRequest(name="cosmo"), timeout=TIMEOUT)) \
        == grpc.StatusCode.INVALID_ARGUMENT

    chunks = list(stub.Download(pb.DownloadRequest(name="cosmo", version=2, file="encoders.onnx",
                                                   chunk_size=300), timeout=TIMEOUT))
    assert [c.offset for c in chunks] == [0, 300, 600, 900]
    data = b"".join(c.data for c in chunks)
    assert data == BLOB and hashlib.sha256(data).hexdigest() == chunks[-1].sha256
    resumed = list(stub.Download(pb.DownloadRequest(name="cosmo", version=2, file="encoders.onnx",
                                                    offset=700), timeout=TIMEOUT))
    assert b"".join(c.data for c in resumed) == BLOB[700:]
    assert _code(lambda: list(stub.Download(pb.DownloadRequest(offset=5000), timeout=TIMEOUT))) \
        == grpc.StatusCode.OUT_OF_RANGE

    events = list(stub.WatchModels(pb.WatchModelsRequest(name="cosmo"), timeout=TIMEOUT))
    assert [(e.kind, e.alias) for e in events] == [(pb.ModelEvent.PUBLISHED, ""),
                                                   (pb.ModelEvent.ALIAS_MOVED, "stable")]
    assert events[0].model.version == 3 and not events[1].HasField("model")

    req = pb.ReportMetricsRequest(edge_id="tx2-1", name="cosmo", version=2, execution_provider="CUDA",
                                  stages=[pb.StageMetric(stage="finetune", wall_seconds=1.5)])
    req.metrics["val_accuracy"] = 0.25
    assert stub.ReportMetrics(req, timeout=TIMEOUT).report_id == 1750

    training = rpc.TrainingStub(channel)
    assert training.GetJob(pb.JobRef(id="j1"), timeout=TIMEOUT).state == pb.Job.RUNNING
    assert [j.state for j in training.WatchJob(pb.JobRef(id="j1"), timeout=TIMEOUT)] == \
        [pb.Job.QUEUED, pb.Job.RUNNING, pb.Job.SUCCEEDED]
    assert _code(lambda: training.SubmitJob(pb.SubmitJobRequest(kind="pretrain"), timeout=TIMEOUT)) \
        == grpc.StatusCode.UNIMPLEMENTED
    return ["ListModels", "GetManifest", "Download", "WatchModels", "ReportMetrics", "GetJob", "WatchJob"]


def exercise_streams(channel: grpc.Channel) -> List[str]:
    """One RPC of each kind: unary_unary, unary_stream, stream_unary, stream_stream."""
    contract = streams_contract()
    Num = contract.message_class("rpctest.v1.Num")
    stub = rpc.Stub(channel, "Streams", contract)
    nums = [Num(value=v) for v in (1, 2, 3)]
    assert stub.Square(Num(value=12), timeout=TIMEOUT).value == 144
    assert [n.value for n in stub.Count(Num(value=3), timeout=TIMEOUT)] == [0, 1, 2]
    assert stub.Sum(iter(nums), timeout=TIMEOUT).value == 6
    assert [n.value for n in stub.Double(iter(nums), timeout=TIMEOUT)] == [2, 4, 6]
    return [m.kind for m in rpc.methods("Streams", contract)]


def _peer_main(argv: List[str]) -> int:
    if argv[:1] == ["call"] and len(argv) == 2:
        channel = grpc.insecure_channel("127.0.0.1:%d" % int(argv[1]))
        grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
        checked = exercise_registry(channel) + exercise_streams(channel)
        channel.close()
        print(json.dumps({"runtime": runtime_info(), "checked": checked}))
        return 0
    if argv == ["serve"]:
        server, port = serve()
        print(json.dumps({"runtime": runtime_info(), "port": port}))
        sys.stdout.flush()
        sys.stdin.read()  # the parent closes our stdin when it is done
        server.stop(0)
        return 0
    print("usage: python -m tests.shared.test_rpc call PORT | serve", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------------- drift, messages

def _gen_protos():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_protos", os.path.join(ROOT, "scripts", "gen_protos.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_checked_in_descriptors_match_protos():
    pytest.importorskip("grpc_tools", reason="grpcio-tools compiles the .proto files")
    proc = subprocess.run([sys.executable, os.path.join("scripts", "gen_protos.py"), "--check"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout
    assert "up to date" in proc.stdout


def test_gen_protos_output_is_byte_stable_and_reads_back():
    pytest.importorskip("grpc_tools", reason="grpcio-tools compiles the .proto files")
    gen = _gen_protos()
    assert gen.generate() == gen.generate()
    every_byte = bytes(bytearray(range(256))) + b'"\\\\x41"'  # escapes next to hex-looking text
    ns = {}  # type: dict
    exec("x = (\n" + "\n".join(gen.bytes_literal_lines(every_byte, width=9)) + ")", ns)
    assert ns["x"] == every_byte
    assert gen.bytes_literal_lines(b"") == ['b""']


def test_pb_namespace():
    names = dir(pb)
    assert {"ListModelsRequest", "GetManifestRequest", "Chunk", "ModelEvent", "ReportMetricsRequest",
            "Job", "JobRef", "SubmitJobRequest"} <= set(names)
    assert rpc.SERVICE_NAMES == ("cosmo.v1.Inference", "cosmo.v1.ModelRegistry", "cosmo.v1.Training")
    assert pb.Chunk.DESCRIPTOR.full_name == "cosmo.v1.Chunk"
    assert pb.Chunk is rpc.message_class("cosmo.v1.Chunk")
    assert rpc.descriptor_pool().FindServiceByName("cosmo.v1.Training").methods_by_name["WatchJob"]
    with pytest.raises(AttributeError, match="NoSuchMessage"):
        pb.NoSuchMessage  # noqa: B018 (the access is the test)
    assert [(m.name, m.kind) for m in rpc.methods("ModelRegistry")] == [
        ("ListModels", "unary_unary"), ("GetManifest", "unary_unary"), ("Download", "unary_stream"),
        ("WatchModels", "unary_stream"), ("ReportMetrics", "unary_unary"), ("SetAlias", "unary_unary"),
        ("PinVersion", "unary_unary"), ("DeleteVersion", "unary_unary"), ("ListReports", "unary_unary")]
    assert [(m.name, m.kind) for m in rpc.methods("Inference")] == [
        ("Predict", "unary_unary"), ("Embed", "unary_unary"), ("StreamPredict", "stream_stream"),
        ("Info", "unary_unary"), ("Search", "unary_unary")]
    with pytest.raises(KeyError, match="NoSuchService"):
        rpc.methods("NoSuchService")


def test_messages_round_trip():
    mv = pb.ModelVersion(name="cosmo", version=3, aliases=["latest", "stable"], created_at="2024-01-01T00:00:00Z",
                         files=[pb.FileEntry(path="encoders.onnx", kind="onnx", size=10, sha256="ab" * 32)],
                         manifest_json='{"feature_dim": 128}')
    assert pb.ModelVersion.FromString(mv.SerializeToString()) == mv
    chunk = pb.Chunk(offset=5, data=bytes(bytearray(range(256))), size=300, sha256="00")
    assert pb.Chunk.FromString(chunk.SerializeToString()).data == chunk.data

    # oneof ref: setting one member clears the other
    req = pb.GetManifestRequest(name="cosmo", version=4)
    assert req.WhichOneof("ref") == "version"
    req.alias = "stable"
    assert req.WhichOneof("ref") == "alias" and req.version == 0
    back = pb.GetManifestRequest.FromString(req.SerializeToString())
    assert (back.WhichOneof("ref"), back.alias) == ("alias", "stable")
    assert pb.GetManifestRequest(name="x").WhichOneof("ref") is None

    # map<string, double> metrics
    rep = pb.ReportMetricsRequest(edge_id="tx2", metrics={"val_accuracy": 0.875, "test_macro_f1": 0.5},
                                  stages=[pb.StageMetric(stage="download", energy_joules=2.5)])
    rep.metrics["latency_ms"] = 12.0
    back = pb.ReportMetricsRequest.FromString(rep.SerializeToString(deterministic=True))
    assert dict(back.metrics) == {"val_accuracy": 0.875, "test_macro_f1": 0.5, "latency_ms": 12.0}
    assert back.stages[0].energy_joules == 2.5

    # nested enums, as gencode exposes them
    assert (pb.Job.SUCCEEDED, pb.Job.State.Name(pb.Job.CANCELLED)) == (3, "CANCELLED")
    assert pb.ModelEvent.Kind.Value("PUBLISHED") == pb.ModelEvent.PUBLISHED == 1
    job = pb.Job(id="j", state=pb.Job.FAILED, progress=pb.JobProgress(stage="pretrain", loss=0.5))
    assert pb.Job.FromString(job.SerializeToString()) == job
    with pytest.raises(ValueError):
        pb.ModelEvent.Kind.Value("NOPE")


def test_nested_messages_are_class_attributes():
    from google.protobuf import descriptor_pb2 as d

    f = d.FileDescriptorProto(name="n.proto", package="n", syntax="proto3")
    outer = f.message_type.add(name="Outer")
    outer.nested_type.add(name="Inner").field.add(name="x", json_name="x", number=1,
                                                  type=d.FieldDescriptorProto.TYPE_INT32,
                                                  label=d.FieldDescriptorProto.LABEL_OPTIONAL)
    outer.field.add(name="inner", json_name="inner", number=1, type=d.FieldDescriptorProto.TYPE_MESSAGE,
                    type_name=".n.Outer.Inner", label=d.FieldDescriptorProto.LABEL_OPTIONAL)
    c = rpc.Contract(d.FileDescriptorSet(file=[f]).SerializeToString())
    Outer = c.symbols["Outer"]
    msg = Outer(inner=Outer.Inner(x=3))
    assert Outer.FromString(msg.SerializeToString()).inner.x == 3


# ---------------------------------------------------------------------------- servers (newest runtime)

@pytest.fixture(scope="module")
def live():
    """(channel, port) of a server in this process: the newest grpcio and protobuf."""
    server, port = serve()
    ch = grpc.insecure_channel("127.0.0.1:%d" % port)
    grpc.channel_ready_future(ch).result(timeout=TIMEOUT)
    yield ch, port
    ch.close()
    server.stop(0)


@pytest.fixture
def channel(live):
    return live[0]


def test_registry_rpcs(channel):
    exercise_registry(channel)


def test_every_streaming_kind(channel):
    assert exercise_streams(channel) == ["unary_unary", "unary_stream", "stream_unary", "stream_stream"]


def test_unknown_method_is_unimplemented(channel):
    call = channel.unary_unary("/cosmo.v1.ModelRegistry/NoSuchRpc")
    assert _code(lambda: call(b"", timeout=TIMEOUT)) == grpc.StatusCode.UNIMPLEMENTED
    call = channel.unary_unary("/cosmo.v1.NoSuchService/ListModels")
    assert _code(lambda: call(b"", timeout=TIMEOUT)) == grpc.StatusCode.UNIMPLEMENTED


def test_servicer_without_any_rpc_is_rejected():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    with pytest.raises(ValueError, match="ListModels"):
        rpc.add_ModelRegistryServicer_to_server(FakeTraining(), server)
    with pytest.raises(KeyError, match="Nope"):
        rpc.add_servicer_to_server("cosmo.v1.Nope", FakeRegistry(), server)


def check_reflection_and_health(channel: grpc.Channel) -> None:
    """Reflection lists every service and describes ours and health's; health answers per service."""
    from google.protobuf import descriptor_pb2
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2 as r
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    reqs = [r.ServerReflectionRequest(list_services="*"),
            r.ServerReflectionRequest(file_containing_symbol="cosmo.v1.ModelRegistry"),
            r.ServerReflectionRequest(file_by_filename="cosmo/v1/training.proto"),
            r.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health"),
            r.ServerReflectionRequest(file_containing_symbol="cosmo.v1.NoSuchThing")]
    out = list(stub.ServerReflectionInfo(iter(reqs), timeout=TIMEOUT))
    listed = {s.name for s in out[0].list_services_response.service}
    assert {"cosmo.v1.ModelRegistry", "cosmo.v1.Training", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= listed, listed
    files = [descriptor_pb2.FileDescriptorProto.FromString(o.file_descriptor_response.file_descriptor_proto[0])
             for o in out[1:4]]
    assert [f.name for f in files[:2]] == ["cosmo/v1/registry.proto", "cosmo/v1/training.proto"]
    assert [s.name for s in files[0].service] == ["ModelRegistry"]
    assert files[2].package == "grpc.health.v1"
    assert out[4].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]

    health = health_pb2_grpc.HealthStub(channel)
    for name in ("",) + rpc.SERVICE_NAMES:
        resp = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, name
    assert _code(lambda: health.Check(health_pb2.HealthCheckRequest(service="cosmo.v1.Nope"),
                                      timeout=TIMEOUT)) == grpc.StatusCode.NOT_FOUND


def test_reflection_and_health(channel):
    pytest.importorskip("grpc_reflection")
    pytest.importorskip("grpc_health")
    check_reflection_and_health(channel)


# --------------------------------------------------------- compatibility: another interpreter/runtime

# (interpreter, protobuf implementation, directory shadowing its protobuf); impl "" keeps the runtime's
# default (C++ for the 3.19 wheel). protobuf 3.20.3 is pure Python on 3.6: no wheel with C++ for it.
PEERS = {
    "py36-pb319-cpp": (VENV36_PY, "", ""),
    "py36-pb319-python": (VENV36_PY, "python", ""),
    "py36-pb320-python": (VENV36_PY, "python", PB320_DIR),
    "newest-python-impl": (sys.executable, "python", ""),
}


def _peer_env(impl: str, shadow: str) -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (shadow, ROOT) if p))
    env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
    if impl:
        env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = impl
    return env


@functools.lru_cache(maxsize=None)
def _venv36_has_grpc() -> bool:
    probe = subprocess.run([VENV36_PY, "-c", "import grpc, grpc_health, grpc_reflection, google.protobuf"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    return probe.returncode == 0


@pytest.fixture(params=sorted(PEERS))
def peer(request):
    """(python, impl, shadow) of a peer; skipped when .venv36 or its gRPC packages are missing."""
    python, impl, shadow = PEERS[request.param]
    if shadow and not os.path.isdir(shadow):
        pytest.skip("no %s: run scripts/check_py36.sh" % os.path.relpath(shadow, ROOT))
    if python == VENV36_PY:
        if not os.path.exists(VENV36_PY):
            pytest.skip("no .venv36: run scripts/check_py36.sh (needs a Python 3.6 interpreter)")
        if not _venv36_has_grpc():
            pytest.skip(".venv36 lacks grpcio/protobuf/grpcio-health-checking/grpcio-reflection: run "
                        "scripts/check_py36.sh (it pins grpcio 1.48.2, protobuf 3.19.6)")
    return python, impl, shadow


def _check_runtime(info: Dict[str, str], python: str, impl: str, shadow: str) -> None:
    assert info["impl"] == (impl or info["impl"]), info
    if python == VENV36_PY:  # the Jetson TX2 tier really ran
        assert info["python"].startswith("3.6.") and info["protobuf"].startswith("3."), info
        assert info["grpc"].startswith("1.48."), info
    if shadow:
        assert info["protobuf"] == os.path.basename(shadow).split("-")[-1], info


def test_peer_client_calls_this_server(peer, live):
    python, impl, shadow = peer
    port = live[1]
    proc = subprocess.run([python, "-m", "tests.shared.test_rpc", "call", str(port)], cwd=ROOT,
                          env=_peer_env(impl, shadow), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    _check_runtime(res["runtime"], python, impl, shadow)
    assert res["checked"][-4:] == ["unary_unary", "unary_stream", "stream_unary", "stream_stream"]


def test_this_client_calls_peer_server(peer):
    python, impl, shadow = peer
    proc = subprocess.Popen([python, "-m", "tests.shared.test_rpc", "serve"], cwd=ROOT,
                            env=_peer_env(impl, shadow),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        assert line, "peer server did not start:\n" + (proc.stderr.read()[-4000:] if proc.poll() is not None
                                                      else "(no output in 60 s)")
        res = json.loads(line)
        _check_runtime(res["runtime"], python, impl, shadow)
        ch = grpc.insecure_channel("127.0.0.1:%d" % res["port"])
        try:
            grpc.channel_ready_future(ch).result(timeout=TIMEOUT)
            exercise_registry(ch)
            exercise_streams(ch)
            check_reflection_and_health(ch)  # grpcio-reflection's pool= on the peer's version
        finally:
            ch.close()
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == 0


if __name__ == "__main__":
    sys.exit(_peer_main(sys.argv[1:]))


@pytest.mark.parametrize("fields", [(0, b"", 0, ""), (5, b"abc", 10, "ff" * 32), (1 << 40, bytes(300), 1 << 41, "a"),
                                    (0, b"x" * 200000, 3, ""), (-1, b"\x00", 0, "z")])
def test_chunk_wire_form_matches_protobuf(fields):
    from shared.rpc import pb
    from shared.rpc.chunks import decode_chunk, encode_chunk, encode_chunk_into
    offset, data, size, sha = fields
    wire = pb.Chunk(offset=offset, data=data, size=size, sha256=sha).SerializeToString()
    assert encode_chunk(*fields) == wire

    def fill(view, n=len(data)):
        view[:n] = data[:n]
        return n
    assert encode_chunk_into(offset, len(data), size, sha, fill) == wire  # data written in place
    if data:  # a short fill (the end of a file) gives the message of what it wrote
        cut = pb.Chunk(offset=offset, data=data[:-1], size=size, sha256=sha).SerializeToString()
        assert encode_chunk_into(offset, len(data), size, sha, lambda v: fill(v, len(data) - 1)) == cut
    got = decode_chunk(wire)
    assert (got[0], bytes(got[1]), got[2], got[3]) == fields
    with pytest.raises(ValueError, match="Chunk"):
        decode_chunk(wire + b"\x12\x05ab")  # a field running past the end
    extra = wire + b"\x28\x07" + b"\x32\x02hi"  # unknown fields 5 (varint) and 6 (bytes) are skipped
    assert decode_chunk(extra)[2] == size


def test_refusal_log_levels():
    """Both daemons log a refusal by what it is: a state (busy, no model yet, not published yet: one per call
    when a client polls or a fleet overloads, counted by the metrics) at DEBUG, a client's mistake at
    WARNING."""
    import logging

    import grpc

    from shared.rpc import refusal_log_level
    for code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
        assert refusal_log_level(code) == logging.DEBUG
    assert refusal_log_level(grpc.StatusCode.INVALID_ARGUMENT) == logging.WARNING
