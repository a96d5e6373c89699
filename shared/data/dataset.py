"""The one in-memory form of a windowed multimodal dataset, and its `.npz` + JSON file form.

Per modality j: a float32 array ``[N, T_j, C_j]`` (N windows, T_j time steps, C_j channels), its
sampling rate in Hz and its channel names. Shared by all modalities: ``labels [N]`` (int64, -1 =
unlabeled), ``subjects [N]`` (int64) and the class names.
"""
import json
import os
import zipfile
import zlib
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from dataclasses import dataclass, field

from ..errors import DataError

FORMAT_VERSION = 1
PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class ModalitySpec:
    """What one modality's windows are.

    Attributes:
        name: modality name, e.g. ``"acc"``.
        rate_hz: sampling rate of the window's time axis, in Hz.
        channels: one name per channel (last axis), e.g. ``("acc_x", "acc_y", "acc_z")``.
        units: physical units of the raw values, e.g. ``"g"`` or ``"rad/s"`` (informational).
        layout: ``"channels"`` for plain multichannel series; ``"skeleton"`` when the channels are
            ``joints x coords`` flattened joint-major (see ``joints`` and ``coords``).
    """

    name: str
    rate_hz: float
    channels: Tuple[str, ...]
    units: str = ""
    layout: str = "channels"
    joints: int = 0
    coords: int = 0

    def to_json(self) -> Dict[str, object]:
        return {
            "name": self.name,
            "rate_hz": float(self.rate_hz),
            "channels": list(self.channels),
            "units": self.units,
            "layout": self.layout,
            "joints": int(self.joints),
            "coords": int(self.coords),
        }

    @classmethod
    def from_json(cls, d: Dict[str, object], where: str = "spec") -> "ModalitySpec":
        try:
            return cls(
                name=str(d["name"]),
                rate_hz=float(d["rate_hz"]),  # type: ignore[arg-type]
                channels=tuple(str(c) for c in d["channels"]),  # type: ignore[union-attr]
                units=str(d.get("units", "")),
                layout=str(d.get("layout", "channels")),
                joints=int(d.get("joints", 0)),  # type: ignore[arg-type]
                coords=int(d.get("coords", 0)),  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError("{}: invalid modality spec {!r}: {}".format(where, d, e)) from e


@dataclass
class MultimodalDataset:
    """Windowed multimodal data; see the module docstring for shapes.

    ``x`` maps modality name -> float32 ``[N, T_j, C_j]``; ``specs`` holds one ``ModalitySpec`` per
    modality in the same order. Construction validates everything and raises ``DataError`` naming the
    field and the expected shape.
    """

    x: "OrderedDict[str, np.ndarray]"
    specs: "OrderedDict[str, ModalitySpec]"
    labels: np.ndarray
    subjects: np.ndarray
    class_names: List[str]
    name: str = ""
    meta: Dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.x = OrderedDict((k, np.asarray(v)) for k, v in self.x.items())
        self.specs = OrderedDict(self.specs.items())
        self.labels = np.asarray(self.labels)
        self.subjects = np.asarray(self.subjects)
        self.class_names = [str(c) for c in self.class_names]
        self.validate()

    # ----------------------------------------------------------------------------------------------
    @property
    def modalities(self) -> List[str]:
        return list(self.x.keys())

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def validate(self, source: str = "dataset") -> None:
        """Check shapes, dtypes and values; raise ``DataError`` naming what is wrong."""
        if not self.x:
            raise DataError("{}: no modalities".format(source))
        if list(self.x.keys()) != list(self.specs.keys()):
            raise DataError("{}: modalities {} do not match specs {}".format(
                source, list(self.x.keys()), list(self.specs.keys())))
        if self.labels.ndim != 1:
            raise DataError("{}: labels must be 1-D [N], got shape {}".format(source, self.labels.shape))
        n = self.labels.shape[0]
        if not np.issubdtype(self.labels.dtype, np.integer):
            raise DataError("{}: labels must be integers, got dtype {}".format(source, self.labels.dtype))
        self.labels = self.labels.astype(np.int64)
        if self.subjects.shape != (n,):
            raise DataError("{}: subjects must have shape ({},), got {}".format(source, n, self.subjects.shape))
        self.subjects = self.subjects.astype(np.int64)
        k = len(self.class_names)
        if k == 0:
            raise DataError("{}: class_names is empty".format(source))
        bad = (self.labels < -1) | (self.labels >= k)
        if bad.any():
            raise DataError("{}: labels must be -1 (unlabeled) or in [0, {}) for classes {}, got {}".format(
                source, k, self.class_names, sorted(set(self.labels[bad].tolist()))[:5]))
        for m, arr in self.x.items():
            spec = self.specs[m]
            if spec.name != m:
                raise DataError("{}: spec name {!r} != modality key {!r}".format(source, spec.name, m))
            if arr.ndim != 3:
                raise DataError("{}: modality {!r} must be [N, T, C], got shape {}".format(source, m, arr.shape))
            if arr.shape[0] != n:
                raise DataError("{}: modality {!r} has {} windows but labels has {}".format(
                    source, m, arr.shape[0], n))
            if arr.shape[2] != len(spec.channels):
                raise DataError("{}: modality {!r} has {} channels but its spec names {} ({})".format(
                    source, m, arr.shape[2], len(spec.channels), list(spec.channels)))
            if arr.dtype != np.float32:
                self.x[m] = arr = arr.astype(np.float32)
            if not np.isfinite(arr).all():
                bad_n = int((~np.isfinite(arr)).any(axis=(1, 2)).sum())
                raise DataError("{}: modality {!r} has NaN/Inf values in {} of {} windows".format(
                    source, m, bad_n, n))
            if spec.rate_hz <= 0:
                raise DataError("{}: modality {!r} has rate_hz {} (must be > 0)".format(source, m, spec.rate_hz))

    def subset(self, index: Union[np.ndarray, Sequence[int]]) -> "MultimodalDataset":
        """The windows at ``index`` (an integer index array or boolean mask)."""
        idx = np.asarray(index)
        return MultimodalDataset(
            x=OrderedDict((m, a[idx]) for m, a in self.x.items()),
            specs=self.specs,
            labels=self.labels[idx],
            subjects=self.subjects[idx],
            class_names=self.class_names,
            name=self.name,
            meta=dict(self.meta),
        )

    def select_modalities(self, names: Iterable[str]) -> "MultimodalDataset":
        names = list(names)
        for m in names:
            if m not in self.x:
                raise DataError("unknown modality {!r}; dataset has {}".format(m, self.modalities))
        return MultimodalDataset(
            x=OrderedDict((m, self.x[m]) for m in names),
            specs=OrderedDict((m, self.specs[m]) for m in names),
            labels=self.labels, subjects=self.subjects, class_names=self.class_names,
            name=self.name, meta=dict(self.meta))

    def with_labels(self, labels: np.ndarray) -> "MultimodalDataset":
        return MultimodalDataset(x=self.x, specs=self.specs, labels=labels, subjects=self.subjects,
                                 class_names=self.class_names, name=self.name, meta=dict(self.meta))

    def summary(self) -> str:
        parts = ["{}: {} windows, {} subjects, classes {}".format(
            self.name or "dataset", len(self), len(np.unique(self.subjects)), self.class_names)]
        for m, a in self.x.items():
            s = self.specs[m]
            parts.append("  {}: [N, {}, {}] at {:g} Hz ({})".format(m, a.shape[1], a.shape[2], s.rate_hz, s.units))
        return "\n".join(parts)

    # ----------------------------------------------------------------------------------------------
    def save(self, path: PathLike) -> Tuple[str, str]:
        """Write ``<path>.npz`` (arrays) and ``<path>.json`` (specs, classes, meta); returns both paths."""
        base = _strip_ext(str(path))
        npz_path, json_path = base + ".npz", base + ".json"
        arrays = {"labels": self.labels, "subjects": self.subjects}
        for i, m in enumerate(self.x):
            arrays["x{}".format(i)] = self.x[m]
        d = os.path.dirname(npz_path)
        if d:
            os.makedirs(d, exist_ok=True)
        tmp = npz_path + ".tmp.npz"
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, npz_path)
        header = {
            "format": "cosmo-har/dataset",
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "class_names": self.class_names,
            "modalities": [self.specs[m].to_json() for m in self.x],
            "meta": self.meta,
        }
        with open(json_path + ".tmp", "w") as f:
            json.dump(header, f, indent=2, sort_keys=True)
        os.replace(json_path + ".tmp", json_path)
        return npz_path, json_path

    @classmethod
    def load(cls, path: PathLike) -> "MultimodalDataset":
        """Read what ``save`` wrote. ``path`` may name the ``.npz``, the ``.json`` or their common stem."""
        base = _strip_ext(str(path))
        npz_path, json_path = base + ".npz", base + ".json"
        for p in (npz_path, json_path):
            if not os.path.isfile(p):
                raise DataError("{}: file not found (a dataset is a .npz + .json pair)".format(p))
        header = read_json(json_path)
        if not isinstance(header, dict) or header.get("format") != "cosmo-har/dataset":
            raise DataError("{}: not a cosmo-har dataset header (expected \"format\": \"cosmo-har/dataset\")"
                            .format(json_path))
        try:
            specs = [ModalitySpec.from_json(s, json_path) for s in header["modalities"]]
            class_names = list(header["class_names"])
        except (KeyError, TypeError) as e:
            raise DataError("{}: missing field {}".format(json_path, e)) from e
        try:
            with np.load(npz_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError) as e:
            raise DataError("{}: corrupt or unreadable .npz: {}".format(npz_path, e)) from e
        need = ["labels", "subjects"] + ["x{}".format(i) for i in range(len(specs))]
        missing = [k for k in need if k not in arrays]
        if missing:
            raise DataError("{}: missing arrays {} (expected {})".format(npz_path, missing, need))
        x = OrderedDict((s.name, arrays["x{}".format(i)]) for i, s in enumerate(specs))
        try:
            return cls(x=x, specs=OrderedDict((s.name, s) for s in specs), labels=arrays["labels"],
                       subjects=arrays["subjects"], class_names=class_names,
                       name=str(header.get("name", "")), meta=dict(header.get("meta", {})))
        except DataError as e:
            raise DataError("{}: {}".format(npz_path, e)) from e


