"""``cloud-server serve``: the gRPC daemon (ModelRegistry + Training, health, reflection) on ``grpc.aio``.

One asyncio event loop (in its own thread, so ``CloudServer`` can be started and stopped from plain
code and tests) serves every RPC: long-lived streams are coroutines, blocking registry work goes to
one bounded executor (``ServerLimits.executor_threads``), training runs in worker processes (the job
runner). Limits, keepalive and the status codes over them: ``cloud.admission``. Background upkeep on
the loop: retention of jobs/reports/events (``--prune-interval-s``) and a blob scrub
(``--scrub-interval-s``).
"""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import shutil
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from shared.alloc import tune_for_large_messages
from shared.errors import CosmoError
from shared.files import write_text
from shared.flags import host_port
from shared.rpc import add_ModelRegistryServicer_to_server, add_TrainingServicer_to_server, enable_reflection
from shared.rpc.auth import TokenAuth

from .admission import Admission, ServerLimits
from .jobs import JobRunner, job_dir
from .registry import Registry, Retention
from .servicers import Blocking, ModelEvents, ModelRegistryServicer, TrainingServicer

log = logging.getLogger(__name__)
SERVICES = ("cosmo.v1.ModelRegistry", "cosmo.v1.Training")  # what this daemon serves (health, reflection)
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def check_listen(listen: str) -> str:
    """``host:port`` (port 0..65535; 0: any free port), ``[v6]:port`` or ``unix:/path``; else ``CosmoError``
    naming ``--listen``."""
    if not listen.startswith(("unix:", "unix-abstract:")):
        host_port(listen, "--listen", " (or unix:/path)")
    return listen


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one (every edge connection is a file descriptor)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


