"""The aligned (IMU2CLIP-style) model on the edge: IMU windows and text in one embedding space.

``AlignedRuntime.load(folder)`` opens a registry version of kind ``aligned`` (``cloud.align`` publishes
it as ``cosmo-aligned``). Its ``manifest.json`` is a standard cosmo-har manifest (``input_schema``,
``classes``, ``files`` with sha256) plus::

    "kind": "aligned", "embedding_dim": D, "imu_onnx": "aligned_imu.onnx", "imu_input": "imu",
    "imu_output": "embedding", "class_prompts": "class_prompts.npy",
    "text_encoder": {"name": ..., "dim": D, "folder": "text", "max_seq_length": 256}

- ``aligned_imu.onnx``: input ``imu`` float32 ``[N, T, sum of channels]`` (every modality normalized
  with its ``input_schema`` statistics, then concatenated along channels in ``input_schema`` order; all
  modalities are required, with one window length ``T``), output ``embedding [N, D]``, unit norm.
- ``class_prompts.npy``: ``[K, D]`` unit-norm text embeddings of one prompt per class (``classes``
  order): zero-shot activity = argmax of ``embedding @ prompts.T``.
- ``text/``: the text encoder exported for ONNX Runtime (``shared.text.OnnxTextEncoder``).

Every file is checked against the manifest's size and sha256 before anything is loaded. Input checks
reuse the classifier runtime's (``edge.runtime.Runtime.validate``): errors are ``InputError`` naming the
modality (or ``text``) and the expected schema.
"""
import logging
import os
from typing import Any, Dict, List, Optional

import numpy as np

from shared.contract import ALIGNED_INPUT, ALIGNED_KIND, ALIGNED_OUTPUT
from shared.errors import CosmoError, DataError
from shared.manifest import read_manifest, schema_normalizer, verify_files

from .runtime import InputError, Runtime, _import_onnxruntime, normalize, open_session

log = logging.getLogger(__name__)
KIND = ALIGNED_KIND
MAX_TEXT_CHARS = 2000
REQUIRED = ("embedding_dim", "imu_onnx", "class_prompts", "text_encoder")


