"""Command-line flags shared by several entry points; argparse only, so building a parser imports no torch."""
from typing import Any

from shared.flags import add_config_flags, fraction, positive
from shared.hparams import STAGE1_PRESETS, Stage1Config

# Stage1Config fields that are flags of add_stage1_args (with help and the default shown)
STAGE1_FLAG_SPECS = {
    "epochs": (positive(int), "passes over the unlabeled windows"),
    "batch_size": (positive(int), "(global) batch size"),
    "lr": (positive(float), "learning rate"),
    "fusion": (("dirichlet", "grid"), "how the fusion weights of the P views are drawn"),
    "num_views": (positive(int), "fused views P per window"),
    "temperature": (positive(float), "contrastive temperature"),
    "input_views": (positive(int), "augmented copies of each window, each fused into P / input_views views"),
    "jitter": (positive(float, zero=True), "Gaussian jitter sigma (normalized units)"),
    "scale": (positive(float, zero=True), "per-channel scaling sigma"),
    "rotate": (positive(float, zero=True), "max degrees of a random rotation of each tri-axial sensor (0: off)"),
    "time_warp": (positive(float, zero=True), "sigma of a smooth random time warp (0: off)"),
    "permute": (positive(int, zero=True), "shuffle this many time slices of each window (0: off)"),
    "mask": (positive(float, zero=True), "fraction of each window zeroed in one random time span (0: off)"),
    "predictive": (positive(float, zero=True), "weight of a predictive-coding (CPC) term added to the fusion loss "
                   "(0: off)"),
    "predictive_steps": (positive(int), "latent steps ahead the predictive-coding term predicts"),
    "seed": (int, ""),
    "device": (str, "auto (CUDA when present), cpu or cuda"),
}
STAGE1_FLAGS = tuple(STAGE1_FLAG_SPECS)


def add_stage1_args(p: Any) -> None:
    """The stage-1 flags shared by ``cloud-server pretrain`` and ``cloud.ddp_pretrain``."""
    p.add_argument("--dataset", default="hapt", help="hapt, basicmotions, seglearn_watch, crowdsignals, synthetic, "
                   "uschad:DIR, utdmhad:DIR or a path to a .npz dataset")
    p.add_argument("--preset", choices=list(STAGE1_PRESETS), default="cosmo-har",
                   help="named stage-1 configuration: 'paper' is Cosmo as published (fusion weights the only "
                   "augmentation), 'cosmo-har' this project's default; --config and the flags below win over it "
                   "(default cosmo-har)")
    p.add_argument("--config", help="YAML file of Stage1Config keys (the flags below win over it)")
    add_config_flags(p, Stage1Config(), STAGE1_FLAG_SPECS)
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
