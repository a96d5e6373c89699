"""Command-line flags shared by several entry points; argparse only, so building a parser imports no torch."""
from typing import Any

from shared.flags import fraction, positive


def add_stage1_args(p: Any) -> None:
    """The stage-1 flags shared by ``cloud-server pretrain`` and ``cloud.ddp_pretrain``."""
    p.add_argument("--dataset", default="hapt", help="hapt, basicmotions, synthetic, uschad:DIR, utdmhad:DIR "
                   "or a path to a .npz dataset")
    p.add_argument("--config", help="YAML file of Stage1Config keys")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="(global) batch size")
    p.add_argument("--lr", type=float)
    p.add_argument("--fusion", choices=["dirichlet", "grid"])
    p.add_argument("--num-views", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto (default: CUDA when present), cpu or cuda")
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