class AlignedRuntime(object):
    """A loaded aligned model. Attributes: ``name``, ``version``, ``dim``, ``modalities``, ``schema``,
    ``classes``, ``prompts [K, D]``, ``provider`` (in use for the IMU model), ``text`` (the text
    encoder), ``text_encoder_name``, ``max_seq_length`` (tokens), ``folder``."""

    def __init__(self, manifest: Dict[str, Any], folder: str) -> None:
        for k in REQUIRED:
            if k not in manifest:
                raise DataError("{}: aligned manifest lacks field {!r}".format(folder, k))
        self.manifest = manifest
        self.folder = folder
        self.name = str(manifest["name"])
        self.version = int(manifest["version"])
        self.dim = int(manifest["embedding_dim"])
        # the classifier runtime's checks (modality, dtype, shape, rate, NaN/Inf) on this schema
        self._check = Runtime(manifest, folder)
        self.schema = self._check.schema
        self.modalities = self._check.modalities
        self.classes = self._check.classes
        norm = schema_normalizer(manifest)
        self._mean = [np.asarray(norm.mean[m], np.float32) for m in self.modalities]
        self._std = [np.asarray(norm.std[m], np.float32) for m in self.modalities]
        windows = sorted(set(int(d["window"]) for d in self.schema.values()))
        if len(windows) != 1:
            raise DataError("{}: aligned model's modalities have different window lengths {}; the IMU model "
                            "takes them concatenated along channels".format(folder, windows))
        self.input_name = str(manifest.get("imu_input", ALIGNED_INPUT))
        self.output_name = str(manifest.get("imu_output", ALIGNED_OUTPUT))
        te = manifest["text_encoder"]
        self.text_encoder_name = str(te.get("name", ""))
        self.max_seq_length = int(te.get("max_seq_length", 256))
        self.provider = ""
        self.available_providers = []  # type: List[str]
        self.prompts = np.zeros((0, self.dim), np.float32)
        self.text = None  # type: Any
        self._session = None  # type: Any

    @classmethod
    def load(cls, folder: str, providers: Optional[List[str]] = None, verify: bool = True) -> "AlignedRuntime":
        """Read and check ``folder`` (manifest kind, files' sha256), open the IMU model and the text
        encoder with ONNX Runtime, load the class prompts. Raises ``DataError``/``CosmoError``."""
        man = read_manifest(folder)
        if man.get("kind") != KIND:
            raise DataError("{}: manifest kind is {!r}, not {!r} (not an aligned model)".format(
                folder, man.get("kind"), KIND))
        if verify:
            verify_files(man, folder)
        art = cls(man, folder)
        ort = _import_onnxruntime()
        if ort is None:
            raise CosmoError("the aligned model needs onnxruntime (pip install onnxruntime or onnxruntime-gpu)")
        art._open_imu(ort, providers)
        art._load_prompts()
        art._load_text(providers)
        log.info("aligned model %s v%d loaded (dim %d, IMU on %s, text encoder %s)", art.name, art.version,
                 art.dim, art.provider, art.text_encoder_name)
        return art

    def _open_imu(self, ort: Any, providers: Optional[List[str]]) -> None:
        path = os.path.join(self.folder, str(self.manifest["imu_onnx"]))
        self._session, self.available_providers = open_session(ort, path, providers, "aligned IMU model")
        ins = [i.name for i in self._session.get_inputs()]
        outs = [o.name for o in self._session.get_outputs()]
        if ins != [self.input_name] or self.output_name not in outs:
            raise DataError("{}: ONNX inputs {} / outputs {}; the manifest says input {!r}, output {!r}".format(
                path, ins, outs, self.input_name, self.output_name))
        self.provider = str(self._session.get_providers()[0])
        t = int(next(iter(self.schema.values()))["window"])
        c = sum(len(d["channels"]) for d in self.schema.values())
        out = self._run(np.zeros((1, t, c), np.float32))  # warm-up; checks the width
        if out.shape != (1, self.dim):
            raise DataError("{}: embeddings of shape {}, the manifest says embedding_dim {}".format(
                path, list(out.shape), self.dim))

    def _load_prompts(self) -> None:
        path = os.path.join(self.folder, str(self.manifest["class_prompts"]))
        try:
            p = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError("{}: class prompts unreadable ({})".format(path, e)) from e
        if p.shape != (len(self.classes), self.dim):
            raise DataError("{}: class prompts of shape {}, expected [{} classes, {}]".format(
                path, list(p.shape), len(self.classes), self.dim))
        self.prompts = p.astype(np.float32)

    def _load_text(self, providers: Optional[List[str]]) -> None:
        from shared.text import OnnxTextEncoder

        te = self.manifest["text_encoder"]
        folder = os.path.join(self.folder, str(te.get("folder", "text")))
        ort_providers = None
        if providers:  # the text encoder runs where the IMU model does (TensorRT is not worth it for text)
            ort_providers = [p for p in providers if p != "TensorrtExecutionProvider"] or None
        try:
            self.text = OnnxTextEncoder(folder, providers=ort_providers)
        except Exception as e:  # ConfigError, TextEncoderUnavailable, onnxruntime errors
            raise CosmoError("{}: cannot load the text encoder: {}".format(folder, e)) from e
        if int(self.text.dim) != self.dim:
            raise DataError("{}: text encoder of width {}, the IMU model's is {}".format(folder, self.text.dim,
                                                                                         self.dim))
        self.max_seq_length = int(getattr(self.text, "max_seq_length", self.max_seq_length))
        self.text_encoder_name = str(self.text.name)

    # ---------------------------------------------------------------------------------- checking
    def expected(self, modality: str) -> str:
        return self._check.expected(modality)

    def validate(self, windows: Dict[str, np.ndarray], rates: Optional[Dict[str, float]] = None) -> None:
        """The classifier runtime's checks, and every modality must be given."""
        self._check.validate(windows, rates)
        for m in self.modalities:
            if m not in windows:
                raise InputError(m, "missing; the aligned model needs every modality {}; {}".format(
                    self.modalities, self.expected(m)))

    # -------------------------------------------------------------------------------- inference
    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self._session.run([self.output_name], {self.input_name: x})[0]
        return np.asarray(out, dtype=np.float32)

    def embed(self, windows: Dict[str, np.ndarray], rates: Optional[Dict[str, float]] = None) -> np.ndarray:
        """Raw windows ``{modality: [N, T, C]}`` (every modality, raw sensor units) -> ``[N, D]`` float32,
        unit norm. Raises ``InputError`` naming the modality and its expected shape."""
        self.validate(windows, rates)
        xs = [normalize(m, windows[m], self._mean[j], self._std[j]) for j, m in enumerate(self.modalities)]
        return self._run(np.concatenate(xs, axis=2))

    def zero_shot(self, emb: np.ndarray) -> List[str]:
        """Zero-shot activity of each embedding ``[N, D]``: the class whose prompt is most similar."""
        if len(emb) == 0:
            return []
        return [self.classes[int(i)] for i in np.argmax(np.asarray(emb, np.float32) @ self.prompts.T, axis=1)]

    def check_text(self, text: Any) -> str:
        """The query text, or ``InputError`` naming ``text``: not a string, empty or blank, over
        ``MAX_TEXT_CHARS`` characters, or over the text encoder's ``max_seq_length`` tokens."""
        if not isinstance(text, str):
            raise InputError("text", "must be a string, got {}".format(type(text).__name__))
        if not text.strip():
            raise InputError("text", "empty; describe the activity to search for, e.g. 'walking upstairs'")
        if len(text) > MAX_TEXT_CHARS:
            raise InputError("text", "{} characters, over the limit of {}".format(len(text), MAX_TEXT_CHARS))
        n = int(self.text.count_tokens(text))
        if n > self.max_seq_length:
            raise InputError("text", "{} tokens, over the text encoder's limit of {} ({})".format(
                n, self.max_seq_length, self.text_encoder_name))
        return text

    def encode_text(self, text: str) -> np.ndarray:
        """One query text -> ``[D]`` float32 unit-norm embedding (checked with ``check_text``)."""
        return np.asarray(self.text.encode([self.check_text(text)])[0], dtype=np.float32)

    def info(self) -> Dict[str, Any]:
        return {"name": self.name, "version": self.version, "dim": self.dim, "provider": self.provider,
                "modalities": self.modalities, "classes": self.classes, "text_encoder": self.text_encoder_name,
                "max_seq_length": self.max_seq_length, "folder": self.folder}

    def __repr__(self) -> str:
        return "AlignedRuntime({} v{}, dim {}, {})".format(self.name, self.version, self.dim, self.provider)
