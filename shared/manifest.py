"""The model manifest: what a published (or draft) model version is, as JSON.

Fields (docs/DESIGN.md, "Wire contract"): name, version (monotonic int; 0 for a draft), aliases, created_at,
files [{path, kind, size, sha256}], per-modality input schema (channels, window length, sampling rate,
units, layout, normalization statistics), classes, feature dim, quality scores, lineage (dataset and
config hashes, parent version), metrics, minimum runtimes.
"""
import hashlib
import json
import os
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

from .contract import MANIFEST  # noqa: F401  (re-exported)
from .data.dataset import ModalitySpec, MultimodalDataset
from .data.splits import Normalizer
from .errors import DataError, clip

MIN_RUNTIMES = {"onnx_opset": 13, "torch": "1.10", "python": "3.6"}


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def file_entry(root: str, rel: str, kind: str) -> Dict[str, Any]:
    p = os.path.join(root, rel)
    return {"path": rel, "kind": kind, "size": os.path.getsize(p), "sha256": sha256_file(p)}


def input_schema(ds: MultimodalDataset, norm: Normalizer) -> "OrderedDict[str, Dict[str, Any]]":
    """Per-modality schema an edge must match: channels, window length, rate, normalization."""
    out = OrderedDict()
    for m, a in ds.x.items():
        s = ds.specs[m]
        d = s.to_json()
        d["window"] = int(a.shape[1])
        d["normalization"] = {"mean": norm.mean[m].tolist(), "std": norm.std[m].tolist()}
        out[m] = d
    return out


def schema_specs(manifest: Dict[str, Any]) -> List[ModalitySpec]:
    return [ModalitySpec.from_json(d, "manifest input_schema") for d in manifest["input_schema"].values()]


def schema_normalizer(manifest: Dict[str, Any]) -> Normalizer:
    return Normalizer.from_json(OrderedDict((m, d["normalization"]) for m, d in manifest["input_schema"].items()))


def check_compatible(manifest: Dict[str, Any], ds: MultimodalDataset, where: str = "data") -> None:
    """Raise ``DataError`` naming the modality when ``ds`` does not match the manifest's input schema."""
    schema = manifest["input_schema"]
    if list(schema) != ds.modalities:
        raise DataError("{}: modalities {} do not match the model's {}".format(where, ds.modalities, list(schema)))
    for m, d in schema.items():
        a, s = ds.x[m], ds.specs[m]
        if a.shape[1] != d["window"] or list(s.channels) != list(d["channels"]):
            raise DataError("{}: modality {!r} is [N, {}, {}] with channels {}; the model expects "
                            "[N, {}, {}] with channels {}".format(where, m, a.shape[1], a.shape[2], list(s.channels),
                                                                  d["window"], len(d["channels"]), d["channels"]))
        if abs(float(s.rate_hz) - float(d["rate_hz"])) > 1e-6:
            raise DataError("{}: modality {!r} is sampled at {} Hz; the model expects {} Hz".format(
                where, m, s.rate_hz, d["rate_hz"]))
    if manifest.get("classes") and list(manifest["classes"]) != ds.class_names:
        raise DataError("{}: classes {} differ from the model's {}".format(where, ds.class_names, manifest["classes"]))


def new_manifest(name: str, schema: Dict[str, Any], classes: Sequence[str], feature_dim: int,
                 lineage: Dict[str, Any], metrics: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    return OrderedDict([
        ("format", "cosmo-har/manifest"), ("name", name), ("version", 0), ("aliases", []),
        ("created_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())), ("files", []),
        ("input_schema", schema), ("classes", list(classes)), ("feature_dim", int(feature_dim)),
        ("quality", None), ("lineage", lineage), ("metrics", metrics or {}), ("min_runtimes", dict(MIN_RUNTIMES)),
    ])


def check_file_path(path: Any, field: str = "path") -> str:
    """A file's name inside a model version, as the manifest lists it: relative, '/'-separated, no '.',
    '..' or empty components, no backslash, drive letter or NUL, at most 1024 characters. Raises
    ``DataError`` naming ``field``: every path from a manifest is checked before anything is opened, so a
    rogue server cannot make a client write or read outside its folder."""
    if not isinstance(path, str) or not path or len(path) > 1024:
        raise DataError("{}: file path {} must be a non-empty string of at most 1024 characters".format(
            field, clip(path)))
    if path.startswith("/") or "\\" in path or "\x00" in path or (len(path) > 1 and path[1] == ":"):
        raise DataError("{}: file path {} must be relative and '/'-separated".format(field, clip(path)))
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise DataError("{}: file path {} must not contain '..', '.' or empty components".format(field, clip(path)))
    return path


def read_manifest(path: str) -> Dict[str, Any]:
    p = os.path.join(path, MANIFEST) if os.path.isdir(path) else path
    if not os.path.isfile(p):
        raise DataError("{}: manifest not found".format(p))
    try:
        with open(p) as f:
            m = json.load(f, object_pairs_hook=OrderedDict)
    except ValueError as e:
        raise DataError("{}: invalid manifest JSON: {}".format(p, e)) from e
    if not isinstance(m, dict) or m.get("format") != "cosmo-har/manifest":
        raise DataError("{}: not a cosmo-har manifest".format(p))
    for k in ("name", "version", "input_schema", "classes", "files"):
        if k not in m:
            raise DataError("{}: manifest lacks field {!r}".format(p, k))
    return m


def verify_files(manifest: Dict[str, Any], root: str) -> None:
    """Check every listed file's size and sha256; raise ``DataError`` naming the first bad file."""
    for f in manifest["files"]:
        p = os.path.join(root, check_file_path(f.get("path"), "files"))
        if not os.path.isfile(p):
            raise DataError("{}: listed in the manifest but missing".format(p))
        if os.path.getsize(p) != f["size"] or sha256_file(p) != f["sha256"]:
            raise DataError("{}: size or sha256 does not match the manifest".format(p))
