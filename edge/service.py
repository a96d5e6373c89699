"""The edge's gRPC Inference service (``cosmo.v1.Inference``, protos/cosmo/v1/inference.proto) on ``grpc.aio``.

For apps on the device: listens on loopback or a unix socket (owner and group only) by default; a
listener other hosts can reach needs a bearer token or TLS/mTLS (``shared.rpc.auth``) unless the
operator says ``--insecure``. Predict and Embed take a batch of raw windows per modality; StreamPredict
forms windows on the device from streamed samples; Info reports the model, the execution provider
actually in use and the session settings. Search finds the windows most similar to a text (or an
embedding) among the recent windows the service saw while an aligned model was installed.

Serving model: one asyncio event loop (its own thread, so the agent's threads can start and stop it)
runs every call; a stream is a coroutine, never a pinned thread. Model runs go to a small executor
(ONNX Runtime releases the GIL), so health checks and Info answer while models run. Limits
(``EdgeLimits``): unary calls in flight, streams open, windows per request, stream idle time, message
size; over a limit a call gets RESOURCE_EXHAUSTED at once. Status codes: INVALID_ARGUMENT naming the
modality (or field) for a malformed request, RESOURCE_EXHAUSTED over a limit, FAILED_PRECONDITION
while no model is installed, DEADLINE_EXCEEDED for a stream idle past its limit, UNAUTHENTICATED
without the token. A bad request fails alone and is logged as one WARNING line; the server keeps
serving.

With an aligned model installed, Embed answers with its embedding (``space = "aligned"``, the text space;
else the classifier's, ``space = "classifier"``), and Predict, Embed and StreamPredict add every window
they see to the index (best effort: a window the aligned model cannot take is logged and skipped).
"""
import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Tuple

import grpc
import numpy as np
from dataclasses import dataclass

from edge.aligned import AlignedRuntime
from edge.holders import AlignedHolder, ModelHolder
from edge.runtime import InputError, Runtime
from edge.wire import TooLarge, Windower, decode_windows, prediction_response
from shared import rpc
from shared.config import not_positive
from shared.errors import CosmoError, clip, status_details
from shared.rpc import pb, refusal_log_level
from shared.rpc.auth import TokenAuth
from shared.rpc.runtime import Malformed

log = logging.getLogger(__name__)
SERVICE = "cosmo.v1.Inference"
HEALTH = "grpc.health.v1.Health"
DEFAULT_LISTEN = "127.0.0.1:0"
MiB = 1 << 20
INLINE_WINDOWS = 4  # a call with at most this many windows may run on the loop (see InferenceServicer._unary)


def _small(request: Any) -> bool:
    """Whether a PredictRequest carries at most ``INLINE_WINDOWS`` windows of every modality."""
    return all(len(w.shape) == 3 and 0 < w.shape[0] <= INLINE_WINDOWS for w in request.windows)


@dataclass(frozen=True)
class EdgeLimits:
    """Limits of one Inference service (counts; seconds; bytes); one ``edge-agent serve/run`` flag each.

    ``max_batch``: windows per Predict/Embed request (and windows a stream may buffer ahead).
    ``max_inflight``: Predict/Embed/Search/Info calls running or waiting for the model at once.
    ``max_streams``: StreamPredict streams open at once.
    ``stream_idle_s``: a stream whose client neither sends nor takes a message for this long is ended.
    ``max_message_bytes``: largest request accepted.
    ``workers``: threads that run the model (each ONNX Runtime run uses its own intra-op threads).
    """

    max_batch: int = 256
    max_inflight: int = 64
    max_streams: int = 64
    stream_idle_s: float = 60.0
    max_message_bytes: int = 64 * MiB
    workers: int = 2

    def __post_init__(self) -> None:
        bad = not_positive(self)
        if bad:
            raise CosmoError("--{}: must be a number > 0, got {!r}".format(bad.replace("_", "-"), getattr(self, bad)))


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _runtime(holder: ModelHolder) -> Runtime:
    rt = holder.get()
    if rt is None:
        raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "no model installed yet; the agent has not pulled or "
                                                          "fine-tuned one")
    return rt


