"""The edge's gRPC Inference service (``cosmo.v1.Inference``, protos/cosmo/v1/inference.proto).

For apps on the device: listens on loopback or a unix socket by default. Predict and Embed take a batch
of raw windows per modality; StreamPredict forms windows on the device from streamed samples; Info
reports the model and the execution provider actually in use. Search finds the windows most similar to
a text (or an embedding) among the recent windows the service saw while an aligned model was installed
(``AlignedHolder``: the aligned runtime and its ``edge.index.WindowIndex``). Status codes: INVALID_ARGUMENT naming the
modality and its expected schema (wrong shape, channel count, window length, sampling rate, NaN/Inf,
unknown modality), RESOURCE_EXHAUSTED for a batch over ``max_batch``, FAILED_PRECONDITION while no
model is installed. A bad request fails alone; the server keeps serving.

With an aligned model installed, Embed answers with its embedding (``space = "aligned"``, the text space;
else the classifier's, ``space = "classifier"``), and Predict, Embed and StreamPredict add every window
they see to the index (embedded by the aligned model; predicted activity = the classifier's label where
it ran, else the aligned zero-shot class). Indexing is best effort: a window the aligned model cannot
take (a modality missing, another schema) is logged and skipped, never failing the request.

The model lives in a ``ModelHolder``; ``swap`` replaces it atomically, and every request works with the
runtime it got when it started, so a swap in the middle of a request is safe.
"""
import logging
import threading
from concurrent import futures
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import grpc
import numpy as np

from edge.aligned import AlignedRuntime
from edge.index import WindowIndex
from edge.runtime import InputError, Runtime
from shared import rpc
from shared.errors import CosmoError
from shared.rpc import pb

log = logging.getLogger(__name__)
SERVICE = "cosmo.v1.Inference"
DEFAULT_LISTEN = "127.0.0.1:0"
MAX_MESSAGE = 64 << 20  # bytes


class ModelHolder(object):
    """A thread-safe reference to the current ``Runtime`` (or None before the first install)."""

    def __init__(self, runtime: Optional[Runtime] = None) -> None:
        self._lock = threading.Lock()
        self._rt = runtime
        self._listeners: List[Callable[[Optional[Runtime]], None]] = []

    def get(self) -> Optional[Runtime]:
        with self._lock:
            return self._rt

    def swap(self, rt: Optional[Runtime]) -> Optional[Runtime]:
        """Install ``rt``; return the runtime it replaces. Requests already running keep theirs."""
        with self._lock:
            old, self._rt = self._rt, rt
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(rt)
            except Exception:  # a listener must not break the swap
                log.exception("model holder listener failed")
        return old

    def add_listener(self, fn: Callable[[Optional[Runtime]], None]) -> None:
        """Call ``fn(runtime)`` after every swap (and once now)."""
        with self._lock:
            self._listeners.append(fn)
            rt = self._rt
        fn(rt)


class AlignedHolder(ModelHolder):
    """The aligned runtime (or None) and the search ``index`` its embeddings go into. Installing a model
    of another name or version drops the index's windows (not comparable across models)."""

    def __init__(self, index: Optional[WindowIndex] = None, runtime: Optional[AlignedRuntime] = None) -> None:
        super().__init__(None)
        self.index = index
        if runtime is not None:
            self.swap(runtime)

    def swap(self, rt: Optional[Any]) -> Optional[Any]:  # type: ignore[override]
        if rt is not None and self.index is not None:
            self.index.set_model(rt.name, int(rt.version), int(rt.dim))
        return super().swap(rt)


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


def decode_windows(request: Any, rt: Runtime, max_batch: int) -> Tuple[Dict[str, np.ndarray], Dict[str, float]]:
    """``PredictRequest`` -> ``({modality: [N, T, C] float32}, {modality: rate_hz})``, checked."""
    windows, rates = {}, {}  # type: Dict[str, np.ndarray], Dict[str, float]
    if not request.windows:
        raise InputError("windows", "no modality given; the model's modalities are {}".format(rt.modalities))
    for w in request.windows:
        m = w.modality
        if m not in rt.schema:
            raise InputError(m or "modality", "unknown modality {!r}; the model's modalities are {}".format(
                m, rt.modalities))
        if m in windows:
            raise InputError(m, "given twice in one request")
        shape = [int(s) for s in w.shape]
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(m, "shape {}; {}".format(shape, rt.expected(m)))
        if shape[0] > max_batch:
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "{}: batch of {} windows is over this server's limit "
                                                             "of {}; split the request".format(m, shape[0], max_batch))
        if request.batch > 0 and shape[0] != request.batch:
            raise InputError(m, "{} windows but batch = {}".format(shape[0], request.batch))
        if len(w.data) != shape[0] * shape[1] * shape[2]:
            raise InputError(m, "shape {} needs {} values, got {}; {}".format(
                shape, shape[0] * shape[1] * shape[2], len(w.data), rt.expected(m)))
        windows[m] = np.asarray(w.data, dtype=np.float32).reshape(shape)
        if w.rate_hz:
            rates[m] = float(w.rate_hz)
    return windows, rates


