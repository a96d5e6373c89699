"""The edge's inference runtime: ONNX Runtime with the best execution provider present, or torch.

``Runtime.load(model_dir)`` reads ``manifest.json`` and ``model.onnx`` (written by ``edge.export``) and
opens an ONNX Runtime session with the providers present, in the order TensorRT -> CUDA -> CPU. The
provider actually in use is read back from the session (a CUDA provider that fails to load falls back
to CPU silently on the TX2), and ``require_gpu=True`` raises instead of running on CPU. Where
onnxruntime is not importable, the runtime rebuilds the model in torch from ``encoders.pt`` (the
architecture) and ``finetuned.pt`` (the weights).

Session settings (``SessionSettings``): ONNX Runtime's intra-op thread count and graph optimization
level are explicit (``Info`` reports them), and the TensorRT engine is cached on disk under
``engine_cache/<model sha256>-<device>``, so a restart or a swap back to a version does not rebuild it
(minutes on a TX2).

Inputs are checked in one place, ``decode``/``validate``: windows come as float32 arrays (from the compact
``raw`` bytes of the wire without a copy, or the repeated-float form), and values whose normalization
overflows float32 (|x| past ``MAX_NORMALIZED`` standard deviations) are refused naming the modality, so
no answer ever carries NaN or Inf.

Dynamic sensor selection: ``predict`` takes raw windows per modality; a modality that is absent, or flat
in a window (the standard deviation over time is below ``flat_threshold`` raw units on every channel:
a sensor that is off or stuck), is not present for that window. Its input is zeroed and the attention
weights are renormalized over the others through the model's ``present`` mask (its beta is 0).
"""
import logging
import os
import threading
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from shared.contract import ENCODERS, FINETUNED, MODEL_ONNX, MODEL_OUTPUTS, PRESENT  # noqa: F401  (re-exported)
from shared.errors import CosmoError, DataError
from shared.manifest import read_manifest, schema_normalizer, sha256_file

log = logging.getLogger(__name__)

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
OUTPUTS = MODEL_OUTPUTS
FLAT_THRESHOLD = 1e-6  # raw units
MAX_NORMALIZED = 1e6  # standard deviations: a window past this is a broken sensor or a hostile client
GRAPH_LEVELS = ("disable", "basic", "extended", "all")


class InputError(DataError):
    """Bad input to ``Runtime.validate``/``predict``: ``field`` is the modality (or ``"windows"``)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.detail = message
        super().__init__("{}: {}".format(field, message))


def _import_onnxruntime() -> Any:
    """``onnxruntime`` or None when it is not installed (tests replace this to force the torch path)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def choose_providers(available: List[str], wanted: Optional[List[str]] = None) -> List[str]:
    """Providers to ask for, best first: ``wanted`` (in its order) or TensorRT -> CUDA -> CPU, keeping
    only those in ``available``. Raises ``CosmoError`` when none is left."""
    order = list(wanted) if wanted else list(PROVIDER_ORDER)
    out = [p for p in order if p in available]
    if not out:
        raise CosmoError("none of the execution providers {} is available (onnxruntime has {})".format(
            order, list(available)))
    return out


class SessionSettings(object):
    """How ONNX Runtime sessions are opened. ``intra_op_threads``: threads per inference (0: ORT's default,
    one per core); ``graph_optimization``: one of ``GRAPH_LEVELS``; ``engine_cache``: a folder for TensorRT
    engines (None: no cache), keyed by the model file's sha256 and the device; ``spin``: whether the
    intra-op threads spin-wait between inferences (ORT's default: the lowest median latency) or sleep:
    no core burnt between calls, which a device that also fine-tunes and streams may prefer (on 2 cores,
    three runs of Predict over gRPC: the median 13-19 % higher asleep; the p99 lower in two runs, the same
    in the third; ``benchmarks/latency.py`` measures both)."""

    def __init__(self, intra_op_threads: int = 0, graph_optimization: str = "all",
                 engine_cache: Optional[str] = None, spin: bool = True) -> None:
        if isinstance(intra_op_threads, bool) or not isinstance(intra_op_threads, int) or intra_op_threads < 0:
            raise CosmoError("--ort-threads must be an int >= 0, got {!r}".format(intra_op_threads))
        if graph_optimization not in GRAPH_LEVELS:
            raise CosmoError("--graph-optimization must be one of {}, got {!r}".format(
                ", ".join(GRAPH_LEVELS), graph_optimization))
        self.intra_op_threads = intra_op_threads
        self.graph_optimization = graph_optimization
        self.engine_cache = engine_cache
        self.spin = spin

    def session_options(self, ort: Any) -> Any:
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.intra_op_threads
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[self.graph_optimization]
        if not self.spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return so

    def provider_list(self, chosen: List[str], model_path: str) -> List[Any]:
        """``chosen`` with TensorRT's engine-cache options attached (a cache folder per model and device)."""
        out = []  # type: List[Any]
        for p in chosen:
            if p == "TensorrtExecutionProvider" and self.engine_cache:
                folder = os.path.join(self.engine_cache, "{}-{}".format(sha256_file(model_path)[:16], device_key()))
                os.makedirs(folder, exist_ok=True)
                out.append((p, {"trt_engine_cache_enable": True, "trt_engine_cache_path": folder}))
            else:
                out.append(p)
        return out