class CloudServer:
    """The daemon: gRPC aio server + registry + job runner. ``start()`` returns the bound port."""

    def __init__(self, data_dir: str, listen: str = "127.0.0.1:0", token: str | None = None,
                 tls: grpc.ServerCredentials | None = None, max_jobs: int = 1, max_queued: int = 4,
                 limits: ServerLimits | None = None, retention: Retention | None = None,
                 prune_interval_s: float = 600.0, scrub_interval_s: float = 6 * 3600.0,
                 datasets_dir: str | None = None, metrics_listen: str | None = None) -> None:
        self.listen = check_listen(listen)
        self.metrics_listen = metrics_listen
        if datasets_dir is not None and not os.path.isdir(datasets_dir):
            raise CosmoError("--datasets-dir {}: not a folder".format(datasets_dir))
        os.makedirs(data_dir, exist_ok=True)
        self.data_dir = data_dir
        self.limits = limits or ServerLimits()
        self.token, self.tls = token, tls
        self.prune_interval_s, self.scrub_interval_s = prune_interval_s, scrub_interval_s
        self.registry = Registry(data_dir, retention=retention)
        self.runner = JobRunner(self.registry, data_dir, max_jobs=max_jobs, max_queued=max_queued,
                                datasets_dir=os.path.abspath(datasets_dir) if datasets_dir else None)
        self.admission = Admission(self.limits)
        self.port = self.metrics_port = 0
        self.metrics: Any = None  # the MetricsServer with --metrics-listen
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cloud-aio", daemon=True)
        self._scrub_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloud-scrub")
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = threading.Event()

    # -- lifecycle (called from any thread but the loop's)

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> int:
        self._thread.start()
        try:
            self.port = self._call(self._start())
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            if self.metrics is not None:
                self.metrics.stop()
            self.registry.close()
            raise
        self.runner.start()
        if self.metrics is not None:
            self.metrics_port = self.metrics.start()
        log.info("cloud-server listening on %s (port %d), data dir %s", self.listen, self.port, self.data_dir)
        return self.port

    async def _start(self) -> int:
        self.registry.clean_tmp()
        interceptors: list[Any] = [TokenAuth(self.token)] if self.token else []
        if self.metrics_listen is not None:  # outermost: it also counts what the token check refuses
            interceptors.insert(0, self._metrics())
        self.blocking = Blocking(self.limits.executor_threads)
        self.events = ModelEvents(self.registry, self.blocking)
        self.server = grpc.aio.server(interceptors=interceptors, options=self.limits.grpc_options())
        add_ModelRegistryServicer_to_server(
            ModelRegistryServicer(self.registry, self.admission, self.blocking, self.events), self.server)
        add_TrainingServicer_to_server(TrainingServicer(self.registry, self.runner, self.admission, self.blocking),
                                       self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        enable_reflection(self.server, services=SERVICES, extra_service_names=[HEALTH])
        try:
            port = (self.server.add_secure_port(self.listen, self.tls) if self.tls
                    else self.server.add_insecure_port(self.listen))
        except RuntimeError as e:  # grpcio >= 1.5x raises where older ones returned 0
            raise CosmoError("--listen {}: cannot bind ({}); is another daemon on that port?".format(
                self.listen, e)) from None
        if not port and not self.listen.startswith("unix"):
            raise CosmoError("--listen {}: cannot bind; is another daemon on that port?".format(self.listen))
        await self.server.start()
        for name in ("",) + SERVICES:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._tasks = [asyncio.create_task(self._every(self.prune_interval_s, self._prune, "retention")),
                       asyncio.create_task(self._every(self.scrub_interval_s, self._scrub, "scrub", first=60.0))]
        return port

    def stop(self, grace: float = 5.0) -> None:
        """Health NOT_SERVING, watchers end, in-flight RPCs get ``grace`` seconds, running jobs are
        interrupted (checkpointed every epoch) and re-queued for the next start. Idempotent."""
        if self._stopped.is_set() or not self._thread.is_alive():
            return
        self._stopped.set()
        try:
            self._call(self._stop(grace), timeout=grace + 30)
        finally:
            self.runner.shutdown()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            # registry work already running in a thread (a retention pass, a scrub, which stops between
            # blobs) ends before its connections close: closing an SQLite connection in use crashes
            self._scrub_pool.shutdown(wait=True, cancel_futures=True)
            blocking = getattr(self, "blocking", None)
            if blocking is not None:
                blocking.pool.shutdown(wait=True, cancel_futures=True)
            if self.metrics is not None:  # a scrape in progress reads the registry: it ends first
                self.metrics.stop()
                self._gauges.close()
                self._stats_pool.shutdown(wait=True)
            self.registry.close()
            log.info("cloud-server stopped")

    async def _stop(self, grace: float) -> None:
        for name in ("",) + SERVICES:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        for t in self._tasks:
            t.cancel()
        self.events.close()
        await self.server.stop(grace)
        self.blocking.shutdown()

    # -- metrics (--metrics-listen)

    def _metrics(self) -> Any:
        """The RPC interceptor; binds the endpoint (a bind error fails the start) and adds the daemon's
        gauges, read at scrape time on the endpoint's threads."""
        from shared.rpc.metrics import Gauges, MetricsServer, RpcMetrics, daemon_registry
        reg = daemon_registry("cloud-server")
        interceptor = RpcMetrics(reg)
        # one thread reads the registry for every scrape: each scrape runs on a new HTTP thread, and a
        # registry connection is per thread (kept until close), so reading there would add one per scrape
        self._stats_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cloud-metrics")
        self._gauges = Gauges(self._gauge_rows, reg)
        self.metrics = MetricsServer(reg, self.metrics_listen)
        return interceptor

    def _gauge_rows(self) -> list[tuple[str, str, tuple[str, ...], list[tuple[tuple[str, ...], float]]]]:
        adm, lim = self.admission, self.limits
        st = self._stats_pool.submit(self.registry.stats).result(timeout=30)
        return [
            ("cosmo_cloud_open", "Calls and streams open now, by kind (--max-rpcs, --max-streams, --max-watchers, "
             "--max-downloads).", ("kind",), [(("rpcs",), adm.rpcs), (("streams",), adm.streams),
                                              (("watchers",), adm.watchers), (("downloads",), adm.downloads)]),
            ("cosmo_cloud_limit", "The admission limits, by kind.", ("kind",),
             [(("rpcs",), lim.max_rpcs), (("streams",), lim.max_streams), (("watchers",), lim.max_watchers),
              (("downloads",), lim.max_downloads)]),
            ("cosmo_cloud_jobs", "Training jobs in the registry, by state.", ("state",),
             [((k,), v) for k, v in st["jobs"].items()]),
            ("cosmo_cloud_registry_models", "Model names in the registry.", (), [((), st["models"])]),
            ("cosmo_cloud_registry_versions", "Model versions in the registry.", (), [((), st["versions"])]),
            ("cosmo_cloud_registry_blob_bytes", "Bytes of stored files (each content once).", (),
             [((), st["blob_bytes"])]),
            ("cosmo_cloud_registry_bad_blobs", "Stored files whose last verification failed (served as DATA_LOSS).",
             (), [((), st["bad_blobs"])]),
            ("cosmo_cloud_edge_reports", "Edge reports kept (retention: --reports-keep, --reports-max-age-s).",
             (), [((), st["reports"])]),
        ]

    # -- upkeep

    async def _every(self, interval_s: float, fn: Any, what: str, first: float = 0.0) -> None:
        if interval_s <= 0:
            return
        await asyncio.sleep(first)
        while True:
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; retrying in %.0f s", what, interval_s)
            await asyncio.sleep(interval_s)

    async def _prune(self) -> None:
        pruned = await self.blocking(self.registry.prune)
        for job_id in pruned["jobs"]:
            shutil.rmtree(job_dir(self.data_dir, job_id), ignore_errors=True)

    async def _scrub(self) -> None:
        stop = self._stopped.is_set
        await self._loop.run_in_executor(self._scrub_pool, lambda: self.registry.scrub(pause_s=0.05, stop=stop))


def serve(data_dir: str, listen: str, token: str | None = None, tls: grpc.ServerCredentials | None = None,
          max_jobs: int = 1, grace: float = 5.0, ready_file: str | None = None, limits: ServerLimits | None = None,
          retention: Retention | None = None, prune_interval_s: float = 600.0,
          scrub_interval_s: float = 6 * 3600.0, datasets_dir: str | None = None,
          metrics_listen: str | None = None) -> int:
    """Run until SIGTERM/SIGINT. Writes the bound port to ``ready_file`` once serving."""
    fds = raise_fd_limit()
    # The event loop shares the GIL with the executor threads; a shorter switch interval (default 5 ms)
    # bounds how long health checks and small RPCs wait for it while blob reads run.
    sys.setswitchinterval(0.001)
    tune_for_large_messages()  # Download builds a MiB-sized message per chunk: reuse them (shared/alloc.py)
    srv = CloudServer(data_dir, listen, token=token, tls=tls, max_jobs=max_jobs, limits=limits, retention=retention,
                      prune_interval_s=prune_interval_s, scrub_interval_s=scrub_interval_s, datasets_dir=datasets_dir,
                      metrics_listen=metrics_listen)
    need = srv.limits.max_streams + srv.limits.max_rpcs + 64
    if fds < need:
        log.warning("open-file limit %d is below --max-streams + --max-rpcs + 64 = %d: connections past it "
                    "will be refused by the kernel", fds, need)
    port = srv.start()
    if ready_file:
        write_text(ready_file, str(port))
    done = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        done.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done.wait()
    srv.stop(grace)
    return 0


__all__ = ["CloudServer", "SERVICES", "ServerLimits", "check_listen", "serve"]
