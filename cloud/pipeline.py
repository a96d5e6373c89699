"""The cloud's training pipeline, shared by the CLI and the job worker:
prepare data -> stage 1 -> quality -> ONNX export (checked against torch) -> files + manifest."""
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml

from shared.contract import (ENCODER_INPUT, ENCODER_ONNX, ENCODER_OUTPUT, KIND_CONFIG, KIND_ONNX, KIND_STATE_DICT,
                             QUALITY, STAGE1_CONFIG)
from shared.data import load_named
from shared.data.dataset import MultimodalDataset
from shared.errors import CosmoError
from shared.experiment import Prepared, prepare
from shared.export import export_onnx
from shared.manifest import MANIFEST, file_entry, input_schema, new_manifest, read_manifest
from shared.training.common import config_dict, dataset_hash, load_config, stable_hash, write_json
from shared.training.stage1 import ENCODERS, Stage1Config, load_encoder_bundle, pretrain

from .flags import add_stage1_args  # noqa: F401  (re-exported for cloud.ddp_pretrain)
from .jobspec import DEFAULT_LABEL_RATE
from .quality import QualityReport, encoder_features, raw_features, score_quality

log = logging.getLogger(__name__)
PREPARED = "prepared.json"
CONFIG = STAGE1_CONFIG
ONNX_CHECK_BATCHES = (1, 8)


def stage1_config(a: Any) -> Stage1Config:
    """Stage1Config from ``--config`` with the flags of ``add_stage1_args`` on top."""
    overrides = {"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "seed": a.seed, "fusion": a.fusion,
                 "num_views": a.num_views, "temperature": a.temperature, "device": a.device}
    return load_config(Stage1Config, a.config, overrides)


def prepare_from(args: Dict[str, Any]) -> Prepared:
    """``args``: dataset, label_rate | labels_per_class, seed, split_seed (as saved in prepared.json)."""
    ds = load_named(args["dataset"])
    return prepare(ds, label_rate=args.get("label_rate"), labels_per_class=args.get("labels_per_class"),
                   seed=args["seed"], split_seed=args["split_seed"])


def run_quality(out: str, unlabeled: MultimodalDataset, features: str, seed: int) -> QualityReport:
    """Score quality on the (normalized) unlabeled windows; write quality.json; update the manifest draft."""
    if features == "encoder":
        feats = encoder_features(load_encoder_bundle(os.path.join(out, ENCODERS)), unlabeled)
    else:
        feats = raw_features(unlabeled)
    report = score_quality(feats, unlabeled.num_classes, seed=seed, source=features)
    write_json(os.path.join(out, QUALITY), report.to_json())
    path = os.path.join(out, MANIFEST)
    if os.path.isfile(path):
        man = read_manifest(path)
        man["quality"] = {"modalities": [m.modality for m in report.modalities], "q": report.q,
                          "beta_qom": report.beta_qom, "features": features}
        write_json(path, man)
    return report


def export_encoders(out: str, modalities: Sequence[str], windows: Sequence[Tuple[int, int]],
                    rtol: float = 1e-4, atol: float = 1e-5) -> List[Dict[str, Any]]:
    """Export each stage-1 encoder to ``encoder_<modality>.onnx`` (opset 13, one file, dynamic batch)
    and check it against torch with ONNX Runtime at batch sizes 1 and 8; raise on a mismatch."""
    import onnxruntime as ort

    encoders = load_encoder_bundle(os.path.join(out, ENCODERS))
    entries = []
    for m, enc, (t, c) in zip(modalities, encoders, windows):
        enc.eval()
        rel = ENCODER_ONNX.format(m)
        path = os.path.join(out, rel)
        export_onnx(enc, [torch.zeros(2, t, c)], path, input_names=[ENCODER_INPUT], output_names=[ENCODER_OUTPUT])
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        rng = np.random.RandomState(0)
        for b in ONNX_CHECK_BATCHES:
            x = rng.randn(b, t, c).astype(np.float32)
            got = sess.run(None, {ENCODER_INPUT: x})[0]
            with torch.no_grad():
                want = enc(torch.from_numpy(x)).numpy()
            if not np.allclose(got, want, rtol=rtol, atol=atol):
                raise CosmoError("ONNX export of encoder {!r} differs from torch at batch {} (max |diff| {:.2e})"
                                 .format(m, b, float(np.abs(got - want).max())))
        entries.append(file_entry(out, rel, KIND_ONNX))
    return entries


