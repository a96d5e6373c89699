"""Fuzz suite: hostile requests across every RPC of both daemons (seeded; about half a minute).

A token-protected cloud (registry with a published model, jobs) and a token-protected edge (the tiny real
model) on loopback get at least 1,000 malformed or hostile requests: wrong types and sizes, garbage
bytes, traversal and absolute paths, NUL and huge strings, NaN/Inf and huge tensors, hostile configs,
and unauthenticated calls. Asserted: no UNKNOWN or INTERNAL from the project's code (garbage bytes
get INVALID_ARGUMENT too, not grpc's own UNKNOWN), no hang (health answers after every batch,
every call ends before its deadline), no ERROR logged by either daemon, and the registry unchanged
(versions, aliases, blob sha256, ``PRAGMA integrity_check``, no job queued).
"""
import hashlib
import json
import logging
import os
import random

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cloud.server import CloudServer
from edge.holders import ModelHolder
from edge.runtime import Runtime
from edge.service import EdgeLimits, EdgeServer
from shared import rpc
from shared.client import connect
from shared.rpc import ModelRegistryStub, TrainingStub, pb
from tests.util import scrape

pytest.importorskip("onnxruntime")
SEED = int(os.environ.get("COSMO_FUZZ_SEED", "20261202"))  # other seeds: COSMO_FUZZ_SEED=N
TOKEN = "fuzz-token"
BATCH = 100
DEADLINE = 10.0
BAD = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED}


def _strings(rng):
    big = "x" * rng.choice([1000, 100000, 1 << 20])
    return rng.choice(["", "m", "../../etc/passwd", "/etc/passwd", "a/../../b", "a\x00b", "\n\r\t", big,
                       "\u202e\ufeff\U0001f600", "..", ".", "C:\\windows", "latest", "%s%n%x", "' OR 1=1 --",
                       "m\n2026-01-01 ERROR forged", "uschad:/etc", "hapt:" + "/" * 300, "x.npz", "/dev/zero.npz"])


def _number(rng):
    return rng.choice([0, -1, 1, 2, 2 ** 31 - 1, -(2 ** 31), 2 ** 62, 7, 3 << 20, (3 << 20) + 1])


def _int32(rng):
    return rng.choice([0, -1, 1, 2, 2 ** 31 - 1, -(2 ** 31), 7, 100000])


def _float(rng):
    return rng.choice([0.0, -1.0, 1e308, -1e308, float("nan"), float("inf"), float("-inf"), 3e38, 1e-320])


def _config(rng):
    return rng.choice(["[" * 100000, "[" * 5000 + "]" * 5000, '{"lr": NaN}', '{"lr": 1e999}', "{", "null", "[]",
                       '{"model_name": "../x"}', '{"epochs": -1}', '{"epochs": "3"}', '{"kd": "nope"}',
                       '{"encoder": "nope"}', '{"device": "tpu"}', json.dumps({"x" * 100: 1}),
                       json.dumps({"holdout": ["y" * 70000]}), "\x00", '{"label_rate": 7}', "1" * 5000])


def _cloud_requests(rng, reg, train):
    """(callable, kind) pairs; kind 'stream' calls are read to their end or first message."""
    s = lambda: _strings(rng)  # noqa: E731
    yield lambda: reg.ListModels(pb.ListModelsRequest(name=s()), timeout=DEADLINE), "unary"
    req = pb.GetManifestRequest(name=rng.choice([s(), "m"]))
    if rng.random() < 0.5:
        req.version = _number(rng)
    else:
        req.alias = s()
    yield lambda: reg.GetManifest(req, timeout=DEADLINE), "unary"
    yield (lambda: reg.Download(pb.DownloadRequest(name=rng.choice([s(), "m"]), version=rng.choice([_number(rng), 1]),
                                                   file=rng.choice([s(), "w.bin"]), offset=_number(rng),
                                                   chunk_size=_int32(rng)), timeout=DEADLINE), "stream")
    yield lambda: reg.WatchModels(pb.WatchModelsRequest(name=s(), send_current=True), timeout=0.3), "watch"
    rep = pb.ReportMetricsRequest(edge_id=s(), name=rng.choice([s(), "m"]), version=_number(rng), device=s(),
                                  execution_provider=s())
    for _ in range(rng.choice([0, 1, 70])):
        rep.stages.add(stage=s(), wall_seconds=_float(rng), cpu_seconds=_float(rng), energy_joules=_float(rng))
    for i in range(rng.choice([0, 2, 1100])):
        rep.metrics[s()[:50] + str(i)] = _float(rng)
    yield lambda: reg.ReportMetrics(rep, timeout=DEADLINE), "unary"
    other = (lambda v: "m2" if v == "m" else v)(s())  # admin calls never name the fixture's model: it must stay
    yield (lambda: reg.SetAlias(pb.SetAliasRequest(name=other, alias=s(), version=_number(rng)), timeout=DEADLINE),
           "unary")
    yield (lambda: reg.PinVersion(pb.PinRequest(name=other, version=_number(rng), pinned=rng.random() < 0.5),
                                  timeout=DEADLINE), "unary")
    yield lambda: reg.DeleteVersion(pb.VersionRef(name=other, version=_number(rng)), timeout=DEADLINE), "unary"
    yield (lambda: reg.ListReports(pb.ListReportsRequest(name=s(), version=_number(rng), limit=_int32(rng)),
                                   timeout=DEADLINE), "unary")
    yield (lambda: train.SubmitJob(pb.SubmitJobRequest(kind=rng.choice(["pretrain", "align", "quality", s()]),
                                                       dataset=s(), config_json=_config(rng)), timeout=DEADLINE),
           "unary")
    yield (lambda: train.SubmitJob(pb.SubmitJobRequest(kind=rng.choice(["pretrain", "align"]), dataset="synthetic",
                                                       config_json=_config(rng)), timeout=DEADLINE), "unary")
    yield lambda: train.GetJob(pb.JobRef(id=s()), timeout=DEADLINE), "unary"
    yield lambda: train.CancelJob(pb.JobRef(id=s()), timeout=DEADLINE), "unary"
    yield lambda: train.WatchJob(pb.JobRef(id=s()), timeout=DEADLINE), "stream"
    yield (lambda: train.ListJobs(pb.ListJobsRequest(states=[rng.choice([0, 1, 5, 6, 99, -1])], limit=_int32(rng)),
                                  timeout=DEADLINE), "unary")


