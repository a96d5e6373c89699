"""The cloud daemon under a fleet's load, over real gRPC on loopback: hundreds of open streams, admission
limits, stalled readers, a vanished peer, a port already taken. No timings are asserted (those are in
``benchmarks/fleet.py``); deadlines here only keep a broken server from hanging the suite."""
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cloud.admission import ServerLimits
from cloud.registry import MIN_CHUNK_SIZE
from cloud.server import CloudServer, check_listen
from shared.errors import CosmoError
from shared.rpc import ModelRegistryStub, pb
from tests.util import wait_until

HEALTHY = health_pb2.HealthCheckResponse.SERVING


def _publish(reg, tmp_path, size=1 << 20, seed=0, name="m"):
    p = tmp_path / "w{}.bin".format(seed)
    p.write_bytes(np.random.RandomState(seed).bytes(size))
    return reg.publish(name, {"weights.bin": (str(p), "state_dict")}, {"format": "cosmo-har/manifest"})


@pytest.fixture()
def started(tmp_path):
    servers = []

    def make(**limits):
        srv = CloudServer(str(tmp_path / "data{}".format(len(servers))), "127.0.0.1:0",
                          limits=ServerLimits(**limits) if limits else None)
        port = srv.start()
        servers.append(srv)
        return srv, "127.0.0.1:{}".format(port)
    yield make
    for s in servers:
        s.stop(grace=1)


def test_250_watch_streams_health_and_unary_calls_still_answer_and_every_watcher_hears_a_publish(started, tmp_path):
    # sync clients: grpc.aio clients on a second event loop in the server's process lose cancellations
    srv, target = started()
    _publish(srv.registry, tmp_path, size=1000, seed=1)
    n = 250
    channels = [grpc.insecure_channel(target) for _ in range(n // 10)]  # 10 edges per connection
    calls = [ModelRegistryStub(channels[i % len(channels)]).WatchModels(
        pb.WatchModelsRequest(name="m", send_current=True), timeout=120) for i in range(n)]
    firsts = [next(c) for c in calls]
    assert all(f.kind == pb.ModelEvent.CURRENT and f.version == 1 for f in firsts)
    assert srv.admission.watchers == n
    with grpc.insecure_channel(target) as ch:
        h = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert h.status == HEALTHY
        listed = ModelRegistryStub(ch).ListModels(pb.ListModelsRequest(), timeout=10)
        assert [v.version for v in listed.versions] == [1]
    _publish(srv.registry, tmp_path, size=1000, seed=2)
    evs = [next(c) for c in calls]
    assert all(e.kind == pb.ModelEvent.PUBLISHED and e.version == 2 and e.model.version == 2 for e in evs)
    for c in calls:
        c.cancel()
    wait_until(lambda: srv.admission.watchers == 0, what="cancelled watchers to be released")
    for ch in channels:
        ch.close()


def test_over_a_limit_is_resource_exhausted_at_once_and_health_still_answers(started, tmp_path, monkeypatch):
    srv, target = started(max_watchers=3, max_rpcs=2)
    ch = grpc.insecure_channel(target)
    stub = ModelRegistryStub(ch)
    held = [stub.WatchModels(pb.WatchModelsRequest()) for _ in range(3)]
    wait_until(lambda: srv.admission.watchers == 3, what="3 watchers")
    with pytest.raises(grpc.RpcError) as e:
        next(stub.WatchModels(pb.WatchModelsRequest(), timeout=10))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-watchers 3" in e.value.details()
    assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status == HEALTHY
    # unary calls: hold 2 in flight (a slow registry read), the third is refused, not queued
    slow = srv.registry.list_versions

    def list_slowly(name=None):
        time.sleep(1.5)
        return slow(name)
    monkeypatch.setattr(srv.registry, "list_versions", list_slowly)
    futures = [stub.ListModels.future(pb.ListModelsRequest(name="n{}".format(i)), timeout=30) for i in range(2)]
    wait_until(lambda: srv.admission.rpcs == 2, what="2 calls in flight")
    with pytest.raises(grpc.RpcError) as e:
        stub.ListModels(pb.ListModelsRequest(name="other"), timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-rpcs 2" in e.value.details()
    assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status == HEALTHY
    assert all(list(f.result().versions) == [] for f in futures)
    for c in held:
        c.cancel()
    wait_until(lambda: srv.admission.watchers == 0 and srv.admission.rpcs == 0, what="everything released")


def test_32_stalled_download_readers_do_not_block_others_and_are_cut_after_the_idle_deadline(started, tmp_path):
    srv, target = started(stream_idle_s=2.0)
    man = _publish(srv.registry, tmp_path, size=32 << 20, seed=3)
    f = man["files"][0]
    # readers with a fixed 64 KiB window (no BDP growth), so 32 MiB cannot all be in flight to them
    chans = [grpc.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)]) for _ in range(32)]
    stalled = [ModelRegistryStub(c).Download(pb.DownloadRequest(name="m", version=1, file="weights.bin"), timeout=120)
               for c in chans]
    assert all(next(s).offset == 0 for s in stalled)  # one chunk each, then they stop reading
    assert srv.admission.downloads == 32
    with grpc.insecure_channel(target) as ch:
        got = b"".join(c.data for c in ModelRegistryStub(ch).Download(
            pb.DownloadRequest(name="m", version=1, file="weights.bin"), timeout=60))
        assert len(got) == f["size"] and hashlib.sha256(got).hexdigest() == f["sha256"]
        h = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert h.status == HEALTHY
    # the stalled ones are ended by the server (--stream-idle-s), freeing their slots
    wait_until(lambda: srv.admission.downloads == 0, what="stalled downloads to be cut")
    codes = []
    for s in stalled:
        with pytest.raises(grpc.RpcError) as e:
            for _ in s:
                pass
        codes.append(e.value.code())
    assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}
    for c in chans:
        c.close()


