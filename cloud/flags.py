"""Command-line flags shared by several entry points; argparse only, so building a parser imports no torch."""
from typing import Any

from shared.flags import add_config_flags, fraction, positive
from shared.hparams import Stage1Config


def add_stage1_args(p: Any) -> None:
    """The stage-1 flags shared by ``cloud-server pretrain`` and ``cloud.ddp_pretrain``."""
    p.add_argument("--dataset", default="hapt", help="hapt, basicmotions, seglearn_watch, crowdsignals, synthetic, "
                   "uschad:DIR, utdmhad:DIR or a path to a .npz dataset")
    p.add_argument("--config", help="YAML file of Stage1Config keys (the flags below win over it)")
    add_config_flags(p, Stage1Config(), {
        "epochs": (positive(int), "passes over the unlabeled windows"),
        "batch_size": (positive(int), "(global) batch size"),
        "lr": (positive(float), "learning rate"),
        "fusion": (("dirichlet", "grid"), "how the fusion weights of the P views are drawn"),
        "num_views": (positive(int), "fused views P per window"),
        "temperature": (positive(float), "contrastive temperature"),
        "seed": (int, ""),
        "device": (str, "auto (CUDA when present), cpu or cuda"),
    })
    g = p.add_mutually_exclusive_group()
    g.add_argument("--label-rate", type=fraction, help="fraction of training windows held out as labeled (default 0.01)")
    g.add_argument("--labels-per-class", type=positive(int), help="labeled windows per class held out")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the subject split")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start over even if a checkpoint exists")
    p.add_argument("--no-progress", action="store_true")


def add_package_args(p: Any) -> None:
    """What happens after stage 1 (``cloud.pipeline.finish``), shared by ``cloud-server pretrain`` and
    ``cloud.ddp_pretrain``."""
    p.add_argument("--name", default="cosmo-encoders", help="model name in the manifest")
    p.add_argument("--edge-data", help="where to write the edge's labeled/val/test windows (default OUT/edge_data)")
    p.add_argument("--features", choices=["encoder", "raw"], default="encoder", help="features scored for quality")
    p.add_argument("--no-quality", action="store_true")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export of the encoders")
