"""Stage 2 on the device: load shipped encoders + manifest, fine-tune on local labeled windows."""
import logging
import os
from typing import Any, Dict, Optional

import numpy as np

from shared.data.dataset import MultimodalDataset, make_dataset
from shared.contract import FINETUNED, METRICS
from shared.errors import DataError
from shared.manifest import check_compatible, read_manifest, schema_normalizer, schema_specs
from shared.training.common import save_torch_atomic
from shared.config import config_dict
from shared.files import write_json
from shared.models.bundle import load_encoder_bundle
from shared.contract import ENCODERS
from shared.training.stage1 import build_encoders
from shared.training.stage2 import Stage2Config, accuracy_without, evaluate, finetune

log = logging.getLogger(__name__)


def load_split(folder: str, name: str, required: bool = True) -> Optional[MultimodalDataset]:
    path = os.path.join(folder, name + ".npz")
    if not os.path.isfile(path):
        if required:
            raise DataError("{}: not found (the labels folder needs {}.npz + {}.json)".format(path, name, name))
        return None
    return MultimodalDataset.load(path)


def raw_windows_dataset(manifest: Dict[str, Any], raw: Dict[str, np.ndarray], where: str) -> MultimodalDataset:
    """Unlabeled raw windows ``modality -> [N, T, C]`` as a dataset of the manifest's schema; a
    ``DataError`` naming ``where`` and the model when they do not fit it."""
    n = len(next(iter(raw.values())))
    try:
        ds = make_dataset(raw, schema_specs(manifest), np.full(n, -1, np.int64), np.zeros(n, np.int64),
                          list(manifest["classes"]), name=where)
        check_compatible(manifest, ds, where=where)
    except (DataError, KeyError) as e:
        raise DataError("{} do not fit {} v{}: {}".format(where, manifest["name"], manifest["version"], e)) from None
    return ds


def unlabeled_windows(manifest: Dict[str, Any], labels_dir: str,
                      extra: Optional[Dict[str, np.ndarray]] = None) -> Optional[MultimodalDataset]:
    """The raw windows without labels that stage 2 may learn from: ``labels_dir/unlabeled`` (its labels, if
    any, are ignored) and ``extra`` (``modality -> [N, T, C]``, e.g. this device's own stored windows),
    each checked against the manifest's input schema; None when there are neither."""
    parts = []
    ds = load_split(labels_dir, "unlabeled", required=False)
    if ds is not None:
        check_compatible(manifest, ds, where=os.path.join(labels_dir, "unlabeled.npz"))
        parts.append(ds)
    if extra and len(next(iter(extra.values()))):
        parts.append(raw_windows_dataset(manifest, extra, "this device's stored windows"))
    if not parts:
        return None
    x = {m: np.concatenate([p.x[m] for p in parts]).astype(np.float32) for m in parts[0].x}
    total = sum(len(p) for p in parts)
    return make_dataset(x, schema_specs(manifest), np.full(total, -1, np.int64), np.zeros(total, np.int64),
                        list(manifest["classes"]), name="unlabeled")