def device_key() -> str:
    """A short name of this device for cache keys: the board model (``/proc/device-tree/model`` on a
    Jetson) or the machine type, with characters safe in a file name."""
    name = os.uname()[4]
    try:
        with open("/proc/device-tree/model", "rb") as f:
            name = f.read().decode("utf-8", "replace").strip("\x00 \n") or name
    except OSError:
        pass
    return "".join(c if c.isalnum() else "_" for c in name)[:48]


def open_session(ort: Any, path: str, providers: Optional[List[str]], what: str = "ONNX model",
                 settings: Optional[SessionSettings] = None) -> Tuple[Any, List[str]]:
    """An onnxruntime session of ``path`` with the best providers that start (see ``choose_providers``:
    a provider that fails to start is dropped and the next ones are tried); returns it with the
    available providers. Raises ``DataError`` for a missing file, ``CosmoError`` when none starts."""
    if not os.path.isfile(path):
        raise DataError("{}: {} not found".format(path, what))
    settings = settings or SessionSettings()
    available = list(ort.get_available_providers())
    chosen = choose_providers(available, providers)
    err = None  # type: Optional[Exception]
    while chosen:
        try:
            return ort.InferenceSession(path, sess_options=settings.session_options(ort),
                                        providers=settings.provider_list(chosen, path)), available
        except Exception as e:  # a provider that cannot start: try the next ones
            log.warning("onnxruntime session with %s failed: %s", chosen, e)
            err, chosen = e, chosen[1:]
    raise CosmoError("{}: onnxruntime could not open the model: {}".format(path, err))