def prediction_response(rt: Runtime, out: Dict[str, Any], window_index: int = 0) -> Any:
    preds = []
    for i in range(out["proba"].shape[0]):
        label = int(out["label"][i])
        preds.append(pb.Prediction(label=label, label_name=rt.classes[label], proba=out["proba"][i].tolist(),
                                   beta=out["beta"][i].tolist(),
                                   dropped=[m for j, m in enumerate(rt.modalities) if not out["present"][i, j]]))
    return pb.PredictResponse(predictions=preds, modalities=rt.modalities, used_modalities=out["used"],
                              dropped_modalities=out["dropped"], model_name=rt.name, model_version=rt.version,
                              provider=rt.provider, window_index=window_index)


class _Windower(object):
    """Forms aligned windows from streamed samples (see ``SamplesChunk`` in inference.proto).

    Every modality's stream starts at time 0: window k of modality m is its samples
    ``[k * hop_m, k * hop_m + window_m)``. Window k is formed once every modality streamed so far covers
    it; a modality that joins late skips the samples of windows already formed. A modality may run at
    most ``max_ahead`` windows ahead of the slowest one (RESOURCE_EXHAUSTED past that: bounded memory)."""

    def __init__(self, rt: Runtime, hop_fraction: float, max_ahead: int = 256) -> None:
        if not 0.0 < hop_fraction <= 1.0:
            raise InputError("hop_fraction", "must be in (0, 1], got {:g}".format(hop_fraction))
        self.rt = rt
        self.win = {m: int(d["window"]) for m, d in rt.schema.items()}
        self.hop = {m: max(1, int(round(self.win[m] * hop_fraction))) for m in rt.modalities}
        self.buf = {}  # type: Dict[str, np.ndarray]
        self.base = {}  # type: Dict[str, int]  # stream index of buf[m][0]
        self.next = 0  # index of the next window to form
        self.max_ahead = int(max_ahead)

    def add(self, chunk: Any) -> None:
        rt, m = self.rt, chunk.modality
        if m not in rt.schema:
            raise InputError(m or "modality", "unknown modality {!r}; the model's modalities are {}".format(
                m, rt.modalities))
        c = len(rt.schema[m]["channels"])
        if chunk.channels != c:
            raise InputError(m, "{} channels; {}".format(chunk.channels, rt.expected(m)))
        if len(chunk.data) % c:
            raise InputError(m, "{} values is not a whole number of {}-channel samples".format(len(chunk.data), c))
        if chunk.rate_hz and abs(chunk.rate_hz - float(rt.schema[m]["rate_hz"])) > 1e-6:
            raise InputError(m, "sampled at {:g} Hz; {}".format(chunk.rate_hz, rt.expected(m)))
        a = np.asarray(chunk.data, dtype=np.float32).reshape(-1, c)
        if not np.isfinite(a).all():
            raise InputError(m, "contains NaN or Inf; {}".format(rt.expected(m)))
        if m not in self.buf:
            self.buf[m], self.base[m] = np.zeros((0, c), np.float32), 0
        self.buf[m] = np.concatenate([self.buf[m], a])
        self._trim()
        if len(self.buf[m]) > self.win[m] + self.max_ahead * self.hop[m]:
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "{}: {} samples buffered, more than {} windows ahead of "
                         "the other streamed modalities {}; interleave the modalities by time".format(
                             m, len(self.buf[m]), self.max_ahead, sorted(set(self.buf) - {m})))

    def _trim(self) -> None:
        for m in self.buf:
            drop = min(len(self.buf[m]), self.next * self.hop[m] - self.base[m])
            if drop > 0:
                self.buf[m], self.base[m] = self.buf[m][drop:], self.base[m] + drop

    def ready(self) -> Iterator[Tuple[int, Dict[str, np.ndarray]]]:
        """Windows every streamed modality covers, in order; each as ``(k, {modality: [1, T, C]})``."""
        while self.buf and all(self.base[m] == self.next * self.hop[m] and len(b) >= self.win[m]
                               for m, b in self.buf.items()):
            w = {m: b[None, :self.win[m]].copy() for m, b in self.buf.items()}
            k, self.next = self.next, self.next + 1
            self._trim()
            yield k, w


def _abort_with(context: Any, e: Exception) -> None:
    """The one place errors of the Inference service become status codes."""
    if isinstance(e, _Abort):
        context.abort(e.code, e.message)
    if isinstance(e, InputError):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    log.exception("inference failed")
    context.abort(grpc.StatusCode.INTERNAL, str(e))


