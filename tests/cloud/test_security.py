"""The cloud daemon against a hostile client: confined dataset paths, fully validated configs, clipped
and escaped error texts, bounded tables, authentication that cannot be starved, workers that die with
their server. Real gRPC on 127.0.0.1, real SQLite, real worker processes."""
import json
import logging
import os
import signal
import subprocess
import sys

import grpc
import pytest

from cloud.registry import Retention
from cloud.server import CloudServer
from shared.client import connect
from shared.data import make_synthetic
from shared.rpc import ModelRegistryStub, TrainingStub, pb
from tests.util import wait_until

TINY = {"epochs": 1, "encoder_widths": [8, 8, 8], "out_steps": 4, "proj_hidden": 32, "batch_size": 32}


def _err(fn, req):
    with pytest.raises(grpc.RpcError) as e:
        r = fn(req, timeout=30)
        if hasattr(r, "__iter__") and not hasattr(r, "ListFields"):
            list(r)
    return e.value.code(), e.value.details()


@pytest.fixture()
def cloud(tmp_path):
    datasets = tmp_path / "datasets"
    (datasets / "sub").mkdir(parents=True)
    make_synthetic(num_subjects=4, windows_per_subject=10, seed=0).save(str(datasets / "sub" / "syn"))
    os.symlink("/etc", str(datasets / "escape"))
    srv = CloudServer(str(tmp_path / "data"), "127.0.0.1:0", max_jobs=1, max_queued=64,
                      datasets_dir=str(datasets), retention=Retention(jobs_keep=5))
    ch = grpc.insecure_channel("127.0.0.1:{}".format(srv.start()))
    yield srv, TrainingStub(ch), datasets
    ch.close()
    srv.stop(grace=1)


