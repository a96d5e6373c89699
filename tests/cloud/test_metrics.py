"""``cloud-server serve --metrics-listen``: the Prometheus endpoint over a real daemon (gRPC on loopback,
real registry): RPCs by method and code (refusals of the token check included), latency histograms, open
streams, registry and job figures; hostile scrapers stay bounded; a bad or busy address is one clear error."""
import socket
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cloud.server import CloudServer
from shared.client import connect
from shared.errors import CosmoError
from shared.rpc import ModelRegistryStub, pb
from shared.rpc.metrics import MAX_SCRAPES
from tests.cloud.test_server import _publish
from tests.util import sample, scrape, wait_until

pytest.importorskip("prometheus_client")
TOKEN = "s3cret-token"


@pytest.fixture()
def daemon(tmp_path):
    srv = CloudServer(str(tmp_path / "data"), "127.0.0.1:0", token=TOKEN, metrics_listen="127.0.0.1:0")
    port = srv.start()
    yield srv, port
    srv.stop(grace=1)


def test_rpcs_streams_and_registry_figures(daemon, tmp_path):
    srv, port = daemon
    assert srv.metrics_port > 0
    _publish(srv.registry, tmp_path, name="m", size=100_000)
    ch = connect("127.0.0.1:{}".format(port), token=TOKEN)
    stub = ModelRegistryStub(ch)
    for _ in range(3):
        stub.ListModels(pb.ListModelsRequest(), timeout=10)
    with pytest.raises(grpc.RpcError) as e:
        stub.GetManifest(pb.GetManifestRequest(name="nope"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    anon = grpc.insecure_channel("127.0.0.1:{}".format(port))
    with pytest.raises(grpc.RpcError) as e:
        ModelRegistryStub(anon).ListModels(pb.ListModelsRequest(), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    health_pb2_grpc.HealthStub(anon).Check(health_pb2.HealthCheckRequest(), timeout=10)
    watch = stub.WatchModels(pb.WatchModelsRequest(name="m", send_current=True), timeout=30)
    next(watch)  # the stream is open and has answered

    m = scrape(srv.metrics_port)
    reg = {"grpc_service": "cosmo.v1.ModelRegistry"}
    assert sample(m, "grpc_server_handled_total", grpc_method="ListModels", grpc_code="OK", **reg) == 3
    assert sample(m, "grpc_server_handled_total", grpc_method="ListModels", grpc_code="UNAUTHENTICATED", **reg) == 1
    assert sample(m, "grpc_server_handled_total", grpc_method="GetManifest", grpc_code="NOT_FOUND", **reg) == 1
    assert sample(m, "grpc_server_handled_total", grpc_service="grpc.health.v1.Health", grpc_code="OK") == 1
    assert sample(m, "grpc_server_started_total", grpc_method="WatchModels", grpc_type="server_stream") == 1
    assert sample(m, "grpc_server_handling_seconds_count", grpc_method="ListModels", **reg) == 4
    assert sample(m, "grpc_server_handling_seconds_bucket", grpc_method="ListModels", le="+Inf", **reg) == 4
    assert sample(m, "cosmo_cloud_open", kind="watchers") == 1
    assert sample(m, "cosmo_cloud_open", kind="streams") == 1
    assert sample(m, "cosmo_cloud_registry_versions") == 1 and sample(m, "cosmo_cloud_registry_models") == 1
    assert sample(m, "cosmo_cloud_registry_blob_bytes") == 100_000
    assert sample(m, "cosmo_cloud_jobs", state="QUEUED") == 0
    assert sample(m, "cosmo_build_info", daemon="cloud-server") == 1
    assert sample(m, "process_resident_memory_bytes") > 0

    watch.cancel()
    wait_until(lambda: sample(scrape(srv.metrics_port), "cosmo_cloud_open", kind="watchers") == 0,
               timeout=10, what="the watcher to close")
    m = scrape(srv.metrics_port)
    assert sample(m, "grpc_server_handled_total", grpc_method="WatchModels", grpc_code="CANCELLED") == 1
    ch.close()
    anon.close()


def test_hostile_scrapers_are_bounded_and_grpc_unaffected(daemon):
    srv, port = daemon
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", srv.metrics_port)) for _ in range(4 * MAX_SCRAPES)]
    try:
        time.sleep(0.5)
        assert threading.active_count() <= before + MAX_SCRAPES  # one thread per admitted scrape, no more
        ch = grpc.insecure_channel("127.0.0.1:{}".format(port))
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert r.status == health_pb2.HealthCheckResponse.SERVING
        ch.close()
    finally:
        for s in idle:
            s.close()
    wait_until(lambda: _scrapes(srv.metrics_port), timeout=15, what="scrapes to work again")
    for junk in (b"\x00" * 4096, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", b"POST /metrics HTTP/1.1\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", srv.metrics_port)) as s:
            s.sendall(junk)  # and hang up: the handler ends at EOF (or its socket timeout), the server goes on
    assert sample(scrape(srv.metrics_port), "cosmo_build_info", daemon="cloud-server") == 1


def _scrapes(port):
    try:
        scrape(port)
        return True
    except OSError:
        return False


def test_bad_and_busy_metrics_address(tmp_path):
    with pytest.raises(CosmoError, match="--metrics-listen"):
        CloudServer(str(tmp_path / "a"), "127.0.0.1:0", metrics_listen="127.0.0.1:99999").start()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    srv = CloudServer(str(tmp_path / "b"), "127.0.0.1:0", metrics_listen="127.0.0.1:{}".format(taken.getsockname()[1]))
    with pytest.raises(CosmoError, match="--metrics-listen .*cannot bind"):
        srv.start()
    taken.close()


def test_scrapes_do_not_grow_registry_connections(daemon):
    """Every scrape runs on a new HTTP thread; the registry is read on one fixed thread, so a day of scrapes
    does not leave a database connection per scrape."""
    srv, _ = daemon
    scrape(srv.metrics_port)
    before = len(srv.registry._conns)
    for _ in range(20):
        assert sample(scrape(srv.metrics_port), "cosmo_cloud_registry_versions") == 0
    # a connection per scrape would add 20; the daemon's own threads (blob scrub, executor) may each open
    # their one connection meanwhile, which a loaded machine showed once (+1)
    assert len(srv.registry._conns) - before < 10
