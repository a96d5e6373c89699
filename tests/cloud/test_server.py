"""The cloud daemon over a real gRPC server on 127.0.0.1:0, with a real registry and job workers."""
import json
import os
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cloud.server import CloudServer
from shared.client import VerificationError, connect, download_file, pull, submit_job, wait_job
from shared.rpc import ModelRegistryStub, TrainingStub, pb
from tests.util import self_signed as _self_signed

TINY = {"epochs": 2, "encoder_widths": [8, 8, 8], "out_steps": 4, "proj_hidden": 32, "batch_size": 32,
        "labels_per_class": 2, "model_name": "tiny"}


def _publish(reg, tmp_path, name="m", size=3_000_000, seed=0):
    import numpy as np
    data = np.random.RandomState(seed).bytes(size)
    p = tmp_path / "blob{}.bin".format(seed)
    p.write_bytes(data)
    man = {"format": "cosmo-har/manifest", "input_schema": {}, "classes": ["a"], "quality": None}
    return reg.publish(name, {"weights.bin": (str(p), "state_dict")}, man), data


@pytest.fixture()
def server(tmp_path):
    srv = CloudServer(str(tmp_path / "data"), "127.0.0.1:0", max_jobs=1, max_queued=1)
    port = srv.start()
    ch = grpc.insecure_channel("127.0.0.1:{}".format(port))
    yield srv, ch
    ch.close()
    srv.stop(grace=1)


def _code(fn, *a, **k):
    with pytest.raises(grpc.RpcError) as e:
        r = fn(*a, **k)
        if hasattr(r, "__iter__") and not hasattr(r, "ListFields"):
            list(r)
    return e.value.code(), e.value.details()


def test_registry_rpcs(server, tmp_path):
    srv, ch = server
    stub = ModelRegistryStub(ch)
    m1, _ = _publish(srv.registry, tmp_path, seed=1)
    m2, _ = _publish(srv.registry, tmp_path, seed=2)
    versions = stub.ListModels(pb.ListModelsRequest()).versions
    assert [v.version for v in versions] == [1, 2]
    latest = stub.GetManifest(pb.GetManifestRequest(name="m", alias="latest"))
    assert latest.version == 2 and "latest" in latest.aliases
    assert json.loads(latest.manifest_json)["files"][0]["sha256"] == latest.files[0].sha256
    assert stub.GetManifest(pb.GetManifestRequest(name="m", version=1)).version == 1
    code, msg = _code(stub.GetManifest, pb.GetManifestRequest(name="m", version=9))
    assert code == grpc.StatusCode.NOT_FOUND and "9" in msg
    assert _code(stub.GetManifest, pb.GetManifestRequest(name="nope", alias="latest"))[0] == grpc.StatusCode.NOT_FOUND
    assert _code(stub.GetManifest, pb.GetManifestRequest(name="m", alias="stable"))[0] == grpc.StatusCode.NOT_FOUND
    size = latest.files[0].size
    code, _ = _code(stub.Download, pb.DownloadRequest(name="m", version=2, file="weights.bin", offset=size + 1))
    assert code == grpc.StatusCode.OUT_OF_RANGE
    code, msg = _code(stub.Download, pb.DownloadRequest(name="m", version=2, file="weights.bin", chunk_size=8 << 20))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "chunk_size" in msg
    assert _code(stub.Download, pb.DownloadRequest(name="m", version=2, file="x.bin"))[0] == grpc.StatusCode.NOT_FOUND
    # the server still serves after all those bad requests
    assert len(stub.ListModels(pb.ListModelsRequest(name="m")).versions) == 2


