"""``edge-agent``: the device side's command line.

Subcommands:
  labels    write a device's labeled / validation / test windows from a dataset (the demo's stand-in
            for labels collected on the device; same split and sampling as the cloud's hold-out).
  finetune  Cosmo stage 2 on the device's labeled windows, starting from shipped stage-1 encoders.
"""
import argparse
import logging
import os
import sys
from typing import List, Optional

from shared.errors import CosmoError
from shared.training.common import load_config
from shared.training.stage2 import Stage2Config

from .finetune import run_finetune, summarize


def cmd_finetune(a: argparse.Namespace) -> int:
    overrides = {"epochs": a.epochs, "t_iter": a.t_iter, "encoder_lr": a.encoder_lr,
                 "classifier_lr": a.classifier_lr, "seed": a.seed, "fusion": a.fusion, "lam": a.lam,
                 "schedule": a.schedule, "device": a.device}
    cfg = load_config(Stage2Config, a.config, overrides)
    m = run_finetune(a.model, a.labels, a.out, cfg, pretrained=a.pretrained, use_quality=not a.no_quality,
                     progress=not a.no_progress)
    print(summarize(m))
    return 0


def cmd_labels(a: argparse.Namespace) -> int:
    from shared.data import load_named
    from shared.experiment import prepare
    if a.label_rate is None and a.labels_per_class is None:
        a.label_rate = 0.01
    prep = prepare(load_named(a.dataset), label_rate=a.label_rate, labels_per_class=a.labels_per_class,
                   seed=a.seed, split_seed=a.split_seed)
    os.makedirs(a.out, exist_ok=True)
    for name, ds in (("labeled", prep.labeled), ("val", prep.split.val), ("test", prep.split.test)):
        ds.save(os.path.join(a.out, name))
        print("{}: {} windows, subjects {}".format(name, len(ds), sorted(set(ds.subjects.tolist()))))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-agent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level to stderr")
    sub = p.add_subparsers(dest="command")
    f = sub.add_parser("finetune", help="Cosmo stage 2 on local labeled windows")
    f.add_argument("--model", required=True, help="folder with encoders.pt + manifest.json (a pretrain output)")
    f.add_argument("--labels", required=True, help="folder with labeled.npz, val.npz (and optionally test.npz)")
    f.add_argument("--out", required=True, help="where to write finetuned.pt and metrics.json")
    f.add_argument("--config", help="YAML file of Stage2Config keys")
    f.add_argument("--epochs", type=int)
    f.add_argument("--t-iter", type=int)
    f.add_argument("--encoder-lr", type=float)
    f.add_argument("--classifier-lr", type=float)
    f.add_argument("--lam", type=float, help="weight of the quality prior in the attention (0..1)")
    f.add_argument("--fusion", choices=["sum", "concat"])
    f.add_argument("--schedule", choices=["iterative", "joint", "frozen"])
    f.add_argument("--seed", type=int)
    f.add_argument("--device", help="auto (default: CUDA when present), cpu or cuda")
    f.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="ablation: random encoders of the same architecture instead of the shipped ones")
    f.add_argument("--no-quality", action="store_true", help="ignore the manifest's quality scores")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=cmd_finetune)
    lb = sub.add_parser("labels", help="write labeled/val/test windows for finetune from a dataset")
    lb.add_argument("--dataset", default="hapt")
    lb.add_argument("--out", required=True)
    g = lb.add_mutually_exclusive_group()
    g.add_argument("--label-rate", type=float)
    g.add_argument("--labels-per-class", type=int)
    lb.add_argument("--seed", type=int, default=0, help="label sampling seed (use the cloud job's seed)")
    lb.add_argument("--split-seed", type=int, default=0)
    lb.set_defaults(func=cmd_labels)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(a, "func", None):
        p.print_help()
        return 2
    try:
        return int(a.func(a))
    except CosmoError as e:
        print("edge-agent: error: {}".format(e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