def test_tiny_chunk_size_is_raised_to_the_floor(started, tmp_path):
    srv, target = started()
    _publish(srv.registry, tmp_path, size=3 * MIN_CHUNK_SIZE + 5, seed=4)
    chunks = list(ModelRegistryStub(grpc.insecure_channel(target)).Download(
        pb.DownloadRequest(name="m", version=1, file="weights.bin", chunk_size=1), timeout=30))
    assert [len(c.data) for c in chunks] == [MIN_CHUNK_SIZE] * 3 + [5]


def test_second_daemon_on_a_used_port_fails_and_bad_ports_are_refused(started, tmp_path):
    _, target = started()
    with pytest.raises(CosmoError, match="cannot bind"):
        CloudServer(str(tmp_path / "other"), target).start()
    for bad in ("127.0.0.1:70000", "127.0.0.1:-1", "127.0.0.1", ":50051", "host:port"):
        with pytest.raises(CosmoError, match="--listen"):
            check_listen(bad)
    assert check_listen("0.0.0.0:65535") == "0.0.0.0:65535"


def test_keepalive_reaps_a_client_that_vanished_without_closing(started, tmp_path):
    srv, target = started(keepalive_s=1.0, keepalive_timeout_s=1.0)
    client = textwrap.dedent("""
        import sys, time, grpc
        from shared.rpc import ModelRegistryStub, pb
        ch = grpc.insecure_channel(sys.argv[1])
        call = ModelRegistryStub(ch).WatchModels(pb.WatchModelsRequest(send_current=True))
        print("open", flush=True)
        time.sleep(600)
    """)
    p = subprocess.Popen([sys.executable, "-c", client, target], stdout=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        assert p.stdout.readline().strip() == "open"
        wait_until(lambda: srv.admission.watchers == 1, what="the watcher to open")
        os.kill(p.pid, signal.SIGSTOP)  # frozen: its TCP connection stays open, but nothing answers pings
        wait_until(lambda: srv.admission.watchers == 0, timeout=30, what="keepalive to reap the frozen client")
    finally:
        p.kill()
        p.wait()


def test_health_and_reflection_list_exactly_the_cloud_services(started):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    _, target = started()
    ch = grpc.insecure_channel(target)
    h = health_pb2_grpc.HealthStub(ch)
    assert h.Check(health_pb2.HealthCheckRequest(service="cosmo.v1.Training"), timeout=10).status == HEALTHY
    with pytest.raises(grpc.RpcError) as e:
        h.Check(health_pb2.HealthCheckRequest(service="cosmo.v1.Inference"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    r = reflection_pb2_grpc.ServerReflectionStub(ch)
    resp = next(r.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    assert {s.name for s in resp.list_services_response.service} == {
        "cosmo.v1.ModelRegistry", "cosmo.v1.Training", "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection"}


def test_a_fleet_reporting_at_once_is_group_committed_and_a_bad_report_fails_alone(started, tmp_path, monkeypatch):
    srv, target = started()
    _publish(srv.registry, tmp_path, size=1000, seed=5)
    commits = []
    insert = srv.registry.insert_reports

    def counting(rows):
        commits.append(len(rows))
        return insert(rows)
    monkeypatch.setattr(srv.registry, "insert_reports", counting)
    stub = ModelRegistryStub(grpc.insecure_channel(target))
    futures = [stub.ReportMetrics.future(pb.ReportMetricsRequest(edge_id="e{}".format(i), name="m",
                                                                 version=1 if i != 7 else 9), timeout=60)
               for i in range(200)]
    ids = []
    for i, f in enumerate(futures):
        if i == 7:
            with pytest.raises(grpc.RpcError) as e:
                f.result()
            assert e.value.code() == grpc.StatusCode.NOT_FOUND and "version 9" in e.value.details()
        else:
            ids.append(f.result().report_id)
    assert len(set(ids)) == 199 and sum(commits) == 200
    assert len(commits) < 200  # reports that arrived together were written together
    assert sorted(r["edge_id"] for r in srv.registry.list_reports()) == sorted("e{}".format(i) for i in range(200)
                                                                            if i != 7)