def _windows(rng):
    m = rng.choice(["acc", "gyro", "", "magnet", "x" * 5000, "acc\n"])
    shape = rng.choice([[2, 32, 3], [1, 32, 2], [2, 32], [0, 32, 3], [-1, 32, 3], [2 ** 40, 1, 1], [1, 1, 1],
                        [100000, 32, 3], [2, 31, 3], []])
    kind = rng.choice(["raw", "data", "both", "bytes", "huge"])
    n = max(0, int(np.prod(shape))) if shape and all(0 < v < 10 ** 6 for v in shape) else 6
    n = min(n, 200000)
    vals = np.random.RandomState(rng.randrange(1 << 30)).randn(n).astype(np.float32)
    if rng.random() < 0.3:
        vals[rng.randrange(n)] = rng.choice([np.nan, np.inf, 3e38, -3e38]) if n else 0
    if kind == "huge":
        vals[:] = 3e38
    w = pb.ModalityWindows(modality=m, shape=shape, rate_hz=rng.choice([0.0, 50.0, -1.0, float("nan")]))
    if kind in ("raw", "both", "huge"):
        w.raw = vals.tobytes()
    if kind in ("data", "both"):
        w.data.extend(vals.tolist())
    if kind == "bytes":
        w.raw = os.urandom(rng.choice([1, 3, 5, 7, 1001]))
    return w


def _edge_requests(rng, stub):
    def predict_req():
        return pb.PredictRequest(windows=[_windows(rng) for _ in range(rng.choice([0, 1, 2, 3]))],
                                 batch=rng.choice([0, 2, -5, 10 ** 6]))
    yield lambda: stub.Predict(predict_req(), timeout=DEADLINE), "unary"
    yield lambda: stub.Embed(predict_req(), timeout=DEADLINE), "unary"
    yield lambda: stub.Info(pb.InfoRequest(), timeout=DEADLINE), "unary"
    q = pb.SearchRequest(text=rng.choice(["", "walking", "x" * 100000, "\x00"]), k=_int32(rng))
    if rng.random() < 0.5:
        q.embedding.extend([_float(rng)] * rng.choice([0, 3, 16, 100000]))
    yield lambda: stub.Search(q, timeout=DEADLINE), "unary"

    def chunks():
        for _ in range(rng.choice([0, 1, 5])):
            c = pb.SamplesChunk(modality=rng.choice(["acc", "gyro", "", "nope"]), channels=rng.choice([0, 2, 3, -1]),
                                rate_hz=rng.choice([0.0, 50.0, 1e9]), hop_fraction=rng.choice([0.0, 0.5, -1.0, 2.0]))
            if rng.random() < 0.5:
                c.raw = os.urandom(rng.choice([3, 12, 96]))
            else:
                c.data.extend(np.random.RandomState(0).randn(rng.choice([0, 3, 96, 7])).tolist())
            yield c
    yield lambda: stub.StreamPredict(chunks(), timeout=DEADLINE), "stream"


def _garbage(rng, channel, methods):
    path = rng.choice(methods)
    data = os.urandom(rng.choice([1, 5, 64, 4096]))
    call = channel.unary_stream(path) if path.endswith(("Download", "WatchModels", "WatchJob")) \
        else channel.unary_unary(path)
    return lambda: call(data, timeout=DEADLINE), "garbage"