def normalize(modality: str, a: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """``(a - mean) / std`` as float32; ``InputError`` naming ``modality`` when a value lands past
    ``MAX_NORMALIZED`` standard deviations (this also catches float32 overflow: 3e38 - mean is inf), so
    a finite but absurd input never turns into NaN in an answer."""
    with np.errstate(over="ignore", invalid="ignore"):
        x = ((a.astype(np.float32) - mean) / std).astype(np.float32)
    if not (np.abs(x) <= MAX_NORMALIZED).all():
        raise InputError(modality, "values up to {:.3g} are over {:g} standard deviations from the model's "
                         "normalization (mean {}, std {}); a broken sensor?".format(
                             float(np.abs(a).max()), MAX_NORMALIZED, np.round(mean, 3).tolist(),
                             np.round(std, 3).tolist()))
    return x


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Runtime(object):
    """A loaded model. Attributes: ``name``, ``version``, ``modalities``, ``classes``, ``schema``
    (manifest ``input_schema``), ``provider`` (in use), ``available_providers``, ``fallback``
    (``"onnxruntime"`` or ``"torch"``), ``embedding_dim``, ``flat_threshold``, ``model_dir``."""

    def __init__(self, manifest: Dict[str, Any], model_dir: str, flat_threshold: float = FLAT_THRESHOLD) -> None:
        self.manifest = manifest
        self.model_dir = model_dir
        self.name = str(manifest["name"])
        self.version = int(manifest["version"])
        self.schema = manifest["input_schema"]  # type: Dict[str, Dict[str, Any]]
        self.modalities = list(self.schema)
        self.classes = [str(c) for c in manifest["classes"]]
        self.flat_threshold = float(flat_threshold)
        norm = schema_normalizer(manifest)
        self._mean = [norm.mean[m] for m in self.modalities]
        self._std = [norm.std[m] for m in self.modalities]
        self.provider = ""
        self.available_providers = []  # type: List[str]
        self.fallback = ""
        self.embedding_dim = 0
        self._session = None  # type: Any
        self._torch_model = None  # type: Any
        self._torch_device = None  # type: Any
        self._lock = threading.Lock()
        self.settings = SessionSettings()

    # ------------------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, model_dir: str, require_gpu: bool = False, providers: Optional[List[str]] = None,
             flat_threshold: float = FLAT_THRESHOLD, settings: Optional[SessionSettings] = None) -> "Runtime":
        manifest = read_manifest(model_dir)
        rt = cls(manifest, model_dir, flat_threshold)
        rt.settings = settings or SessionSettings()
        ort = _import_onnxruntime()
        if ort is not None:
            rt._load_onnx(ort, providers)
        else:
            log.warning("onnxruntime is not installed; running the model in torch")
            rt._load_torch()
        if require_gpu and (rt.provider == "CPUExecutionProvider" or rt.provider.startswith("torch:cpu")):
            raise CosmoError("--require-gpu: the model would be running on CPU (provider in use {!r}; available "
                             "{}); check the CUDA/TensorRT install or drop --require-gpu".format(
                                 rt.provider, rt.available_providers))
        out = rt._run([np.zeros((1, int(d["window"]), len(d["channels"])), np.float32) for d in rt.schema.values()],
                      np.ones((1, len(rt.modalities)), np.float32))  # warm-up (TensorRT builds its engine here)
        rt.embedding_dim = int(out[2].shape[1])
        log.info("model %s v%d loaded with %s", rt.name, rt.version, rt.provider)
        return rt

    def _load_onnx(self, ort: Any, providers: Optional[List[str]]) -> None:
        path = os.path.join(self.model_dir, MODEL_ONNX)
        self._session, self.available_providers = open_session(ort, path, providers, "ONNX model", self.settings)
        names = [i.name for i in self._session.get_inputs()]
        if names != self.modalities + [PRESENT]:
            raise DataError("{}: ONNX inputs {} do not match the manifest's modalities {} + {!r}".format(
                path, names, self.modalities, PRESENT))
        self.provider = str(self._session.get_providers()[0])
        self.fallback = "onnxruntime"

    def _load_torch(self) -> None:
        import torch

        from shared.models.finetuned import load_finetuned

        model = load_finetuned(os.path.join(self.model_dir, FINETUNED), os.path.join(self.model_dir, ENCODERS),
                               self.modalities, len(self.classes))
        self._torch_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._torch_model = model.to(self._torch_device).eval()
        self.available_providers = ["torch:cuda", "torch:cpu"] if torch.cuda.is_available() else ["torch:cpu"]
        self.provider = "torch:" + self._torch_device.type
        self.fallback = "torch"

    # ---------------------------------------------------------------------------------- checking
    def expected(self, modality: str) -> str:
        """The schema of ``modality`` in words, for error messages."""
        d = self.schema[modality]
        return "expected float32 windows [N, {}, {}] (channels {}) at {:g} Hz".format(
            int(d["window"]), len(d["channels"]), ",".join(d["channels"]), float(d["rate_hz"]))

    def validate(self, windows: Dict[str, np.ndarray], rates: Optional[Dict[str, float]] = None) -> None:
        """Raise ``InputError`` naming the modality and its expected schema on an unknown modality, a
        non-float array, wrong ndim, window length or channel count, a different sampling rate, NaN/Inf,
        or batch sizes that differ between modalities."""
        if not windows:
            raise InputError("windows", "no modality given; the model's modalities are {}".format(self.modalities))
        n = None  # type: Optional[int]
        for m, a in windows.items():
            if m not in self.schema:
                raise InputError(str(m), "unknown modality; the model's modalities are {}".format(self.modalities))
            if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.floating):
                raise InputError(m, "dtype {}; {}".format(getattr(a, "dtype", type(a).__name__), self.expected(m)))
            d = self.schema[m]
            if a.ndim != 3 or a.shape[1] != int(d["window"]) or a.shape[2] != len(d["channels"]):
                raise InputError(m, "shape {}; {}".format(list(a.shape), self.expected(m)))
            if a.shape[0] < 1:
                raise InputError(m, "empty batch; {}".format(self.expected(m)))
            if n is not None and a.shape[0] != n:
                raise InputError(m, "batch of {} windows; the other modalities have {}".format(a.shape[0], n))
            n = a.shape[0]
            if rates and m in rates and rates[m] is not None and abs(float(rates[m]) - float(d["rate_hz"])) > 1e-6:
                raise InputError(m, "sampled at {:g} Hz; {}".format(float(rates[m]), self.expected(m)))
            if not np.isfinite(a).all():
                raise InputError(m, "contains NaN or Inf; {}".format(self.expected(m)))
        if rates:
            for m in rates:
                if m not in self.schema:
                    raise InputError(str(m), "unknown modality; the model's modalities are {}".format(self.modalities))

    # -------------------------------------------------------------------------------- inference
    def present_mask(self, windows: Dict[str, np.ndarray], n: int) -> np.ndarray:
        """``[N, M]`` bool: the modality was given and is not flat in that window."""
        present = np.zeros((n, len(self.modalities)), bool)
        for j, m in enumerate(self.modalities):
            a = windows.get(m)
            if a is not None:
                with np.errstate(over="ignore", invalid="ignore"):  # absurd values are refused later, by name
                    present[:, j] = ~(a.std(axis=1) < self.flat_threshold).all(axis=1)
        return present

    def predict(self, windows: Dict[str, np.ndarray], rates: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
        """Predict from raw windows ``{modality: [N, T, C]}`` (a modality may be absent).

        Returns ``proba [N, K]``, ``label [N]``, ``beta [N, M]`` (0 for a modality not used in that window;
        rows sum to 1), ``embedding [N, D]``, ``present [N, M]`` (bool), ``used`` (modalities used in at
        least one window) and ``dropped`` (modalities missing, or flat in at least one window).
        """
        self.validate(windows, rates)
        n = int(next(iter(windows.values())).shape[0])
        present = self.present_mask(windows, n)
        none = np.flatnonzero(~present.any(axis=1))
        if none.size:
            raise InputError("windows", "window {}: every modality is missing or flat (std over time < {:g} on all "
                             "channels); the model needs at least one of {}".format(
                                 int(none[0]), self.flat_threshold, self.modalities))
        xs = []
        for j, m in enumerate(self.modalities):
            d = self.schema[m]
            a = windows.get(m)
            if a is None:
                xs.append(np.zeros((n, int(d["window"]), len(d["channels"])), np.float32))
            else:
                x = normalize(m, a, self._mean[j], self._std[j])
                x[~present[:, j]] = 0.0
                xs.append(x)
        logits, beta, emb = self._run(xs, present.astype(np.float32))
        if not (np.isfinite(logits).all() and np.isfinite(beta).all() and np.isfinite(emb).all()):
            raise InputError("windows", "the model's outputs overflow for these values ({}); no answer carries "
                             "NaN or Inf".format(", ".join("{} up to {:.3g}".format(m, float(np.abs(a).max()))
                                                          for m, a in windows.items())))
        proba = _softmax(logits.astype(np.float64)).astype(np.float32)
        return {"proba": proba, "label": proba.argmax(axis=1), "beta": beta, "embedding": emb, "present": present,
                "used": [m for j, m in enumerate(self.modalities) if present[:, j].any()],
                "dropped": [m for j, m in enumerate(self.modalities) if not present[:, j].all()]}

    def embed(self, windows: Dict[str, np.ndarray], rates: Optional[Dict[str, float]] = None) -> np.ndarray:
        return self.predict(windows, rates)["embedding"]

    def _run(self, xs: List[np.ndarray], present: np.ndarray) -> List[np.ndarray]:
        if self._session is not None:
            feed = OrderedDict(zip(self.modalities, xs))
            feed[PRESENT] = present
            return [np.asarray(o) for o in self._session.run(list(OUTPUTS), feed)]
        import torch

        with self._lock, torch.no_grad():
            dev = self._torch_device
            mask = torch.from_numpy(present > 0.5).to(dev)
            ts = [torch.from_numpy(x).to(dev) * mask[:, j].float()[:, None, None] for j, x in enumerate(xs)]
            outs = self._torch_model.forward_with_embedding(ts, mask)
            return [o.cpu().numpy() for o in outs]

    def info(self) -> Dict[str, Any]:
        return {"name": self.name, "version": self.version, "provider": self.provider,
                "available_providers": list(self.available_providers), "fallback": self.fallback,
                "modalities": self.modalities, "classes": self.classes, "embedding_dim": self.embedding_dim,
                "intra_op_threads": self.settings.intra_op_threads,
                "graph_optimization": self.settings.graph_optimization, "ort_spin": self.settings.spin,
                "engine_cache": bool(self.settings.engine_cache) and self.provider == "TensorrtExecutionProvider"}

    def __repr__(self) -> str:
        return "Runtime({} v{}, {})".format(self.name, self.version, self.provider)
