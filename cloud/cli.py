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

from shared.errors import CosmoError
from shared.manifest import MANIFEST
from shared.training.common import load_config
from shared.training.stage1 import CHECKPOINT, Stage1Config

from .pipeline import PREPARED, prepare_from, run_pretrain, run_quality

log = logging.getLogger("cloud")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_pretrain(a: argparse.Namespace) -> int:
    overrides = {"epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr, "seed": a.seed, "fusion": a.fusion,
                 "num_views": a.num_views, "temperature": a.temperature, "device": a.device}
    cfg = load_config(Stage1Config, a.config, overrides)
    if not a.resume and os.path.exists(os.path.join(a.out, CHECKPOINT)):
        os.remove(os.path.join(a.out, CHECKPOINT))

    def show(p: Dict[str, Any]) -> None:
        if p["stage"] == "prepare":
            return
        if p["stage"] != "pretrain":
            print(p.get("message", p["stage"]))
    res = run_pretrain(a.out, a.dataset, cfg, label_rate=a.label_rate, labels_per_class=a.labels_per_class,
                       split_seed=a.split_seed, name=a.name, features=a.features, quality=not a.no_quality,
                       onnx=not a.no_onnx, resume=a.resume, progress=not a.no_progress, edge_data=a.edge_data,
                       on_progress=show)
    prep, s1 = res["prepared"], res["stage1"]
    print(prep.norm(prep.unlabeled).summary())
    print("split: train subjects {}, val {}, test {}; {} labeled windows held out of pretraining".format(
        prep.split.train_subjects, prep.split.val_subjects, prep.split.test_subjects, len(prep.labeled)))
    print("stage 1: {} epochs ({} run now) in {:.1f} s, final loss {:.4f}".format(
        cfg.epochs, s1["epochs_run"], s1["seconds"], s1["history"][-1]["loss"]))
    if res["quality"] is not None:
        r = res["quality"]
        print("quality ({} features, {} points):\n{}".format(r.features, r.points, r.table()))
    print("wrote {}: {}; edge data in {}".format(
        a.out, ", ".join(f["path"] for f in res["manifest"]["files"]) + ", " + MANIFEST, res["edge_data"]))
    return 0


def cmd_quality(a: argparse.Namespace) -> int:
    path = os.path.join(a.model, PREPARED)
    if not os.path.isfile(path):
        raise CosmoError("{}: not found; run `cloud-server pretrain` into {} first".format(path, a.model))
    with open(path) as f:
        prep_args = json.load(f)
    prep = prepare_from(prep_args)
    report = run_quality(a.model, prep.norm(prep.unlabeled), a.features, a.seed)
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
    pt.add_argument("--no-onnx", action="store_true", help="skip the ONNX export of the encoders")
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
