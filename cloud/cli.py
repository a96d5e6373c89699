"""``cloud-server``: the cloud side's command line.

Subcommands:
  pretrain  Cosmo stage 1 on the unlabeled windows of a dataset, then quality scoring; writes the
            encoder bundle, a manifest draft and (for the demo/benchmarks) the edge's labeled,
            validation and test windows.
  quality   (Re)score modality quality for a finished pretrain output.
"""
import argparse
import json
import logging
import os
import sys
from typing import Any, Dict, List, Optional

import torch
import yaml

from shared.data import load_named
from shared.errors import CosmoError
from shared.experiment import Prepared, prepare
from shared.manifest import MANIFEST, file_entry, input_schema, new_manifest, read_manifest
from shared.training.common import config_dict, dataset_hash, load_config, stable_hash, write_json
from shared.training.stage1 import CHECKPOINT, ENCODERS, Stage1Config, load_encoder_bundle, pretrain

from .quality import QualityReport, encoder_features, raw_features, score_quality

log = logging.getLogger("cloud")
PREPARED = "prepared.json"


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _prepare_from(args: Dict[str, Any]) -> Prepared:
    ds = load_named(args["dataset"])
    return prepare(ds, label_rate=args.get("label_rate"), labels_per_class=args.get("labels_per_class"),
                   seed=args["seed"], split_seed=args["split_seed"])


def _quality(out: str, prep: Prepared, features: str, seed: int) -> QualityReport:
    unl = prep.norm(prep.unlabeled)
    if features == "encoder":
        feats = encoder_features(load_encoder_bundle(os.path.join(out, ENCODERS)), unl)
    else:
        feats = raw_features(unl)
    report = score_quality(feats, unl.num_classes, seed=seed, source=features)
    write_json(os.path.join(out, "quality.json"), report.to_json())
    path = os.path.join(out, MANIFEST)
    if os.path.isfile(path):
        man = read_manifest(path)
        man["quality"] = {"modalities": [m.modality for m in report.modalities], "q": report.q,
                          "beta_qom": report.beta_qom, "features": features}
        write_json(path, man)
    return report


def cmd_pretrain(a: argparse.Namespace) -> int:
    overrides = {"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "seed": a.seed, "fusion": a.fusion,
                 "num_views": a.num_views, "temperature": a.temperature, "device": a.device}
    cfg = load_config(Stage1Config, a.config, overrides)
    if a.label_rate is None and a.labels_per_class is None:
        a.label_rate = 0.01
    prep_args = {"dataset": a.dataset, "label_rate": a.label_rate, "labels_per_class": a.labels_per_class,
                 "seed": cfg.seed, "split_seed": a.split_seed}
    prep = _prepare_from(prep_args)
    os.makedirs(a.out, exist_ok=True)
    unl = prep.norm(prep.unlabeled)
    print(unl.summary())
    print("split: train subjects {}, val {}, test {}; {} labeled windows held out of pretraining".format(
        prep.split.train_subjects, prep.split.val_subjects, prep.split.test_subjects, len(prep.labeled)))
    with open(os.path.join(a.out, "stage1_config.yaml"), "w") as f:
        yaml.safe_dump(config_dict(cfg), f, sort_keys=True)
    write_json(os.path.join(a.out, PREPARED), prep_args)
    if not a.resume and os.path.exists(os.path.join(a.out, CHECKPOINT)):
        os.remove(os.path.join(a.out, CHECKPOINT))
    res = pretrain(unl, cfg, a.out, resume=a.resume, progress=not a.no_progress)
    print("stage 1: {} epochs in {:.1f} s, final loss {:.4f}".format(
        cfg.epochs, res["seconds"], res["history"][-1]["loss"]))
    edge_dir = a.edge_data or os.path.join(a.out, "edge_data")
    os.makedirs(edge_dir, exist_ok=True)
    prep.labeled.save(os.path.join(edge_dir, "labeled"))
    prep.split.val.save(os.path.join(edge_dir, "val"))
    prep.split.test.save(os.path.join(edge_dir, "test"))
    model = res["model"]
    man = new_manifest(
        name=a.name, schema=input_schema(unl, prep.normalizer), classes=unl.class_names,
        feature_dim=int(model.heads[0].net[-1].out_features),
        lineage={"dataset": a.dataset, "dataset_sha256": dataset_hash(unl), "config_sha256": stable_hash(config_dict(cfg)),
                 "prepare": prep_args, "parent_version": None},
        metrics={"stage1_loss": res["history"][-1]["loss"], "stage1_seconds": res["seconds"],
                 "unlabeled_windows": len(unl)})
    man["files"] = [file_entry(a.out, ENCODERS, "encoders_state_dict"), file_entry(a.out, "stage1_config.yaml", "config")]
    write_json(os.path.join(a.out, MANIFEST), man)
    if not a.no_quality:
        report = _quality(a.out, prep, a.features, cfg.seed)
        print("quality ({} features, {} points):\n{}".format(report.features, report.points, report.table()))
    print("wrote {} ({}, {}) and edge data in {}".format(a.out, ENCODERS, MANIFEST, edge_dir))
    return 0


