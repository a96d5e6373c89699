"""The Inference service's messages <-> numpy, in one place.

Windows travel as ``ModalityWindows``: a shape ``[N, T, C]`` and the values either as ``raw`` (compact:
float32 little-endian bytes, read here with ``np.frombuffer``, no copy and no per-value Python object)
or as the repeated-float ``data`` of older clients. ``decode_windows`` checks only what the wire itself
must get right (one value form, a 3-d shape, as many values as the shape says, the batch limit); the
model's schema (modalities, window length, channels, rate, finite values) is checked once, by the
runtime that runs the windows (``Runtime.validate``). ``encode_windows`` is the client side.

``Windower`` forms aligned windows from ``StreamPredict``'s streamed samples.
"""
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from shared.errors import clip
from shared.rpc import pb

from .runtime import InputError

LE_FLOAT32 = np.dtype("<f4")


class TooLarge(InputError):
    """A request over one of the server's limits (RESOURCE_EXHAUSTED, not INVALID_ARGUMENT)."""


def _values(field: str, raw: bytes, data: Any, count: Optional[int]) -> np.ndarray:
    """The float32 values of a message from ``raw`` or ``data`` (exactly one may be set)."""
    if raw and len(data):
        raise InputError(field, "give the values in raw or data, not both")
    if raw:
        if len(raw) % 4:
            raise InputError(field, "raw holds {} bytes, not a whole number of float32 values".format(len(raw)))
        a = np.frombuffer(raw, dtype=LE_FLOAT32)
    else:
        a = np.asarray(data, dtype=np.float32)
    if count is not None and a.size != count:
        raise InputError(field, "shape needs {} values, got {}".format(count, a.size))
    return a


def decode_windows(request: Any, max_batch: int) -> Tuple[Dict[str, np.ndarray], Dict[str, float]]:
    """``PredictRequest`` -> ``({modality: [N, T, C] float32}, {modality: rate_hz})``; ``InputError`` naming
    the modality for a malformed message, ``TooLarge`` for a batch over ``max_batch``."""
    windows, rates = {}, {}  # type: Dict[str, np.ndarray], Dict[str, float]
    if not request.windows:
        raise InputError("windows", "no modality given")
    for w in request.windows:
        m = w.modality or "modality"
        if len(m) > 128:
            raise InputError("modality", "name {} is over 128 characters".format(clip(m)))
        if m in windows:
            raise InputError(m, "given twice in one request")
        shape = [int(s) for s in w.shape]
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(m, "shape {} must be [N, T, C] with every size >= 1".format(clip(shape)))
        if shape[0] > max_batch:
            raise TooLarge(m, "batch of {} windows is over this server's limit of {}; split the request".format(
                shape[0], max_batch))
        if request.batch > 0 and shape[0] != request.batch:
            raise InputError(m, "{} windows but batch = {}".format(shape[0], request.batch))
        count = shape[0] * shape[1] * shape[2]
        windows[m] = _values(m, w.raw, w.data, count).reshape(shape)
        if w.rate_hz:
            rates[m] = float(w.rate_hz)
    return windows, rates


def encode_windows(windows: Dict[str, np.ndarray], rates: Optional[Dict[str, float]] = None,
                   batch: int = 0) -> Any:
    """The client side: a ``PredictRequest`` carrying ``{modality: [N, T, C]}`` as raw float32 bytes."""
    rates = rates or {}
    return pb.PredictRequest(batch=batch, windows=[
        pb.ModalityWindows(modality=m, shape=list(a.shape), raw=np.ascontiguousarray(a, LE_FLOAT32).tobytes(),
                           rate_hz=float(rates.get(m, 0.0))) for m, a in windows.items()])


def prediction_response(rt: Any, out: Dict[str, Any], window_index: int = 0) -> Any:
    preds = []
    for i in range(out["proba"].shape[0]):
        label = int(out["label"][i])
        preds.append(pb.Prediction(label=label, label_name=rt.classes[label], proba=out["proba"][i].tolist(),
                                   beta=out["beta"][i].tolist(),
                                   dropped=[m for j, m in enumerate(rt.modalities) if not out["present"][i, j]]))
    return pb.PredictResponse(predictions=preds, modalities=rt.modalities, used_modalities=out["used"],
                              dropped_modalities=out["dropped"], model_name=rt.name, model_version=rt.version,
                              provider=rt.provider, window_index=window_index)


class Windower(object):
    """Forms aligned windows from streamed samples (see ``SamplesChunk`` in inference.proto).

    Every modality's stream starts at time 0: window k of modality m is its samples
    ``[k * hop_m, k * hop_m + window_m)``. Window k is formed once every modality streamed so far covers
    it; a modality that joins late skips the samples of windows already formed. A modality may run at
    most ``max_ahead`` windows ahead of the slowest one (``TooLarge`` past that: bounded memory)."""

    def __init__(self, rt: Any, hop_fraction: float, max_ahead: int = 256) -> None:
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
            raise InputError(m or "modality", "unknown modality {}; the model's modalities are {}".format(
                clip(m), rt.modalities))
        c = len(rt.schema[m]["channels"])
        if chunk.channels != c:
            raise InputError(m, "{} channels; {}".format(chunk.channels, rt.expected(m)))
        a = _values(m, chunk.raw, chunk.data, None)
        if a.size % c:
            raise InputError(m, "{} values is not a whole number of {}-channel samples".format(a.size, c))
        if chunk.rate_hz and abs(chunk.rate_hz - float(rt.schema[m]["rate_hz"])) > 1e-6:
            raise InputError(m, "sampled at {:g} Hz; {}".format(chunk.rate_hz, rt.expected(m)))
        a = a.reshape(-1, c)
        if not np.isfinite(a).all():
            raise InputError(m, "contains NaN or Inf; {}".format(rt.expected(m)))
        if m not in self.buf:
            self.buf[m], self.base[m] = np.zeros((0, c), np.float32), 0
        self.buf[m] = np.concatenate([self.buf[m], a])
        self._trim()
        if len(self.buf[m]) > self.win[m] + self.max_ahead * self.hop[m]:
            raise TooLarge(m, "{} samples buffered, more than {} windows ahead of the other streamed modalities "
                           "{}; interleave the modalities by time".format(
                               len(self.buf[m]), self.max_ahead, sorted(set(self.buf) - {m})))

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


__all__: List[str] = ["TooLarge", "Windower", "decode_windows", "encode_windows", "prediction_response"]