def run_finetune(model_dir: str, labels_dir: str, out_dir: str, config: Stage2Config, pretrained: bool = True,
                 use_quality: bool = True, progress: bool = True,
                 extra_unlabeled: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, Any]:
    """Fine-tune on ``labels_dir/labeled`` selecting on ``labels_dir/val``; test on ``labels_dir/test`` if present.

    Data in ``labels_dir`` is raw (sensor units); it is checked against the manifest's input schema and
    normalized with the manifest's statistics. ``pretrained=False`` is the ablation: the same stage 2
    from randomly initialized encoders of the same architecture. With ``config.unlabeled_weight`` > 0,
    the windows of ``unlabeled_windows`` (``labels_dir/unlabeled.npz``, ``extra_unlabeled``) join as
    pseudo-labeled consistency targets; without any, stage 2 learns from the labels alone (and says so).
    """
    manifest = read_manifest(model_dir)
    norm = schema_normalizer(manifest)
    splits = {}
    for name in ("labeled", "val", "test"):
        ds = load_split(labels_dir, name, required=name != "test")
        if ds is not None:
            check_compatible(manifest, ds, where=os.path.join(labels_dir, name + ".npz"))
            splits[name] = norm.apply(ds)
    unlabeled = None
    if config.unlabeled_weight > 0:
        unlabeled = unlabeled_windows(manifest, labels_dir, extra_unlabeled)
        if unlabeled is None:
            log.warning("unlabeled_weight %s but no unlabeled windows (%s, this device's stored ones): stage 2 "
                        "learns from the labels alone", config.unlabeled_weight,
                        os.path.join(labels_dir, "unlabeled.npz"))
        else:
            unlabeled = norm.apply(unlabeled)
    encoders = load_encoder_bundle(os.path.join(model_dir, ENCODERS))
    if not pretrained:
        specs = schema_specs(manifest)
        e0 = encoders[0].config
        encoders = build_encoders(specs, [d["window"] for d in manifest["input_schema"].values()],
                                  e0.widths, e0.dropout, e0.out_steps)
    quality = manifest.get("quality") or {}
    q = quality.get("q") if use_quality else None
    if use_quality and q is None:
        log.warning("manifest has no quality scores; beta_QoM is uniform")
    res = finetune(encoders, splits["labeled"], splits["val"], config, quality=q, progress=progress,
                   unlabeled=unlabeled)
    metrics = {"val": res["val"], "best_epoch": res["best_epoch"], "seconds": res["seconds"],
               "labeled_windows": len(splits["labeled"]), "unlabeled_windows": len(unlabeled) if unlabeled else 0,
               "pretrained": pretrained,
               "quality_q": q, "config": config_dict(config)}
    if "test" in splits:
        metrics["test"] = evaluate(res["model"], splits["test"])
        if len(splits["test"].modalities) > 1:  # graceful sensor loss: each modality switched off in turn
            metrics["test_without"] = accuracy_without(res["model"], splits["test"])
    os.makedirs(out_dir, exist_ok=True)
    save_torch_atomic({"format": "cosmo-har/finetuned", "state_dict": res["model"].state_dict(),
                       "config": config_dict(config), "manifest_version": manifest["version"],
                       "pretrained": pretrained}, os.path.join(out_dir, FINETUNED))
    write_json(os.path.join(out_dir, METRICS), dict(metrics, history=res["history"]))
    metrics["model"] = res["model"]
    metrics["quality"] = quality
    metrics["classes"] = manifest["classes"]
    metrics["modalities"] = list(manifest["input_schema"])
    return metrics


def summarize(m: Dict[str, Any]) -> str:
    lines = ["stage 2: {} labeled windows{}, best val epoch {}, {:.1f} s".format(
        m["labeled_windows"], " + {} unlabeled".format(m["unlabeled_windows"]) if m.get("unlabeled_windows") else "",
        m["best_epoch"], m["seconds"]),
        "validation: accuracy {:.4f}  macro-F1 {:.4f}".format(m["val"]["accuracy"], m["val"]["macro_f1"])]
    qual = m.get("quality") or {}
    if qual.get("q"):
        lines.append("quality scores from the cloud ({} features): ".format(qual.get("features", "?")) + ", ".join(
            "{} q={:.3f} beta_QoM={:.3f}".format(mod, q, b)
            for mod, q, b in zip(qual.get("modalities", m["modalities"]), qual["q"], qual["beta_qom"])))
    if "test" in m:
        t = m["test"]
        lines.append("test:       accuracy {:.4f}  macro-F1 {:.4f}".format(t["accuracy"], t["macro_f1"]))
        if m.get("test_without"):
            lines.append("test accuracy with one sensor off: " + ", ".join(
                "without {} {:.4f}".format(mod, acc) for mod, acc in m["test_without"].items()))
        lines.append("mean attention beta on test: " + ", ".join(
            "{} {:.3f}".format(mod, b) for mod, b in zip(m["modalities"], t["beta_mean"])))
        cm = np.asarray(t["confusion"])
        width = max(len(c) for c in m["classes"])
        lines.append("confusion (rows = true):")
        for c, row in zip(m["classes"], cm):
            lines.append("  {:>{w}} ".format(c, w=width) + " ".join("{:5d}".format(v) for v in row))
    return "\n".join(lines)
