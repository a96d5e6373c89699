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
from shared.config import config_dict, load_config
from shared.files import write_json
from shared.hashing import dataset_hash, stable_hash
from shared.hparams import STAGE1_PRESETS
from shared.training.stage1 import ENCODERS, Stage1Config, load_encoder_bundle, pretrain

from .flags import STAGE1_FLAGS, add_stage1_args  # noqa: F401  (add_stage1_args re-exported for cloud.ddp_pretrain)
from .jobspec import DEFAULT_LABEL_RATE
from .quality import QualityReport, encoder_features, raw_features, score_quality

log = logging.getLogger(__name__)
PREPARED = "prepared.json"
CONFIG = STAGE1_CONFIG
ONNX_CHECK_BATCHES = (1, 8)


def stage1_config(a: Any) -> Stage1Config:
    """Stage1Config of ``--preset``, then ``--config``, then the flags of ``add_stage1_args`` on top."""
    overrides = {f: getattr(a, f) for f in STAGE1_FLAGS}
    return load_config(Stage1Config, a.config, overrides, base=STAGE1_PRESETS[a.preset])


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


# The pipeline as named stages: the job worker and `cloud-server pretrain` run them all (``run_pretrain``;
# the worker then publishes the folder, ``Registry.publish_folder``), `python -m benchmarks.stages` runs and times
# them one by one;
# `torchrun -m cloud.ddp_pretrain` runs ``stage_prepare`` on every rank, stage 1 data-parallel, and
# ``finish`` on rank 0, so its output is a version like any other (manifest, edge data, quality, ONNX).
STAGES = ("prepare", "pretrain", "package", "quality", "export", "publish")


def stage_prepare(out: str, dataset: str, cfg: Stage1Config, label_rate: Optional[float] = None,
                  labels_per_class: Optional[int] = None, split_seed: int = 0,
                  write: bool = True) -> Tuple[Prepared, Dict[str, Any]]:
    """Load and split ``dataset``, sample the labels; with ``write``, save the resolved stage-1 config and
    ``prepared.json`` (what ``cloud-server quality`` re-prepares from) into ``out``."""
    if label_rate is None and labels_per_class is None:
        label_rate = DEFAULT_LABEL_RATE
    prep_args = {"dataset": dataset, "label_rate": label_rate, "labels_per_class": labels_per_class,
                 "seed": cfg.seed, "split_seed": split_seed}
    prep = prepare_from(prep_args)
    if write:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, CONFIG), "w") as f:
            yaml.safe_dump(config_dict(cfg), f, sort_keys=True)
        write_json(os.path.join(out, PREPARED), prep_args)
    return prep, prep_args


def stage_package(out: str, prep: Prepared, prep_args: Dict[str, Any], cfg: Stage1Config, stage1: Dict[str, Any],
                  name: str, edge_data: Optional[str] = None) -> str:
    """The edge's labeled / unlabeled / validation / test windows (the demo's stand-in for what a device
    collects) and the manifest draft of the stage-1 files; returns the edge data folder."""
    unl = prep.norm(prep.unlabeled)
    edge_dir = edge_data or os.path.join(out, "edge_data")
    os.makedirs(edge_dir, exist_ok=True)
    prep.labeled.save(os.path.join(edge_dir, "labeled"))
    prep.unlabeled.save(os.path.join(edge_dir, "unlabeled"))
    prep.split.val.save(os.path.join(edge_dir, "val"))
    prep.split.test.save(os.path.join(edge_dir, "test"))
    model = stage1["model"]
    man = new_manifest(
        name=name, schema=input_schema(unl, prep.normalizer), classes=unl.class_names,
        feature_dim=int(model.heads[0].net[-1].out_features),
        lineage={"dataset": prep_args["dataset"], "dataset_sha256": dataset_hash(unl),
                 "config_sha256": stable_hash(config_dict(cfg)), "prepare": prep_args, "parent_version": None},
        metrics={"stage1_loss": stage1["history"][-1]["loss"], "stage1_seconds": stage1["seconds"],
                 "unlabeled_windows": len(unl)})
    man["encoders"] = [{"modality": m, "out_steps": e.out_steps, "out_features": e.out_features,
                        "feature_dim": e.feature_dim} for m, e in zip(unl.modalities, model.encoders)]
    man["files"] = [file_entry(out, ENCODERS, KIND_STATE_DICT), file_entry(out, CONFIG, KIND_CONFIG)]
    write_json(os.path.join(out, MANIFEST), man)
    return edge_dir


def stage_export(out: str, prep: Prepared) -> Dict[str, Any]:
    """ONNX export of every encoder into the manifest; returns the manifest."""
    unl = prep.unlabeled
    man = read_manifest(os.path.join(out, MANIFEST))
    man["files"] += export_encoders(out, unl.modalities, [(a.shape[1], a.shape[2]) for a in unl.x.values()])
    write_json(os.path.join(out, MANIFEST), man)
    return man


def finish(out: str, prep: Prepared, prep_args: Dict[str, Any], cfg: Stage1Config, stage1: Dict[str, Any],
           name: str = "cosmo-encoders", features: str = "encoder", quality: bool = True, onnx: bool = True,
           edge_data: Optional[str] = None,
           report: Optional[Callable[..., None]] = None) -> Dict[str, Any]:
    """The stages after stage 1: package -> quality -> export. Returns ``{"manifest", "prepared", "stage1",
    "quality", "edge_data"}``."""
    report = report or (lambda **kw: None)
    edge_dir = stage_package(out, prep, prep_args, cfg, stage1, name, edge_data)
    q = None
    if quality:
        report(stage="quality", message="scoring modality quality")
        q = run_quality(out, prep.norm(prep.unlabeled), features, cfg.seed)
    if onnx:
        report(stage="export", message="exporting encoders to ONNX (opset 13)")
        stage_export(out, prep)
    return {"manifest": read_manifest(os.path.join(out, MANIFEST)), "prepared": prep, "stage1": stage1,
            "quality": q, "edge_data": edge_dir}


def run_pretrain(out: str, dataset: str, cfg: Stage1Config, label_rate: Optional[float] = None,
                 labels_per_class: Optional[int] = None, split_seed: int = 0, name: str = "cosmo-encoders",
                 features: str = "encoder", quality: bool = True, onnx: bool = True, resume: bool = True,
                 progress: bool = True, edge_data: Optional[str] = None,
                 on_progress: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Every stage into ``out`` (``STAGES``); returns what ``finish`` returns.

    ``on_progress`` receives ``{"stage": ..., "epoch", "epochs", "loss", "eta_seconds", "message"}`` dicts.
    """
    def report(**kw: Any) -> None:
        if on_progress is not None:
            on_progress(kw)

    report(stage="prepare", message="loading {}".format(dataset))
    prep, prep_args = stage_prepare(out, dataset, cfg, label_rate, labels_per_class, split_seed)

    def epoch_done(row: Dict[str, Any]) -> None:
        report(stage="pretrain", epoch=row["epoch"] + 1, epochs=row["epochs"], loss=row["loss"],
               eta_seconds=row["eta_seconds"])
    res = pretrain(prep.norm(prep.unlabeled), cfg, out, resume=resume, progress=progress, on_epoch=epoch_done)
    return finish(out, prep, prep_args, cfg, res, name=name, features=features, quality=quality, onnx=onnx,
                  edge_data=edge_data, report=report)