def _status(e: BaseException) -> Tuple[grpc.StatusCode, str]:
    """The one place errors of the Inference service become status codes."""
    if isinstance(e, _Abort):
        return e.code, e.message
    if isinstance(e, TooLarge):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)
    if isinstance(e, CosmoError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(e)
    return grpc.StatusCode.INTERNAL, "{}: {}".format(type(e).__name__, e)


class InferenceServicer(object):
    """``cosmo.v1.Inference`` over a ``ModelHolder`` (async handlers; counters live on the loop's thread)."""

    def __init__(self, holder: ModelHolder, limits: Optional[EdgeLimits] = None,
                 aligned: Optional[AlignedHolder] = None, user_windows: Any = None) -> None:
        self.holder = holder
        self.user_windows = user_windows  # edge.personal.UserWindows: StreamPredict's windows, kept on the device
        self.limits = limits or EdgeLimits()
        self.max_batch = int(self.limits.max_batch)
        self.aligned = aligned if aligned is not None else AlignedHolder()
        self.pool = ThreadPoolExecutor(max_workers=int(self.limits.workers), thread_name_prefix="edge-model")
        self.inflight = 0
        self.streams = 0
        self.model_seconds = None  # type: Any  # a Histogram by method, with --metrics-listen (EdgeServer)
        self._warned = set()  # messages of index failures already logged

    # ---------------------------------------------------------------------------- plumbing
    async def _fail(self, context: Any, method: str, e: BaseException) -> None:
        code, details = _status(e)
        if code == grpc.StatusCode.INTERNAL:
            log.error("%s failed", method, exc_info=(type(e), e, e.__traceback__))
        else:  # a client's mistake: one line, the client's strings escaped
            log.log(refusal_log_level(code),
                    "%s from %s: %s %s", method, context.peer(), code.name, clip(details, 300))
        await context.abort(code, status_details(details))

    async def _unary(self, context: Any, method: str, fn: Callable[[], Any], small: bool = False) -> Any:
        """Admission (``max_inflight``), ``fn`` in the model executor, errors mapped. A ``small`` call (at
        most ``INLINE_WINDOWS`` windows) that arrives while no other call runs is run on the loop itself:
        it saves the two thread hand-offs (about 0.3 ms of a 1.3 ms Predict at batch 1) and holds the loop
        for about as long as a hand-off would (under a millisecond); under load everything goes to the
        executor."""
        if self.inflight >= self.limits.max_inflight:
            await self._fail(context, method, _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy: {} calls in "
                             "flight (--max-inflight {}); retry later".format(self.inflight, self.limits.max_inflight)))
        self.inflight += 1
        if self.model_seconds is not None:
            fn = self._timed(method, fn)
        try:
            if small and self.inflight == 1 and not self.streams:
                return fn()
            return await asyncio.get_event_loop().run_in_executor(self.pool, fn)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as e:
            await self._fail(context, method, e)
        finally:
            self.inflight -= 1

    def _timed(self, method: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        hist = self.model_seconds.labels(method)

        def run() -> Any:
            t0 = time.perf_counter()
            try:
                return fn()
            finally:
                hist.observe(time.perf_counter() - t0)
        return run

    def _index(self, windows: Dict[str, np.ndarray], rates: Dict[str, float], source: str,
               labels: Optional[List[str]] = None, emb: Optional[np.ndarray] = None,
               art: Optional[AlignedRuntime] = None) -> None:
        """Add windows to the search index (best effort: a failure is logged, the request goes on)."""
        art = art or self.aligned.get()
        index = self.aligned.index
        if art is None or index is None:
            return
        try:
            if emb is None:
                emb = art.embed(windows, rates)
            index.add(emb, labels if labels is not None else art.zero_shot(emb), source, art.name, art.version)
        except Exception as e:  # never fail the request for the index
            msg = "{}: {}".format(type(e).__name__, e)
            if msg not in self._warned and len(self._warned) < 100:
                self._warned.add(msg)
                log.warning("search index: %s windows not indexed (%s); further identical failures are logged "
                            "at DEBUG", source, clip(msg, 300))
            else:
                log.debug("search index: %s windows not indexed (%s)", source, clip(msg, 300))

    # ------------------------------------------------------------------------------- RPCs
    async def Predict(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            rt = _runtime(self.holder)
            windows, rates = decode_windows(request, self.max_batch)
            out = rt.predict(windows, rates)
            resp = prediction_response(rt, out)
            self._index(windows, rates, "Predict", labels=[rt.classes[int(i)] for i in out["label"]])
            return resp
        return await self._unary(context, "Predict", run, small=_small(request))

    async def Embed(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            art = self.aligned.get()
            windows, rates = decode_windows(request, self.max_batch)
            if art is not None:  # the aligned (text) space
                emb = art.embed(windows, rates)
                self._index(windows, rates, "Embed", emb=emb, art=art)
                return pb.EmbedResponse(embeddings=[pb.Embedding(values=e.tolist()) for e in emb],
                                        dim=int(emb.shape[1]), model_version=art.version, model_name=art.name,
                                        used_modalities=list(windows), dropped_modalities=[], space="aligned")
            rt = _runtime(self.holder)
            out = rt.predict(windows, rates)
            return pb.EmbedResponse(embeddings=[pb.Embedding(values=e.tolist()) for e in out["embedding"]],
                                    dim=int(out["embedding"].shape[1]), model_version=rt.version,
                                    model_name=rt.name, used_modalities=out["used"],
                                    dropped_modalities=out["dropped"], space="classifier")
        return await self._unary(context, "Embed", run, small=_small(request))

    async def StreamPredict(self, request_iterator: Any, context: Any) -> None:
        """A coroutine per stream: samples are windowed on the loop, each window runs in the executor, or on
        the loop itself while this is the only stream and no unary call runs (one window at a time, as
        ``_unary`` runs a small call: no thread hand-offs in a device app's continuous inference)."""
        lim = self.limits
        if self.streams >= lim.max_streams:
            await self._fail(context, "StreamPredict", _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy: {} "
                             "streams open (--max-streams {}); retry later".format(self.streams, lim.max_streams)))
        self.streams += 1
        loop = asyncio.get_event_loop()
        try:
            rt = _runtime(self.holder)
            windower = None  # type: Optional[Windower]
            while True:
                try:
                    chunk = await asyncio.wait_for(context.read(), lim.stream_idle_s)
                except asyncio.TimeoutError:
                    raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no samples for {:g} s (--stream-idle-s); "
                                 "stream closed".format(lim.stream_idle_s)) from None
                if chunk is grpc.aio.EOF:
                    return
                if isinstance(chunk, Malformed):  # garbage bytes on the wire
                    raise InputError("request", chunk.message)
                if windower is None:
                    windower = Windower(rt, chunk.hop_fraction or 0.5, max_ahead=self.max_batch)
                windower.add(chunk)
                for k, w in windower.ready():
                    def run(w: Dict[str, np.ndarray] = w, k: int = k) -> Any:
                        out = rt.predict(w)
                        self._index(w, {}, "StreamPredict", labels=[rt.classes[int(i)] for i in out["label"]])
                        if self.user_windows is not None:
                            self.user_windows.add(w, rt.modalities)
                        return prediction_response(rt, out, window_index=k)
                    if self.model_seconds is not None:
                        run = self._timed("StreamPredict", run)
                    if self.streams == 1 and not self.inflight:  # alone: one window on the loop, as _unary
                        resp = run()
                    else:
                        resp = await loop.run_in_executor(self.pool, run)
                    try:
                        await asyncio.wait_for(context.write(resp), lim.stream_idle_s)
                    except asyncio.TimeoutError:
                        raise _Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "predictions not read for {:g} s "
                                     "(--stream-idle-s); stream closed".format(lim.stream_idle_s)) from None
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as e:
            if not context.cancelled():
                await self._fail(context, "StreamPredict", e)
        finally:
            self.streams -= 1

    async def Info(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            art = self.aligned.get()
            rt = self.holder.get() if art is not None else _runtime(self.holder)
            index = self.aligned.index
            lim = self.limits
            resp = pb.InfoResponse(max_batch=self.max_batch, aligned_model=art.name if art else "",
                                   aligned_version=art.version if art else 0,
                                   index_size=index.size if index is not None else 0,
                                   index_capacity=index.capacity if index is not None else 0,
                                   max_streams=int(lim.max_streams), max_inflight=int(lim.max_inflight))
            if rt is not None:
                mods = [pb.ModalitySchema(name=m, channels=len(d["channels"]), window=int(d["window"]),
                                          rate_hz=float(d["rate_hz"]), channel_names=list(d["channels"]),
                                          units=str(d.get("units", ""))) for m, d in rt.schema.items()]
                info = rt.info()
                resp.MergeFrom(pb.InfoResponse(
                    model_name=rt.name, model_version=rt.version, provider=rt.provider,
                    available_providers=rt.available_providers, modalities=mods, classes=rt.classes,
                    fallback=rt.fallback, embedding_dim=rt.embedding_dim,
                    intra_op_threads=int(info["intra_op_threads"]), graph_optimization=info["graph_optimization"],
                    engine_cache=bool(info["engine_cache"]), ort_spin=bool(info["ort_spin"])))
            return resp
        return await self._unary(context, "Info", run, small=True)

    async def Search(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            art = self.aligned.get()
            index = self.aligned.index
            if art is None:
                raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "no aligned model installed; Search needs one "
                             "(edge-agent run --aligned-model NAME, or serve --aligned-dir FOLDER)")
            if index is None:
                raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "this server keeps no search index")
            has_text, n_emb = len(request.text) > 0, len(request.embedding)
            if has_text and n_emb:
                raise InputError("text", "give exactly one of text or embedding; both were given")
            if not has_text and not n_emb:
                raise InputError("text", "give exactly one of text or embedding; neither was given (text is "
                                 "empty)")
            if has_text:
                q = art.encode_text(request.text)
            else:
                q = np.asarray(request.embedding, dtype=np.float32)
                if q.shape[0] != art.dim:
                    raise InputError("embedding", "{} values; the aligned model {} v{} embeds in {} dimensions"
                                     .format(q.shape[0], art.name, art.version, art.dim))
                if not np.isfinite(q).all() or not np.any(q):
                    raise InputError("embedding", "must be finite and not all zero")
            k, size = int(request.k), index.size
            if k < 1:
                raise InputError("k", "{}; ask for at least 1 hit".format(k))
            if size == 0:
                raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "the search index is empty: no window has been "
                             "seen since aligned model {} v{} was installed; send windows with Predict, Embed "
                             "or StreamPredict first".format(art.name, art.version))
            if k > size:
                raise InputError("k", "{} is over the index size of {} windows".format(k, size))
            hits = index.search(q, k)
            return pb.SearchResponse(
                hits=[pb.SearchHit(window_id=h.window_id, time=h.time, predicted_activity=h.predicted_activity,
                                   score=h.score, source=h.source) for h in hits],
                index_size=index.size, dim=art.dim, query="text" if has_text else "embedding",
                model_name=art.name, model_version=art.version, text_encoder=art.text_encoder_name)
        return await self._unary(context, "Search", run)