def _run(fn, kind, tally):
    try:
        r = fn()
        if kind in ("stream", "watch") or (kind == "garbage" and hasattr(r, "__next__")):
            for _ in r:
                if kind == "watch":
                    r.cancel()
                    break
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        code, details = e.code(), e.details() or ""
    if kind == "watch" and code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
        code = grpc.StatusCode.OK  # our own short deadline on an idle watch
    tally[code.name] = tally.get(code.name, 0) + 1
    if code in BAD:
        return "{} {}: {}".format(kind, code.name, details[:300])
    return None


def _registry_snapshot(srv):
    reg = srv.registry
    blobs = {}
    for d, _, files in os.walk(os.path.join(srv.data_dir, "blobs")):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                blobs[f] = hashlib.sha256(fh.read()).hexdigest()
    c = reg._conn()
    return {"versions": [(m["name"], m["version"], sorted(m.get("aliases", []))) for m in reg.list_versions()],
            "blobs": blobs, "integrity": c.execute("PRAGMA integrity_check").fetchone()[0],
            "jobs": len(reg.list_jobs())}


def test_fuzz_both_daemons(tmp_path, caplog):
    from tests.edge.test_runtime import build_model_dir
    rng = random.Random(SEED)
    srv = CloudServer(str(tmp_path / "cloud"), "127.0.0.1:0", token=TOKEN, datasets_dir=str(tmp_path),
                      metrics_listen="127.0.0.1:0")
    cport = srv.start()
    blob = tmp_path / "w.bin"
    blob.write_bytes(os.urandom(200000))
    srv.registry.publish("m", {"w.bin": (str(blob), "state_dict")},
                         {"format": "cosmo-har/manifest", "input_schema": {}, "classes": ["a"]}, aliases=("latest",))
    before = _registry_snapshot(srv)
    built = build_model_dir(str(tmp_path / "edge"), version=3, seed=0)
    edge = EdgeServer(ModelHolder(Runtime.load(built["dir"])), "127.0.0.1:0", limits=EdgeLimits(max_batch=64),
                      token=TOKEN, metrics_listen="127.0.0.1:0")
    eport = edge.start()
    ctarget, etarget = "127.0.0.1:{}".format(cport), "127.0.0.1:{}".format(eport)
    authed = {t: connect(t, token=TOKEN) for t in (ctarget, etarget)}
    anon = {t: grpc.insecure_channel(t) for t in (ctarget, etarget)}
    cloud_methods = ["/cosmo.v1.ModelRegistry/" + m for m in ("ListModels", "GetManifest", "Download",
                                                              "ReportMetrics", "SetAlias", "PinVersion",
                                                              "DeleteVersion", "ListReports")] + \
        ["/cosmo.v1.Training/" + m for m in ("SubmitJob", "GetJob", "CancelJob", "ListJobs")]
    edge_methods = ["/cosmo.v1.Inference/" + m for m in ("Predict", "Embed", "Info", "Search")]
    failures, tally, sent = [], {}, 0
    try:
        with caplog.at_level(logging.WARNING):
            for batch in range(12):
                for _ in range(BATCH):
                    which = rng.random()
                    if which < 0.45:
                        auth = authed if rng.random() < 0.9 else anon
                        reqs = list(_cloud_requests(rng, ModelRegistryStub(auth[ctarget]), TrainingStub(auth[ctarget])))
                    elif which < 0.85:
                        auth = authed if rng.random() < 0.9 else anon
                        reqs = list(_edge_requests(rng, rpc.InferenceStub(auth[etarget])))
                    else:
                        t = rng.choice([ctarget, etarget])
                        reqs = [_garbage(rng, authed[t], cloud_methods if t == ctarget else edge_methods)]
                    fn, kind = rng.choice(reqs)
                    err = _run(fn, kind, tally)
                    sent += 1
                    if err:
                        failures.append(err)
                for t in (ctarget, etarget):  # no hang: health answers after every batch
                    h = health_pb2_grpc.HealthStub(anon[t])
                    assert h.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
                        health_pb2.HealthCheckResponse.SERVING, "health of {} after batch {}".format(t, batch)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(("cloud", "edge"))]
        assert not errors, [r.getMessage()[:300] for r in errors[:5]]
        # the metrics survived it, and hostile method names did not grow their label set
        for port, served in ((srv.metrics_port, ("cosmo.v1.ModelRegistry", "cosmo.v1.Training")),
                             (edge.metrics_port, ("cosmo.v1.Inference",))):
            m = scrape(port)
            services = {dict(k[1])["grpc_service"] for k in m if k[0] == "grpc_server_handled_total"}
            assert services <= set(served) | {"grpc.health.v1.Health"}, services
            assert sum(v for k, v in m.items() if k[0] == "grpc_server_handled_total") > 100
    finally:
        edge.stop(None)
        after = _registry_snapshot(srv)
        srv.stop(grace=1)
    assert sent >= 1000
    assert not failures, "{} of {} requests failed badly (tally {}): {}".format(len(failures), sent, tally, failures[:8])
    assert after == before, (before, after)
    print("fuzz: {} requests, status codes {}".format(sent, tally))
    assert tally.get("UNAUTHENTICATED", 0) > 50 and tally.get("INVALID_ARGUMENT", 0) > 200, tally