def run_pretrain(out: str, dataset: str, cfg: Stage1Config, label_rate: Optional[float] = None,
                 labels_per_class: Optional[int] = None, split_seed: int = 0, name: str = "cosmo-encoders",
                 features: str = "encoder", quality: bool = True, onnx: bool = True, resume: bool = True,
                 progress: bool = True, edge_data: Optional[str] = None,
                 on_progress: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """The whole cloud pipeline into ``out``; returns ``{"manifest", "prepared", "stage1", "quality"}``.

    ``on_progress`` receives ``{"stage": ..., "epoch", "epochs", "loss", "eta_seconds", "message"}`` dicts.
    """
    def report(**kw: Any) -> None:
        if on_progress is not None:
            on_progress(kw)

    if label_rate is None and labels_per_class is None:
        label_rate = DEFAULT_LABEL_RATE
    prep_args = {"dataset": dataset, "label_rate": label_rate, "labels_per_class": labels_per_class,
                 "seed": cfg.seed, "split_seed": split_seed}
    report(stage="prepare", message="loading {}".format(dataset))
    prep = prepare_from(prep_args)
    os.makedirs(out, exist_ok=True)
    unl = prep.norm(prep.unlabeled)
    with open(os.path.join(out, CONFIG), "w") as f:
        yaml.safe_dump(config_dict(cfg), f, sort_keys=True)
    write_json(os.path.join(out, PREPARED), prep_args)

    def epoch_done(row: Dict[str, Any]) -> None:
        report(stage="pretrain", epoch=row["epoch"] + 1, epochs=row["epochs"], loss=row["loss"],
               eta_seconds=row["eta_seconds"])
    res = pretrain(unl, cfg, out, resume=resume, progress=progress, on_epoch=epoch_done)
    edge_dir = edge_data or os.path.join(out, "edge_data")
    os.makedirs(edge_dir, exist_ok=True)
    prep.labeled.save(os.path.join(edge_dir, "labeled"))
    prep.split.val.save(os.path.join(edge_dir, "val"))
    prep.split.test.save(os.path.join(edge_dir, "test"))
    model = res["model"]
    man = new_manifest(
        name=name, schema=input_schema(unl, prep.normalizer), classes=unl.class_names,
        feature_dim=int(model.heads[0].net[-1].out_features),
        lineage={"dataset": dataset, "dataset_sha256": dataset_hash(unl), "config_sha256": stable_hash(config_dict(cfg)),
                 "prepare": prep_args, "parent_version": None},
        metrics={"stage1_loss": res["history"][-1]["loss"], "stage1_seconds": res["seconds"],
                 "unlabeled_windows": len(unl)})
    man["encoders"] = [{"modality": m, "out_steps": e.out_steps, "out_features": e.out_features,
                        "feature_dim": e.feature_dim} for m, e in zip(unl.modalities, model.encoders)]
    man["files"] = [file_entry(out, ENCODERS, KIND_STATE_DICT), file_entry(out, CONFIG, KIND_CONFIG)]
    write_json(os.path.join(out, MANIFEST), man)
    q = None
    if quality:
        report(stage="quality", message="scoring modality quality")
        q = run_quality(out, unl, features, cfg.seed)
    if onnx:
        report(stage="export", message="exporting encoders to ONNX (opset 13)")
        man = read_manifest(os.path.join(out, MANIFEST))
        man["files"] += export_encoders(out, unl.modalities, [(a.shape[1], a.shape[2]) for a in unl.x.values()])
        write_json(os.path.join(out, MANIFEST), man)
    return {"manifest": read_manifest(os.path.join(out, MANIFEST)), "prepared": prep, "stage1": res,
            "quality": q, "edge_data": edge_dir}