class EdgeServer(object):
    """The Inference service (+ ``grpc.health.v1`` and reflection) on its own event-loop thread.

    ``start()`` returns the bound port (1 for a unix socket); ``stop(grace)`` waits up to ``grace``
    seconds for calls in flight. Health for ``cosmo.v1.Inference`` is SERVING while a model is
    installed, NOT_SERVING before. ``token``: bearer token for every call but health (reflection
    included); ``tls``: ``grpc.ServerCredentials`` (``shared.rpc.auth.server_credentials``)."""

    def __init__(self, holder: ModelHolder, listen: str = DEFAULT_LISTEN, limits: Optional[EdgeLimits] = None,
                 aligned: Optional[AlignedHolder] = None, token: Optional[str] = None, tls: Any = None,
                 metrics_listen: Optional[str] = None, user_windows: Any = None) -> None:
        self.holder, self.listen, self.token, self.tls = holder, listen, token, tls
        self.metrics_listen = metrics_listen
        self.metrics = None  # type: Any  # the MetricsServer with metrics_listen
        self.limits = limits or EdgeLimits()
        self.servicer = InferenceServicer(holder, self.limits, aligned, user_windows)
        self.port = self.metrics_port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="edge-aio", daemon=True)
        self._stopped = False

    def _call(self, coro: Any, timeout: Optional[float] = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> int:
        self._thread.start()
        try:
            self.port = self._call(self._start(), timeout=60)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            if self.metrics is not None:
                self.metrics.stop()
            raise
        self.holder.add_listener(self._on_swap)
        if self.metrics is not None:
            self.metrics_port = self.metrics.start()
        log.info("inference service on %s (port %d)", self.listen, self.port)
        return self.port

    async def _start(self) -> int:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        lim = self.limits
        opts = [("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", int(lim.max_message_bytes)),
                ("grpc.max_send_message_length", int(lim.max_message_bytes)),
                ("grpc.keepalive_time_ms", 30000), ("grpc.keepalive_timeout_ms", 10000),
                ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.min_ping_interval_without_data_ms", 5000)]
        interceptors = [TokenAuth(self.token)] if self.token else []
        if self.metrics_listen is not None:  # outermost: it also counts what the token check refuses
            interceptors.insert(0, self._metrics())
        self.server = grpc.aio.server(interceptors=interceptors or None, options=opts)
        rpc.add_InferenceServicer_to_server(self.servicer, self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._serving = health_pb2.HealthCheckResponse
        try:
            rpc.enable_reflection(self.server, services=(SERVICE,), extra_service_names=[HEALTH])
        except ImportError:
            log.warning("grpcio-reflection is not installed; serving without reflection")
        sock = self.listen[len("unix:"):] if self.listen.startswith("unix:") else None
        old_umask = os.umask(0o117) if sock else None  # the socket is born owner/group-only
        try:
            port = (self.server.add_secure_port(self.listen, self.tls) if self.tls
                    else self.server.add_insecure_port(self.listen))
        except RuntimeError as e:  # newer grpcio raises where 1.48 returns 0
            raise CosmoError("--listen {}: cannot bind ({})".format(self.listen, e)) from None
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if not port:
            raise CosmoError("--listen {}: cannot bind; is another server on that address?".format(self.listen))
        await self.server.start()
        if sock and os.path.exists(sock):
            os.chmod(sock, 0o660)
        await self.health.set("", self._serving.SERVING)
        await self._set_health(self.holder.get() is not None)
        return port

    def _metrics(self) -> Any:
        """The RPC interceptor; binds the endpoint and adds the edge's figures: model run time per method
        (``InferenceServicer.model_seconds``) and gauges read at scrape time."""
        from prometheus_client import Histogram

        from shared.rpc.metrics import BUCKETS, Gauges, MetricsServer, RpcMetrics, daemon_registry
        reg = daemon_registry("edge-agent")
        interceptor = RpcMetrics(reg)
        self.servicer.model_seconds = Histogram(
            "cosmo_edge_model_seconds", "Time a call spends in the model (decode, run, encode; without gRPC), by "
            "method.", ["method"], buckets=BUCKETS, registry=reg)
        Gauges(self._gauge_rows, reg)
        self.metrics = MetricsServer(reg, self.metrics_listen)
        return interceptor

    def _gauge_rows(self) -> List[Any]:
        sv, rt, art = self.servicer, self.holder.get(), self.servicer.aligned.get()
        index = sv.aligned.index
        rows = [
            ("cosmo_edge_open", "Calls in the model and streams open now (--max-inflight, --max-streams).", ("kind",),
             [(("inflight",), sv.inflight), (("streams",), sv.streams)]),
            ("cosmo_edge_model_info", "The model being served and the execution provider it runs on (1; none: no "
             "row).", ("name", "version", "provider", "fallback"),
             [((rt.name, str(rt.version), rt.provider, rt.fallback or ""), 1)] if rt is not None else []),
            ("cosmo_edge_aligned_info", "The aligned (text-search) model installed (1; none: no row).",
             ("name", "version"), [((art.name, str(art.version)), 1)] if art is not None else []),
            ("cosmo_edge_index_windows", "Windows in the search index.", (),
             [((), index.size if index is not None else 0)]),
            ("cosmo_edge_personal_windows", "The user's windows kept for personalization (--personal-windows).", (),
             [((), len(sv.user_windows) if sv.user_windows is not None else 0)]),
        ]
        return rows

    async def _set_health(self, serving: bool) -> None:
        await self.health.set(SERVICE, self._serving.SERVING if serving else self._serving.NOT_SERVING)

    def _on_swap(self, rt: Optional[Runtime]) -> None:
        if self._stopped:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._set_health(rt is not None), self._loop)
        except RuntimeError:  # the loop is closing
            pass

    def stop(self, grace: Optional[float] = 5.0) -> None:
        """Health NOT_SERVING, then calls in flight get ``grace`` seconds. Idempotent."""
        if self._stopped or not self._thread.is_alive():
            return
        self._stopped = True
        try:
            self._call(self._stop(grace), timeout=(grace or 0) + 30)
        finally:
            self.servicer.pool.shutdown(wait=False)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if self.metrics is not None:
                self.metrics.stop()
            if self.servicer.user_windows is not None:
                self.servicer.user_windows.flush()

    async def _stop(self, grace: Optional[float]) -> None:
        await self.health.set("", self._serving.NOT_SERVING)
        await self._set_health(False)
        await self.server.stop(grace)


def serve_inference(holder: ModelHolder, listen: str = DEFAULT_LISTEN, max_batch: int = 256,
                    max_workers: int = 2, aligned: Optional[AlignedHolder] = None,
                    limits: Optional[EdgeLimits] = None, token: Optional[str] = None,
                    tls: Any = None) -> Tuple[EdgeServer, int]:
    """Start an ``EdgeServer`` on ``listen`` (``host:port`` or ``unix:/path``); returns ``(server, port)``.
    ``limits`` wins over ``max_batch``/``max_workers`` (kept for callers that only set those)."""
    if limits is None:
        limits = EdgeLimits(max_batch=max_batch, workers=max_workers)
    server = EdgeServer(holder, listen, limits=limits, aligned=aligned, token=token, tls=tls)
    return server, server.start()


__all__ = ["AlignedHolder", "EdgeLimits", "EdgeServer", "InferenceServicer", "ModelHolder", "SERVICE",
           "serve_inference"]
