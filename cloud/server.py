"""``cloud-server serve``: the gRPC daemon (ModelRegistry + Training, health, reflection).

Servicers are thin: they validate, call the registry or the job runner, and convert with ``serde``;
every error is mapped to a canonical status code in one place (``_guard``). A bad request never
disturbs other clients or the registry.
"""
import logging
import os
import queue
import signal
import threading
from concurrent import futures
from typing import Any, Callable, Iterator, List, Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from shared.errors import CosmoError
from shared.rpc import (SERVICE_NAMES, add_ModelRegistryServicer_to_server, add_TrainingServicer_to_server,
                        enable_reflection, pb)

from . import serde
from .jobs import TERMINAL, Busy, JobRunner
from .registry import Registry

log = logging.getLogger(__name__)
DEFAULT_CHUNK = 1 << 20
MAX_CHUNK = 3 << 20  # stays under gRPC's default 4 MiB message limit, which is never raised


def _abort(context: grpc.ServicerContext, err: BaseException) -> None:
    code = grpc.StatusCode.RESOURCE_EXHAUSTED if isinstance(err, Busy) else (
        grpc.StatusCode.INVALID_ARGUMENT if isinstance(err, CosmoError) else serde.status_of(err))
    if code == grpc.StatusCode.INTERNAL:
        log.exception("internal error")
    context.abort(code, str(err))


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map exceptions of a unary handler to status codes."""
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as e:  # grpc's own abort raises too; re-raise that untouched
            if isinstance(e, grpc.RpcError) or context.code() is not None:
                raise
            _abort(context, e)
    wrapper.__name__ = fn.__name__
    return wrapper


def _guard_stream(fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            for item in fn(self, request, context):
                yield item
        except Exception as e:
            if isinstance(e, grpc.RpcError) or context.code() is not None:
                raise
            _abort(context, e)
    wrapper.__name__ = fn.__name__
    return wrapper


class ModelRegistryServicer(object):
    def __init__(self, registry: Registry, stopping: threading.Event) -> None:
        self.registry, self.stopping = registry, stopping

    @_guard
    def ListModels(self, request: Any, context: grpc.ServicerContext) -> Any:
        return pb.ListModelsResponse(versions=[serde.model_version(m)
                                               for m in self.registry.list_versions(request.name or None)])

    @_guard
    def GetManifest(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not request.name:
            raise ValueError("field 'name' is required")
        which = request.WhichOneof("ref")
        if which == "version":
            m = self.registry.get(request.name, version=request.version)
        else:
            m = self.registry.get(request.name, alias=request.alias or "latest")
        return serde.model_version(m)

    @_guard_stream
    def Download(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        if not request.name or not request.file or request.version <= 0:
            raise ValueError("fields 'name', 'version' (> 0) and 'file' are required")
        if request.offset < 0:
            raise ValueError("field 'offset' must be >= 0, got {}".format(request.offset))
        if request.chunk_size < 0 or request.chunk_size > MAX_CHUNK:
            raise ValueError("field 'chunk_size' must be in [0, {}] bytes, got {}".format(MAX_CHUNK, request.chunk_size))
        _, size, sha = self.registry.open_blob(request.name, request.version, request.file)
        for off, data in self.registry.read_chunks(request.name, request.version, request.file, request.offset,
                                                   request.chunk_size or DEFAULT_CHUNK):
            if not context.is_active():
                return
            yield pb.Chunk(offset=off, data=data, size=size, sha256=sha)

    @_guard_stream
    def WatchModels(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        q = self.registry.subscribe()
        try:
            if request.send_current:
                for m in self.registry.list_versions(request.name or None):
                    yield serde.model_event({"kind": "CURRENT", "name": m["name"], "version": m["version"]}, m)
            while context.is_active() and not self.stopping.is_set():
                try:
                    ev = q.get(timeout=0.5)
                except queue.Empty:
                    continue
                if ev is None:  # the registry closed the subscription
                    return
                if request.name and ev.get("name") != request.name:
                    continue
                model = None
                if ev["kind"] != "DELETED":
                    try:
                        model = self.registry.get(ev["name"], version=ev["version"])
                    except Exception:  # deleted since; send the event without it
                        model = None
                yield serde.model_event(ev, model)
        finally:
            self.registry.unsubscribe(q)

    @_guard
    def ReportMetrics(self, request: Any, context: grpc.ServicerContext) -> Any:
        if not request.edge_id:
            raise ValueError("field 'edge_id' is required")
        stages = [{"stage": s.stage, "wall_seconds": s.wall_seconds, "cpu_seconds": s.cpu_seconds,
                   "energy_joules": s.energy_joules, "energy_source": s.energy_source,
                   "peak_memory_mb": s.peak_memory_mb} for s in request.stages]
        rid = self.registry.report_metrics(request.edge_id, request.name, int(request.version), stages,
                                           dict(request.metrics), request.device, request.execution_provider)
        return pb.ReportMetricsResponse(report_id=int(rid))


class TrainingServicer(object):
    def __init__(self, registry: Registry, runner: JobRunner, stopping: threading.Event, poll_s: float = 0.25) -> None:
        self.registry, self.runner, self.stopping, self.poll_s = registry, runner, stopping, poll_s

    @_guard
    def SubmitJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        return serde.job(self.runner.submit(request.kind, request.dataset, request.config_json))

    @_guard
    def GetJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        return serde.job(self.registry.get_job(request.id))

    @_guard_stream
    def WatchJob(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        """The job now, then every update (each one, as the registry's job events carry the state), until
        it ends. Updates written by worker processes arrive through the registry's event log."""
        sub = self.registry.subscribe_jobs(request.id)
        try:
            j = self.registry.get_job(request.id)
            yield serde.job(j)
            while j["state"] not in TERMINAL and context.is_active() and not self.stopping.is_set():
                try:
                    ev = sub.get(timeout=self.poll_s)
                except queue.Empty:
                    continue
                if ev is None:  # the registry closed the subscription
                    return
                j = ev["job"]
                yield serde.job(j)
        finally:
            self.registry.unsubscribe(sub)

    @_guard
    def CancelJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        return serde.job(self.runner.cancel(request.id))


class TokenAuth(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every cosmo RPC (health and reflection stay open)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None or not details.method.startswith("/cosmo."):
            return handler
        meta = dict(details.invocation_metadata or ())
        if meta.get("authorization") == "Bearer " + self.token:
            return handler

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(deny)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


class CloudServer(object):
    """The daemon: gRPC server + registry + job runner. ``start()`` returns the bound port."""

    def __init__(self, data_dir: str, listen: str = "127.0.0.1:0", token: Optional[str] = None,
                 tls: Optional[grpc.ServerCredentials] = None, max_jobs: int = 1, max_queued: int = 4,
                 workers: int = 16) -> None:
        os.makedirs(data_dir, exist_ok=True)
        self.data_dir, self.listen = data_dir, listen
        self.registry = Registry(data_dir)
        self.stopping = threading.Event()
        self.runner = JobRunner(self.registry, data_dir, max_jobs=max_jobs, max_queued=max_queued)
        interceptors = [TokenAuth(token)] if token else []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), interceptors=interceptors)
        add_ModelRegistryServicer_to_server(ModelRegistryServicer(self.registry, self.stopping), self.server)
        add_TrainingServicer_to_server(TrainingServicer(self.registry, self.runner, self.stopping), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        enable_reflection(self.server, [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
        self.port = self.server.add_secure_port(listen, tls) if tls else self.server.add_insecure_port(listen)
        if not self.port:
            raise CosmoError("cannot listen on {}".format(listen))

    def start(self) -> int:
        self.runner.start()
        self.server.start()
        for name in [""] + list(SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("cloud-server listening on port %d, data dir %s", self.port, self.data_dir)
        return self.port

    def stop(self, grace: float = 5.0) -> None:
        """Health NOT_SERVING, in-flight RPCs get ``grace`` seconds, running jobs are interrupted
        (checkpointed every epoch) and re-queued for the next start."""
        for name in [""] + list(SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.stopping.set()
        ev = self.server.stop(grace)
        self.runner.shutdown()
        ev.wait(grace + 1)
        log.info("cloud-server stopped")


def credentials(cert: Optional[str], key: Optional[str], ca: Optional[str]) -> Optional[grpc.ServerCredentials]:
    """TLS (cert + key) or mTLS (also ca: clients must present a certificate it signed)."""
    if not cert and not key:
        if ca:
            raise CosmoError("--tls-ca needs --tls-cert and --tls-key")
        return None
    if not (cert and key):
        raise CosmoError("TLS needs both --tls-cert and --tls-key")
    def read(p: str) -> bytes:
        with open(p, "rb") as f:
            return f.read()
    return grpc.ssl_server_credentials([(read(key), read(cert))], root_certificates=read(ca) if ca else None,
                                       require_client_auth=bool(ca))


def serve(data_dir: str, listen: str, token: Optional[str] = None, tls: Optional[grpc.ServerCredentials] = None,
          max_jobs: int = 1, grace: float = 5.0, ready_file: Optional[str] = None) -> int:
    """Run until SIGTERM/SIGINT. Writes the bound port to ``ready_file`` once serving."""
    srv = CloudServer(data_dir, listen, token=token, tls=tls, max_jobs=max_jobs)
    port = srv.start()
    if ready_file:
        tmp = ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, ready_file)
    done = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        done.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    srv.stop(grace)
    return 0


__all__: List[str] = ["CloudServer", "serve", "credentials", "TokenAuth"]