def cmd_quality(a: argparse.Namespace) -> int:
    path = os.path.join(a.model, PREPARED)
    if not os.path.isfile(path):
        raise CosmoError("{}: not found; run `cloud-server pretrain` into {} first".format(path, a.model))
    with open(path) as f:
        prep_args = json.load(f)
    report = _quality(a.model, _prepare_from(prep_args), a.features, a.seed)
    print("quality ({} features, {} points):\n{}".format(report.features, report.points, report.table()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloud-server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level to stderr")
    sub = p.add_subparsers(dest="command")
    pt = sub.add_parser("pretrain", help="Cosmo stage 1 + quality scoring")
    pt.add_argument("--dataset", default="hapt", help="hapt, basicmotions, synthetic, uschad:DIR, utdmhad:DIR "
                    "or a path to a .npz dataset")
    pt.add_argument("--out", required=True, help="output folder")
    pt.add_argument("--name", default="cosmo-encoders", help="model name in the manifest")
    pt.add_argument("--config", help="YAML file of Stage1Config keys")
    pt.add_argument("--epochs", type=int)
    pt.add_argument("--batch-size", type=int)
    pt.add_argument("--lr", type=float)
    pt.add_argument("--fusion", choices=["dirichlet", "grid"])
    pt.add_argument("--num-views", type=int)
    pt.add_argument("--temperature", type=float)
    pt.add_argument("--seed", type=int)
    pt.add_argument("--device", help="auto (default), cpu or cuda")
    g = pt.add_mutually_exclusive_group()
    g.add_argument("--label-rate", type=float, help="fraction of training windows labeled (default 0.01)")
    g.add_argument("--labels-per-class", type=int, help="labeled windows per class")
    pt.add_argument("--split-seed", type=int, default=0, help="seed of the subject split")
    pt.add_argument("--edge-data", help="where to write the edge's labeled/val/test windows (default OUT/edge_data)")
    pt.add_argument("--features", choices=["encoder", "raw"], default="encoder", help="features scored for quality")
    pt.add_argument("--no-quality", action="store_true")
    pt.add_argument("--no-resume", dest="resume", action="store_false", help="start over even if a checkpoint exists")
    pt.add_argument("--no-progress", action="store_true")
    pt.set_defaults(func=cmd_pretrain)
    q = sub.add_parser("quality", help="score modality quality of a pretrain output")
    q.add_argument("--model", required=True, help="a pretrain output folder")
    q.add_argument("--features", choices=["encoder", "raw"], default="encoder")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_quality)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    _setup_logging(a.verbose)
    if not getattr(a, "func", None):
        p.print_help()
        return 2
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        return int(a.func(a))
    except CosmoError as e:
        print("cloud-server: error: {}".format(e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