class InferenceServicer(object):
    """``cosmo.v1.Inference`` over a ``ModelHolder``; batches over ``max_batch`` windows are refused."""

    def __init__(self, holder: ModelHolder, max_batch: int = 256, aligned: Optional[AlignedHolder] = None) -> None:
        self.holder = holder
        self.max_batch = int(max_batch)
        self.aligned = aligned if aligned is not None else AlignedHolder()
        self._warned = set()  # type: Set[str]

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
                            "at DEBUG", source, msg)
            else:
                log.debug("search index: %s windows not indexed (%s)", source, msg)

    def _call(self, context: Any, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (_Abort, CosmoError) as e:
            _abort_with(context, e)

    def Predict(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            rt = _runtime(self.holder)
            windows, rates = decode_windows(request, rt, self.max_batch)
            out = rt.predict(windows, rates)
            resp = prediction_response(rt, out)
            self._index(windows, rates, "Predict", labels=[rt.classes[int(i)] for i in out["label"]])
            return resp
        return self._call(context, run)

    def Embed(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            art = self.aligned.get()
            if art is not None:  # the aligned (text) space
                windows, rates = decode_windows(request, art, self.max_batch)
                emb = art.embed(windows, rates)
                self._index(windows, rates, "Embed", emb=emb, art=art)
                return pb.EmbedResponse(embeddings=[pb.Embedding(values=e.tolist()) for e in emb],
                                        dim=int(emb.shape[1]), model_version=art.version, model_name=art.name,
                                        used_modalities=list(windows), dropped_modalities=[], space="aligned")
            rt = _runtime(self.holder)
            windows, rates = decode_windows(request, rt, self.max_batch)
            out = rt.predict(windows, rates)
            return pb.EmbedResponse(embeddings=[pb.Embedding(values=e.tolist()) for e in out["embedding"]],
                                    dim=int(out["embedding"].shape[1]), model_version=rt.version,
                                    model_name=rt.name, used_modalities=out["used"],
                                    dropped_modalities=out["dropped"], space="classifier")
        return self._call(context, run)

    def StreamPredict(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        try:
            rt = _runtime(self.holder)
            windower = None  # type: Optional[_Windower]
            for chunk in request_iterator:
                if windower is None:
                    windower = _Windower(rt, chunk.hop_fraction or 0.5, max_ahead=self.max_batch)
                windower.add(chunk)
                for k, w in windower.ready():
                    out = rt.predict(w)
                    self._index(w, {}, "StreamPredict", labels=[rt.classes[int(i)] for i in out["label"]])
                    yield prediction_response(rt, out, window_index=k)
        except (_Abort, CosmoError) as e:
            _abort_with(context, e)

    def Info(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            art = self.aligned.get()
            rt = self.holder.get() if art is not None else _runtime(self.holder)
            index = self.aligned.index
            resp = pb.InfoResponse(max_batch=self.max_batch, aligned_model=art.name if art else "",
                                   aligned_version=art.version if art else 0,
                                   index_size=index.size if index is not None else 0,
                                   index_capacity=index.capacity if index is not None else 0)
            if rt is not None:
                mods = [pb.ModalitySchema(name=m, channels=len(d["channels"]), window=int(d["window"]),
                                          rate_hz=float(d["rate_hz"]), channel_names=list(d["channels"]),
                                          units=str(d.get("units", ""))) for m, d in rt.schema.items()]
                resp.MergeFrom(pb.InfoResponse(
                    model_name=rt.name, model_version=rt.version, provider=rt.provider,
                    available_providers=rt.available_providers, modalities=mods, classes=rt.classes,
                    fallback=rt.fallback, embedding_dim=rt.embedding_dim))
            return resp
        return self._call(context, run)

    def Search(self, request: Any, context: Any) -> Any:
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
        return self._call(context, run)


def serve_inference(holder: ModelHolder, listen: str = DEFAULT_LISTEN, max_batch: int = 256,
                    max_workers: int = 8, aligned: Optional[AlignedHolder] = None) -> Tuple[grpc.Server, int]:
    """Start the Inference service (+ grpc.health.v1 and reflection) on ``listen`` (``host:port`` or
    ``unix:/path``); returns ``(server, port)`` (the bound port; 1 for a unix socket). Health for
    ``cosmo.v1.Inference`` is SERVING while a model is installed, NOT_SERVING before. ``aligned``: the
    aligned model and search index (Search answers FAILED_PRECONDITION without one)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers),
                         options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                  ("grpc.max_send_message_length", MAX_MESSAGE)])
    rpc.add_InferenceServicer_to_server(InferenceServicer(holder, max_batch=max_batch, aligned=aligned), server)
    health = rpc.add_health(server, service_names=(SERVICE,))
    try:
        rpc.enable_reflection(server, services=(SERVICE,), extra_service_names=["grpc.health.v1.Health"])
    except ImportError:
        log.warning("grpcio-reflection is not installed; serving without reflection")
    port = server.add_insecure_port(listen)
    if not port:
        raise CosmoError("inference: could not listen on {!r}".format(listen))

    def on_swap(rt: Optional[Runtime]) -> None:
        from grpc_health.v1 import health_pb2

        st = health_pb2.HealthCheckResponse
        health.set(SERVICE, st.SERVING if rt is not None else st.NOT_SERVING)

    holder.add_listener(on_swap)
    server.start()
    log.info("inference service on %s (port %d)", listen, port)
    return server, port