class _Dropped(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "connection dropped (test)"


class _FlakyStub(object):
    """Drops the first Download stream after ``after`` chunks, like a broken connection."""

    def __init__(self, stub, after):
        self.stub, self.after, self.requests = stub, after, []

    def Download(self, req, timeout=None):
        self.requests.append((req.offset, req.chunk_size))
        it = self.stub.Download(req, timeout=timeout)
        for i, chunk in enumerate(it):
            if len(self.requests) == 1 and i == self.after:
                it.cancel()
                raise _Dropped()
            yield chunk


def test_interrupted_download_resumes_with_only_the_remainder(server, tmp_path):
    srv, ch = server
    man, data = _publish(srv.registry, tmp_path, size=3_500_000, seed=3)
    f = man["files"][0]
    flaky = _FlakyStub(ModelRegistryStub(ch), after=2)
    dest = str(tmp_path / "got" / "weights.bin")
    info = download_file(flaky, "m", man["version"], "weights.bin", dest, f["size"], f["sha256"],
                         chunk_size=1 << 20, backoff_s=0.01)
    assert open(dest, "rb").read() == data
    assert [r[0] for r in flaky.requests] == [0, 2 << 20]
    assert info["bytes_received"] == len(data)  # 2 MiB before the drop + the remainder after it
    assert info["attempts"] == 2
    # a second, fresh transfer that starts from a half file only asks for the remainder
    half = len(data) // 2
    dest2 = str(tmp_path / "got2" / "weights.bin")
    os.makedirs(os.path.dirname(dest2))
    open(dest2 + ".part", "wb").write(data[:half])
    info2 = download_file(ModelRegistryStub(ch), "m", man["version"], "weights.bin", dest2, f["size"], f["sha256"])
    assert info2["resumed_from"] == half and info2["bytes_received"] == len(data) - half
    assert open(dest2, "rb").read() == data


def test_corrupted_blob_is_data_loss_and_never_installed(server, tmp_path):
    srv, ch = server
    man, _ = _publish(srv.registry, tmp_path, size=100_000, seed=4)
    path, _, _ = srv.registry.open_blob("m", man["version"], "weights.bin")
    os.chmod(path, 0o644)
    with open(path, "r+b") as fh:
        fh.seek(5000)
        b = fh.read(1)
        fh.seek(5000)
        fh.write(bytes([b[0] ^ 0xFF]))
    code, msg = _code(ModelRegistryStub(ch).Download, pb.DownloadRequest(name="m", version=man["version"],
                                                                         file="weights.bin"))
    assert code == grpc.StatusCode.DATA_LOSS and "weights.bin" in msg
    with pytest.raises((grpc.RpcError, VerificationError)):
        pull(ch, "m", str(tmp_path / "edge"), version=man["version"], retries=0)
    assert not os.path.exists(str(tmp_path / "edge" / "m" / "v{}".format(man["version"])))


def test_pull_installs_verified_version_atomically(server, tmp_path):
    srv, ch = server
    man, data = _publish(srv.registry, tmp_path, size=1_200_000, seed=5)
    folder, got = pull(ch, "m", str(tmp_path / "edge"))
    assert got["version"] == man["version"] and open(os.path.join(folder, "weights.bin"), "rb").read() == data
    assert json.load(open(os.path.join(folder, "manifest.json")))["version"] == man["version"]


def test_watch_models_pushes_publish_and_alias_events(server, tmp_path):
    srv, ch = server
    _publish(srv.registry, tmp_path, seed=6)
    stream = ModelRegistryStub(ch).WatchModels(pb.WatchModelsRequest(name="m", send_current=True))
    first = next(stream)
    assert first.kind == pb.ModelEvent.CURRENT and first.version == 1
    _publish(srv.registry, tmp_path, seed=7)
    ev = next(stream)
    assert ev.kind == pb.ModelEvent.PUBLISHED and ev.version == 2 and ev.model.version == 2
    srv.registry.set_alias("m", "stable", 1)
    kinds = set()
    for _ in range(2):
        e = next(stream)
        kinds.add((e.kind, e.alias, e.version))
        if e.kind == pb.ModelEvent.ALIAS_MOVED and e.alias == "stable":
            break
    assert (pb.ModelEvent.ALIAS_MOVED, "stable", 1) in kinds
    stream.cancel()


def test_report_metrics(server, tmp_path):
    srv, ch = server
    _publish(srv.registry, tmp_path, seed=8)
    stub = ModelRegistryStub(ch)
    req = pb.ReportMetricsRequest(edge_id="tx2-01", name="m", version=1, device="jetson-tx2",
                                  execution_provider="CUDAExecutionProvider",
                                  stages=[pb.StageMetric(stage="finetune", wall_seconds=12.5, energy_joules=80.0,
                                                         energy_source="tegrastats")])
    req.metrics["val_accuracy"] = 0.91
    rid = stub.ReportMetrics(req).report_id
    assert rid > 0
    reports = srv.registry.list_reports(name="m")
    assert reports[0]["edge_id"] == "tx2-01" and reports[0]["metrics"]["val_accuracy"] == pytest.approx(0.91)
    assert _code(stub.ReportMetrics, pb.ReportMetricsRequest(name="m", version=1))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(stub.ReportMetrics, pb.ReportMetricsRequest(edge_id="e", name="m", version=5))[0] == \
        grpc.StatusCode.NOT_FOUND


def test_jobs_validate_run_publish_and_survive_restart(tmp_path):
    data = str(tmp_path / "data")
    srv = CloudServer(data, "127.0.0.1:0", max_jobs=1, max_queued=0)
    ch = grpc.insecure_channel("127.0.0.1:{}".format(srv.start()))
    stub = TrainingStub(ch)
    try:
        code, msg = _code(stub.SubmitJob, pb.SubmitJobRequest(kind="pretrain", dataset="synthetic",
                                                              config_json='{"epochz": 3}'))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "epochz" in msg
        code, msg = _code(stub.SubmitJob, pb.SubmitJobRequest(kind="train", dataset="synthetic"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "kind" in msg
        job = submit_job(ch, "pretrain", "synthetic", TINY)
        code, _ = _code(stub.SubmitJob, pb.SubmitJobRequest(kind="pretrain", dataset="synthetic",
                                                            config_json=json.dumps(TINY)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        seen = []
        final = wait_job(ch, job.id, on_update=seen.append, timeout_s=240)
        assert final.state == pb.Job.SUCCEEDED, final.error
        assert final.model_name == "tiny" and final.model_version == 1
        assert any(j.progress.stage == "pretrain" and j.progress.epochs == 2 for j in seen)
        man = json.loads(ModelRegistryStub(ch).GetManifest(pb.GetManifestRequest(name="tiny", alias="latest")).manifest_json)
        kinds = {f["path"]: f["kind"] for f in man["files"]}
        assert kinds["encoders.pt"] == "state_dict" and kinds["encoder_a.onnx"] == "onnx"
        assert len(man["quality"]["q"]) == 2
    finally:
        ch.close()
        srv.stop(grace=1)
    # restart on the same data dir: same versions, same job outcome
    srv2 = CloudServer(data, "127.0.0.1:0")
    ch2 = grpc.insecure_channel("127.0.0.1:{}".format(srv2.start()))
    try:
        assert [v.version for v in ModelRegistryStub(ch2).ListModels(pb.ListModelsRequest()).versions] == [1]
        j = TrainingStub(ch2).GetJob(pb.JobRef(id=job.id))
        assert j.state == pb.Job.SUCCEEDED and j.model_version == 1
    finally:
        ch2.close()
        srv2.stop(grace=1)


def test_cancel_mid_epoch(server):
    srv, ch = server
    job = submit_job(ch, "pretrain", "synthetic", dict(TINY, epochs=500))
    stub = TrainingStub(ch)
    deadline = time.time() + 120
    while time.time() < deadline:
        j = stub.GetJob(pb.JobRef(id=job.id))
        if j.progress.stage == "pretrain" and j.progress.epoch >= 1:
            break
        time.sleep(0.2)
    assert j.progress.stage == "pretrain", (j.progress, j.error)
    cancelled = stub.CancelJob(pb.JobRef(id=job.id))
    assert cancelled.state == pb.Job.CANCELLED
    time.sleep(0.5)
    assert stub.GetJob(pb.JobRef(id=job.id)).state == pb.Job.CANCELLED
    assert not srv.registry.list_versions()


def test_token_health_and_reflection(tmp_path):
    srv = CloudServer(str(tmp_path / "d"), "127.0.0.1:0", token="s3cret")
    port = srv.start()
    target = "127.0.0.1:{}".format(port)
    try:
        for ch in (grpc.insecure_channel(target), connect(target, token="wrong")):
            code, _ = _code(ModelRegistryStub(ch).ListModels, pb.ListModelsRequest())
            assert code == grpc.StatusCode.UNAUTHENTICATED
            code, _ = _code(ModelRegistryStub(ch).Download, pb.DownloadRequest(name="m", version=1, file="f"))
            assert code == grpc.StatusCode.UNAUTHENTICATED
        ok = connect(target, token="s3cret")
        assert list(ModelRegistryStub(ok).ListModels(pb.ListModelsRequest()).versions) == []
        h = health_pb2_grpc.HealthStub(grpc.insecure_channel(target))
        assert h.Check(health_pb2.HealthCheckRequest(service="cosmo.v1.ModelRegistry")).status == \
            health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
        ask = [reflection_pb2.ServerReflectionRequest(list_services="")]
        anon = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(target))
        with pytest.raises(grpc.RpcError) as e:  # reflection tells what the daemon serves: behind the token
            next(anon.ServerReflectionInfo(iter(ask)))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        r = reflection_pb2_grpc.ServerReflectionStub(ok)
        resp = next(r.ServerReflectionInfo(iter(ask)))
        names = {s.name for s in resp.list_services_response.service}
        assert {"cosmo.v1.ModelRegistry", "cosmo.v1.Training"} <= names
        # shutdown: health turns NOT_SERVING before the server stops taking RPCs
        watch = h.Watch(health_pb2.HealthCheckRequest(service="cosmo.v1.Training"))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        import threading
        threading.Thread(target=srv.stop, kwargs={"grace": 2}).start()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        srv.stop(grace=1)


def test_tls_and_mutual_tls(tmp_path):
    from shared.rpc.auth import server_credentials as credentials
    cert, key = _self_signed(tmp_path, "server")
    srv = CloudServer(str(tmp_path / "d"), "127.0.0.1:0", tls=credentials(cert, key, None))
    target = "localhost:{}".format(srv.start())
    try:
        ok = connect(target, ca=cert)
        assert list(ModelRegistryStub(ok).ListModels(pb.ListModelsRequest(), timeout=10).versions) == []
        code, _ = _code(ModelRegistryStub(grpc.insecure_channel(target)).ListModels, pb.ListModelsRequest(),
                        timeout=5)
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)
    finally:
        srv.stop(grace=1)
    ccert, ckey = _self_signed(tmp_path, "client")
    srv = CloudServer(str(tmp_path / "d2"), "127.0.0.1:0", tls=credentials(cert, key, ccert))
    target = "localhost:{}".format(srv.start())
    try:
        mutual = connect(target, ca=cert, cert=ccert, key=ckey)
        assert list(ModelRegistryStub(mutual).ListModels(pb.ListModelsRequest(), timeout=10).versions) == []
        code, _ = _code(ModelRegistryStub(connect(target, ca=cert)).ListModels, pb.ListModelsRequest(), timeout=5)
        assert code == grpc.StatusCode.UNAVAILABLE  # no client certificate: the handshake fails
    finally:
        srv.stop(grace=1)


def test_list_jobs_and_id_prefixes(server, capsys):
    from cloud.cli import main as cloud_main
    srv, ch = server
    reg = srv.registry
    a = reg.create_job("quality", "synthetic", "{}")
    b = reg.create_job("quality", "synthetic", "{}")
    reg.update_job(a["id"], state="CANCELLED")
    stub = TrainingStub(ch)
    jobs = stub.ListJobs(pb.ListJobsRequest()).jobs
    assert [j.id for j in jobs[:2]] == [b["id"], a["id"]] and not jobs[0].config_json  # newest first
    only = stub.ListJobs(pb.ListJobsRequest(states=[pb.Job.CANCELLED])).jobs
    assert [j.id for j in only] == [a["id"]]
    assert stub.GetJob(pb.JobRef(id=a["id"][:8])).id == a["id"]
    for ref, code in (("ab", grpc.StatusCode.NOT_FOUND), ("zzzz", grpc.StatusCode.NOT_FOUND),
                      ("0000000000", grpc.StatusCode.NOT_FOUND)):
        assert _code(stub.GetJob, pb.JobRef(id=ref))[0] == code, ref
    assert _code(stub.ListJobs, pb.ListJobsRequest(limit=5000))[0] == grpc.StatusCode.INVALID_ARGUMENT
    target = "127.0.0.1:{}".format(srv.port)
    assert cloud_main(["jobs", "--server", target, "--state", "CANCELLED"]) == 0
    assert capsys.readouterr().out.startswith(a["id"][:8] + " CANCELLED")
    assert cloud_main(["cancel", b["id"][:8], "--server", target]) == 0
    assert reg.get_job(b["id"])["state"] == "CANCELLED"


def test_remote_administration(server, tmp_path, capsys):
    from cloud.cli import main as cloud_main
    srv, ch = server
    _publish(srv.registry, tmp_path, seed=1)
    _publish(srv.registry, tmp_path, seed=2)
    stub = ModelRegistryStub(ch)
    assert list(stub.SetAlias(pb.SetAliasRequest(name="m", alias="stable", version=1)).aliases) == ["stable"]
    assert stub.GetManifest(pb.GetManifestRequest(name="m", alias="stable")).version == 1
    code, msg = _code(stub.DeleteVersion, pb.VersionRef(name="m", version=2))  # "latest" names it
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "latest" in msg
    target = "127.0.0.1:{}".format(srv.port)
    assert cloud_main(["alias", "m", "stable", "2", "--server", target]) == 0
    stub.PinVersion(pb.PinRequest(name="m", version=1, pinned=True))
    code, msg = _code(stub.DeleteVersion, pb.VersionRef(name="m", version=1))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "pinned" in msg
    assert _code(stub.SetAlias, pb.SetAliasRequest(name="m", alias="7", version=1))[0] == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert _code(stub.PinVersion, pb.PinRequest(name="m", version=9, pinned=True))[0] == grpc.StatusCode.NOT_FOUND
    assert cloud_main(["unpin", "m", "1", "--server", target]) == 0
    stub.ReportMetrics(pb.ReportMetricsRequest(edge_id="e1", name="m", version=2, metrics={"val_accuracy": 0.9},
                                               stages=[pb.StageMetric(stage="finetune", wall_seconds=3.0)]))
    assert cloud_main(["delete", "m", "1", "--server", target]) == 0
    assert [v["version"] for v in srv.registry.list_versions("m")] == [2]
    reps = stub.ListReports(pb.ListReportsRequest(name="m")).reports
    assert len(reps) == 1 and reps[0].edge_id == "e1" and reps[0].metrics["val_accuracy"] == 0.9
    assert reps[0].stages[0].stage == "finetune"
    capsys.readouterr()
    assert cloud_main(["reports", "--server", target, "--name", "m"]) == 0
    assert "e1 m v2: finetune 3.0 s; val_accuracy 0.9000" in capsys.readouterr().out
    assert _code(stub.ListReports, pb.ListReportsRequest(version=2))[0] == grpc.StatusCode.INVALID_ARGUMENT


STOP_DURING_PRUNE = r"""
import sys, tempfile, time
from cloud.server import CloudServer
from cloud.registry import Registry, Retention
d = tempfile.mkdtemp()
reg = Registry(d)
for i in range(2000):
    reg.update_job(reg.create_job("quality", "synthetic", "{}")["id"], state="CANCELLED")
reg.close()
for i in range(20):
    srv = CloudServer(d, "127.0.0.1:0", retention=Retention(jobs_keep=100000, events_keep=100000),
                      prune_interval_s=0.001)
    srv.start()
    time.sleep(0.01 * (i % 5))
    srv.stop(grace=0)
print("ok")
"""


def test_stop_while_registry_work_runs_never_crashes():
    """A retention pass (or any registry call) still running in a thread when the daemon stops must end
    before the registry's SQLite connections close (closing one in use crashed the process: SIGSEGV)."""
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "-X", "faulthandler", "-c", STOP_DURING_PRUNE], capture_output=True,
                       text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), (p.returncode, p.stderr[-2000:])


def test_download_sink_reports_a_full_disk_and_hashes_what_it_wrote(tmp_path):
    """The client's sink writes and hashes on two threads: a write error (here ENOSPC from /dev/full)
    reaches the receiving thread, and on a good file the digest is the data's."""
    import errno
    import hashlib

    from shared.client import _Sink
    if os.path.exists("/dev/full"):
        sink = _Sink("/dev/full", hashlib.sha256(), depth=2)
        with pytest.raises(OSError) as e:
            for _ in range(64):
                sink.put(b"x" * (1 << 20))
            sink.close()
        assert e.value.errno == errno.ENOSPC
    data = [os.urandom(1 << 16) for _ in range(20)]
    h = hashlib.sha256()
    sink = _Sink(str(tmp_path / "f"), h)
    for d in data:
        sink.put(memoryview(d))
    sink.close()
    assert (tmp_path / "f").read_bytes() == b"".join(data) and h.hexdigest() == hashlib.sha256(b"".join(data)).hexdigest()


def test_job_preset_resolves_under_the_submitted_keys():
    from cloud.jobspec import validate
    from shared.errors import ConfigError
    v = validate("pretrain", "synthetic", json.dumps({"preset": "paper", "lr": 0.02, "model_name": "p"}))
    cfg = v["resolved"]
    assert (cfg.fusion, cfg.num_views, cfg.input_views, cfg.lr) == ("grid", 9, 1, 0.02)
    assert v["job"] == {"preset": "paper", "model_name": "p"}
    assert validate("pretrain", "synthetic", "{}")["resolved"].input_views == 2
    with pytest.raises(ConfigError, match="'preset'"):
        validate("pretrain", "synthetic", json.dumps({"preset": "fastest"}))