def test_datasets_confined_to_datasets_dir(cloud, tmp_path):
    srv, stub, datasets = cloud
    (tmp_path / "outside.npz").write_bytes(b"x")
    refused = {}
    for ds in (str(tmp_path / "outside.npz"), str(tmp_path / "missing.npz"), "../outside.npz", "escape/passwd.npz",
               "uschad:/etc", "uschad:../../..", "utdmhad:escape", "hapt:" + str(tmp_path), "uschad",
               "synthetic:sub", "/etc/passwd", "a\x00b.npz"):
        code, msg = _err(stub.SubmitJob, pb.SubmitJobRequest(kind="pretrain", dataset=ds, config_json=json.dumps(TINY)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (ds, code, msg)
        assert "dataset" in msg
        refused[ds] = msg
    # no hint whether a path outside exists: the same answer, up to the echoed value
    a, b = refused[str(tmp_path / "outside.npz")], refused[str(tmp_path / "missing.npz")]
    assert a.replace("outside", "X") == b.replace("missing", "X")
    assert not srv.registry.list_jobs()  # nothing was queued
    job = stub.SubmitJob(pb.SubmitJobRequest(kind="quality", dataset="sub/syn.npz"))
    assert job.state == pb.Job.QUEUED and job.dataset == "sub/syn.npz"
    job2 = stub.SubmitJob(pb.SubmitJobRequest(kind="quality", dataset=str(datasets / "sub" / "syn.npz")))
    for j in (job, job2):  # quality with default settings runs to the end (it used to fail in the worker)
        wait_until(lambda j=j: stub.GetJob(pb.JobRef(id=j.id)).state in (pb.Job.SUCCEEDED, pb.Job.FAILED), 180,
                   "the quality job to end")
        final = stub.GetJob(pb.JobRef(id=j.id))
        assert final.state == pb.Job.SUCCEEDED, final.error


@pytest.mark.parametrize("config, field", [
    ("[" * 100000, "config_json"), ("[" * 5000 + "]" * 5000, "config_json"), ('{"lr": NaN}', "config_json"),
    ('{"lr": Infinity}', "config_json"), ('{"lr": 1e999}', "config_json"), ('{"model_name": "../x"}', "model_name"),
    ('{"model_name": "a/b"}', "model_name"), ('{"epochs": "3"}', "epochs"), ('{"device": "tpu:9"}', "device"),
    ('{"label_rate": 0.1, "labels_per_class": 2}', "label_rate"), ('{"model_version": 0}', "model_version"),
    ("[1, 2]", "config_json"), ('{"fusion": "x"}', "fusion")])
def test_hostile_configs_refused_on_submit(cloud, config, field):
    srv, stub, _ = cloud
    code, msg = _err(stub.SubmitJob, pb.SubmitJobRequest(kind="pretrain", dataset="synthetic", config_json=config))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field in msg, (code, msg)
    assert not srv.registry.list_jobs()


@pytest.mark.parametrize("config, field", [('{"kd": "nope"}', "kd"), ('{"encoder": "nope"}', "encoder"),
                                           ('{"encoder_config": {"nope": 3}}', "encoder_config")])
def test_align_configs_refused_on_submit(cloud, config, field):
    srv, stub, _ = cloud
    code, msg = _err(stub.SubmitJob, pb.SubmitJobRequest(kind="align", dataset="hapt", config_json=config))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field in msg, (code, msg)


def test_quality_on_a_missing_model_refused_on_submit(cloud):
    srv, stub, _ = cloud
    code, msg = _err(stub.SubmitJob, pb.SubmitJobRequest(kind="quality", dataset="synthetic",
                                                         config_json='{"features": "encoder", "model_name": "none"}'))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "model_name" in msg


def test_huge_values_clipped_in_errors_and_logs_escaped(cloud, caplog):
    srv, stub, _ = cloud
    reg = ModelRegistryStub(grpc.insecure_channel("127.0.0.1:{}".format(srv.port)))
    big = "n" * 100000
    for fn, req in ((reg.GetManifest, pb.GetManifestRequest(name=big, alias="latest")),
                    (reg.Download, pb.DownloadRequest(name=big, version=1, file="f")),
                    (reg.ReportMetrics, pb.ReportMetricsRequest(edge_id=big, name="m", version=1)),
                    (stub.SubmitJob, pb.SubmitJobRequest(kind=big, dataset="synthetic")),
                    (stub.GetJob, pb.JobRef(id=big))):
        code, msg = _err(fn, req)
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), (code, msg[:200])
        assert len(msg) < 1100
    caplog.clear()
    with caplog.at_level(logging.INFO):
        forged = "hapt\n2026-01-01 00:00:00,000 ERROR cloud: forged line"
        code, _ = _err(stub.SubmitJob, pb.SubmitJobRequest(kind="pretrain", dataset=forged))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        wait_until(lambda: any("SubmitJob" in r.getMessage() for r in caplog.records), 5, "the log line")
    lines = [r for r in caplog.records if "SubmitJob" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING and lines[0].exc_info is None
    assert "\n" not in lines[0].getMessage() and "forged line" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_submit_cancel_cycles_keep_tables_bounded(cloud):
    srv, stub, _ = cloud
    code, msg = _err(stub.SubmitJob, pb.SubmitJobRequest(kind="align", dataset="hapt",
                                                         config_json=json.dumps({"holdout": ["x" * 70000]})))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "65536 bytes" in msg
    big = json.dumps({"holdout": ["x" * 60000], "epochs": 1000})  # big but valid
    for _ in range(30):
        j = stub.SubmitJob(pb.SubmitJobRequest(kind="align", dataset="hapt", config_json=big))
        stub.CancelJob(pb.JobRef(id=j.id))
    # Retention(jobs_keep=5) applied on every submit: 5 finished + the last one (cancelled after its submit)
    assert len(srv.registry.list_jobs()) <= 6
    c = srv.registry._conn()
    assert c.execute("SELECT MAX(LENGTH(body_json)) FROM events").fetchone()[0] < 4096  # configs stay out of events


def test_unauthenticated_calls_cannot_block_authenticated_ones(tmp_path):
    srv = CloudServer(str(tmp_path / "d"), "127.0.0.1:0", token="s3cret")
    target = "127.0.0.1:{}".format(srv.start())
    try:
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
        anon = grpc.insecure_channel(target)
        held = []
        for _ in range(64):  # streams a client keeps open: refused at once, never held
            it = reflection_pb2_grpc.ServerReflectionStub(anon).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")] * 3))
            held.append(it)
        for it in held:
            with pytest.raises(grpc.RpcError) as e:
                next(it)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = connect(target, token="s3cret")
        assert list(ModelRegistryStub(ok).ListModels(pb.ListModelsRequest(), timeout=5).versions) == []
        assert srv.admission.rpcs == 0 and srv.admission.streams == 0
    finally:
        srv.stop(grace=1)


def test_exposed_listen_needs_credentials(tmp_path, capsys):
    from cloud.cli import main
    rc = main(["serve", "--data-dir", str(tmp_path / "d"), "--listen", "0.0.0.0:0"])
    err = capsys.readouterr().err
    assert rc == 2 and "--insecure" in err and "Traceback" not in err


def test_workers_die_with_a_killed_server(tmp_path):
    """SIGKILL the daemon mid-job: its worker must not live on (it could publish while the server is
    down, and the restarted server would mark the job FAILED while it still ran)."""
    ready = tmp_path / "port"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, "-m", "cloud.cli", "serve", "--data-dir", str(tmp_path / "d"),
                             "--listen", "127.0.0.1:0", "--ready-file", str(ready)], env=env)
    try:
        wait_until(ready.exists, 60, "the daemon to start")
        ch = grpc.insecure_channel("127.0.0.1:{}".format(ready.read_text()))
        stub = TrainingStub(ch)
        job = stub.SubmitJob(pb.SubmitJobRequest(kind="pretrain", dataset="synthetic",
                                                 config_json=json.dumps(dict(TINY, epochs=5000))))

        def worker_pid():
            import glob
            for path in glob.glob("/proc/{}/task/*/children".format(proc.pid)):
                with open(path) as f:
                    for child in f.read().split():
                        with open("/proc/{}/cmdline".format(child), "rb") as c:
                            if b"spawn_main" in c.read():
                                return int(child)
            return None
        wait_until(lambda: stub.GetJob(pb.JobRef(id=job.id)).progress.stage == "pretrain", 120, "stage 1 to run")
        pid = worker_pid()
        assert pid is not None
        ch.close()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

        def gone():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            with open("/proc/{}/stat".format(pid)) as f:  # a zombie (reaped by init later) counts as dead
                return f.read().split(") ")[-1].startswith("Z")
        wait_until(gone, 10, "the worker to die with its server")
    finally:
        if proc.poll() is None:
            proc.kill()