def read_json(path: str, missing: str = "file not found") -> Any:
    """The JSON document in ``path``; ``DataError`` naming the file when it is missing (``missing`` says
    what was expected) or not valid JSON."""
    if not os.path.isfile(path):
        raise DataError("{}: {}".format(path, missing))
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:  # UnicodeDecodeError is a ValueError
        raise DataError("{}: not valid JSON: {}".format(path, e)) from e


def _strip_ext(p: str) -> str:
    for ext in (".npz", ".json"):
        if p.endswith(ext):
            return p[: -len(ext)]
    return p


def concat(datasets: Sequence[MultimodalDataset]) -> MultimodalDataset:
    """Concatenate datasets with identical modalities, specs and classes along N."""
    if not datasets:
        raise DataError("concat: no datasets")
    first = datasets[0]
    for d in datasets[1:]:
        if d.modalities != first.modalities or d.class_names != first.class_names:
            raise DataError("concat: datasets differ in modalities or classes")
    return MultimodalDataset(
        x=OrderedDict((m, np.concatenate([d.x[m] for d in datasets])) for m in first.modalities),
        specs=first.specs,
        labels=np.concatenate([d.labels for d in datasets]),
        subjects=np.concatenate([d.subjects for d in datasets]),
        class_names=first.class_names, name=first.name, meta=dict(first.meta))


def make_dataset(arrays: Dict[str, np.ndarray], specs: List[ModalitySpec], labels: np.ndarray,
                 subjects: np.ndarray, class_names: List[str], name: str = "",
                 meta: Optional[Dict[str, object]] = None) -> MultimodalDataset:
    """Convenience constructor keeping the order of ``specs``."""
    return MultimodalDataset(
        x=OrderedDict((s.name, arrays[s.name]) for s in specs),
        specs=OrderedDict((s.name, s) for s in specs), labels=labels, subjects=subjects,
        class_names=class_names, name=name, meta=dict(meta or {}))
