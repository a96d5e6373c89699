"""Prometheus metrics for both daemons (``--metrics-listen host:port``): a gRPC server interceptor and the
text endpoint, on the standard client library (``prometheus_client``).

Imported only when a daemon is asked for metrics, so serving without them imports nothing more. Runs on
the edge's tier too (Python 3.6, grpcio 1.48, prometheus_client 0.17).

* ``RpcMetrics``: a ``grpc.aio`` server interceptor with the names operators' dashboards already know
  (those of go-grpc-prometheus): ``grpc_server_started_total``, ``grpc_server_handled_total`` (by
  ``grpc_code``) and ``grpc_server_handling_seconds`` (a histogram), labelled by type, service and
  method. Only methods the server has get a label (an unknown path is answered UNIMPLEMENTED before the
  interceptor wraps anything), so a client cannot grow the label set.
* ``MetricsServer``: ``GET /metrics`` in Prometheus' text format on its own threads, away from the
  daemon's event loop; at most ``MAX_SCRAPES`` requests at once (more are closed), each with a socket
  timeout, so a slow or hostile scraper costs a bounded number of threads.
* ``daemon_registry()``: a registry per daemon (tests run several daemons in one process) with the
  process' own figures (CPU seconds, resident memory, open files) and a ``cosmo_build_info``.

Daemon-specific figures (open streams, jobs by state, registry size; model run time, execution provider)
are added by the apps with ``Gauge``/``Histogram`` or a collector on the same registry.
"""
import asyncio
import inspect
import logging
import socketserver
import threading
import time
from http.server import HTTPServer
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import MetricsHandler

from .. import __version__
from ..errors import CosmoError
from ..flags import host_port
from .auth import is_loopback

log = logging.getLogger(__name__)
# seconds: sub-millisecond health checks up to hour-long watch streams
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
           300.0, 1800.0, 3600.0)
MAX_SCRAPES = 8  # concurrent /metrics requests
SCRAPE_TIMEOUT_S = 10.0  # a request that does not arrive within this is dropped


def daemon_registry(daemon: str) -> CollectorRegistry:
    """A fresh registry with process and platform figures and ``cosmo_build_info{daemon, version}``."""
    reg = CollectorRegistry()
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    Gauge("cosmo_build_info", "The daemon and the cosmo-har version it runs (always 1).", ["daemon", "version"],
          registry=reg).labels(daemon, __version__).set(1)
    return reg


def _split(path: str) -> Tuple[str, str]:
    service, _, method = path.lstrip("/").rpartition("/")
    return service, method


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Counts and times every RPC by method and status code (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        names = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter("grpc_server_started_total", "RPCs started on the server.", names, registry=registry)
        self.handled = Counter("grpc_server_handled_total", "RPCs completed on the server, by status code.",
                               names + ["grpc_code"], registry=registry)
        self.seconds = Histogram("grpc_server_handling_seconds", "Time from the start of an RPC to its status "
                                 "(for streams: how long the stream was open).", names, buckets=BUCKETS,
                                 registry=registry)

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        service, method = _split(details.method)
        for attr, kind, make in (("unary_unary", "unary", grpc.unary_unary_rpc_method_handler),
                                 ("unary_stream", "server_stream", grpc.unary_stream_rpc_method_handler),
                                 ("stream_unary", "client_stream", grpc.stream_unary_rpc_method_handler),
                                 ("stream_stream", "bidi_stream", grpc.stream_stream_rpc_method_handler)):
            behaviour = getattr(handler, attr)
            if behaviour is not None:
                wrapped = self._wrap(behaviour, (kind, service, method))
                if wrapped is None:  # a sync behaviour (none of ours): served as it is, uncounted
                    return handler
                return make(wrapped, request_deserializer=handler.request_deserializer,
                            response_serializer=handler.response_serializer)
        return handler

    def _done(self, labels: Tuple[str, str, str], t0: float, context: Any, error: Optional[BaseException]) -> None:
        if error is None:
            code = _code(context) or "OK"
        elif isinstance(error, grpc.aio.AbortError):
            code = _code(context) or "UNKNOWN"
        elif isinstance(error, _CANCELLED):
            code = "CANCELLED"
        else:
            code = "UNKNOWN"  # what grpc answers for an exception a handler let through
        self.handled.labels(*(labels + (code,))).inc()
        self.seconds.labels(*labels).observe(time.perf_counter() - t0)

    def _wrap(self, behaviour: Callable[..., Any], labels: Tuple[str, str, str]) -> Optional[Callable[..., Any]]:
        # grpc.aio tells coroutine handlers from async generators by inspection: the wrapper is the same kind
        if inspect.isasyncgenfunction(behaviour):
            async def gen(request: Any, context: Any) -> Any:
                self.started.labels(*labels).inc()
                t0, err = time.perf_counter(), None
                try:
                    async for item in behaviour(request, context):
                        yield item
                except BaseException as e:
                    err = e
                    raise
                finally:
                    self._done(labels, t0, context, err)
            return gen
        if inspect.iscoroutinefunction(behaviour):
            async def coro(request: Any, context: Any) -> Any:
                self.started.labels(*labels).inc()
                t0, err = time.perf_counter(), None
                try:
                    return await behaviour(request, context)
                except BaseException as e:
                    err = e
                    raise
                finally:
                    self._done(labels, t0, context, err)
            return coro
        return None


_CANCELLED = (asyncio.CancelledError,)


def _code(context: Any) -> Optional[str]:
    """The status code a handler set (``abort``, ``set_code``) as its name, or None."""
    try:
        code = context.code()
    except Exception:  # pragma: no cover - an older runtime without ServicerContext.code()
        return None
    if code is None:
        return None
    if isinstance(code, grpc.StatusCode):
        return code.name
    for c in grpc.StatusCode:  # the runtime may hand back the integer value
        if c.value[0] == code:
            return c.name
    return None


class Gauges(object):
    """A collector of gauges read at scrape time from ``read()``, which returns
    ``[(name, help, label_names, [(label_values, value), ...]), ...]`` (no labels: ``()`` and one row).
    ``close()`` waits for a scrape in progress and makes later ones empty, so a daemon can close what
    ``read`` uses (a database) after it."""

    def __init__(self, read: Callable[[], List[Tuple[str, str, Sequence[str], List[Tuple[Sequence[str], float]]]]],
                 registry: CollectorRegistry) -> None:
        self.read = read
        self._lock = threading.Lock()
        self._closed = False
        registry.register(self)

    def describe(self) -> List[Any]:
        return []  # read at scrape time only (not when registered)

    def collect(self) -> Iterator[Any]:
        with self._lock:
            if self._closed:
                return
            try:
                rows = self.read()
            except Exception as e:  # a scrape never breaks the daemon; the rest of the page still goes out
                log.warning("metrics: daemon gauges unavailable (%s: %s)", type(e).__name__, e)
                return
        for name, text, labels, values in rows:
            fam = GaugeMetricFamily(name, text, labels=list(labels))
            for lv, v in values:
                fam.add_metric(list(lv), float(v))
            yield fam

    def close(self) -> None:
        with self._lock:
            self._closed = True


class _HTTPServer(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: Tuple[str, int], handler: Any, family: int) -> None:
        self.address_family = family
        self.slots = threading.BoundedSemaphore(MAX_SCRAPES)
        HTTPServer.__init__(self, address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):  # over MAX_SCRAPES: closed at once, no thread
            self.shutdown_request(request)
            return
        try:
            socketserver.ThreadingMixIn.process_request(self, request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            socketserver.ThreadingMixIn.process_request_thread(self, request, client_address)
        finally:
            self.slots.release()


class MetricsServer(object):
    """``GET /metrics`` of ``registry`` on ``listen`` (``host:port``), served by its own threads.
    ``start()`` returns the bound port; ``stop()`` is idempotent."""

    def __init__(self, registry: CollectorRegistry, listen: str) -> None:
        import socket
        host, port = host_port(listen, "--metrics-listen")
        handler = MetricsHandler.factory(registry)
        handler.timeout = SCRAPE_TIMEOUT_S  # socket timeout: a client that sends nothing is dropped
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self.httpd = _HTTPServer((host, port), handler, family)
        except OSError as e:
            raise CosmoError("--metrics-listen {}: cannot bind ({})".format(listen, e.strerror or e)) from None
        self.listen = listen
        if not is_loopback(listen):
            log.warning("metrics on %s are readable by anyone who can reach it (no token, no TLS): bind it to "
                        "loopback or a network only the scraper reaches", listen)
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> int:
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", self.httpd.server_address[0], self.port)
        return self.port

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()


__all__ = ["BUCKETS", "Gauges", "MetricsServer", "RpcMetrics", "daemon_registry"]
