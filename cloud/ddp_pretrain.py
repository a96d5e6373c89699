"""Stage-1 pretraining on several processes (DistributedDataParallel), launched by ``torchrun``.

CPU, 2 processes (gloo)::

    torchrun --standalone --nproc_per_node 2 -m cloud.ddp_pretrain --dataset hapt --out runs/s1_ddp
    # same thing without the torchrun script:
    python -m torch.distributed.run --standalone --nproc_per_node 2 -m cloud.ddp_pretrain ...

All GPUs of one machine (NCCL, one process per GPU)::

    torchrun --standalone --nproc_per_node gpu -m cloud.ddp_pretrain --dataset hapt --out runs/s1_ddp

Several machines: ``torchrun --nnodes N --node_rank I --master_addr HOST --master_port PORT
--nproc_per_node G -m cloud.ddp_pretrain ...`` on each. ``--batch-size`` is the global batch (split
evenly over the processes); negatives are gathered from all processes. Rank 0 then runs the same stages
as ``cloud-server pretrain`` after stage 1 (``cloud.pipeline.finish``: edge data, manifest, quality, ONNX),
so ``OUT`` is a version like any other: ``edge-agent finetune --model OUT`` takes it. Without torchrun it
runs in one process.
"""
import argparse
import logging
import os
import sys
from typing import List, Optional

import torch

from shared.errors import CosmoError
from shared.training import distributed
from shared.training.stage1 import CHECKPOINT, pretrain

from .flags import add_package_args, add_stage1_args
from .pipeline import finish, stage1_config, stage_prepare

log = logging.getLogger("cloud.ddp")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchrun ... -m cloud.ddp_pretrain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level to stderr")
    add_stage1_args(p)
    add_package_args(p)
    p.add_argument("--out", required=True, help="output folder (written by rank 0)")
    p.add_argument("--backend", choices=["auto", "nccl", "gloo"], default="auto",
                   help="process-group backend (auto: nccl on CUDA, gloo on CPU)")
    return p


def run(a: argparse.Namespace) -> int:
    cfg = stage1_config(a)
    info = distributed.init_from_env(backend=a.backend, device=cfg.device)
    try:
        prep, prep_args = stage_prepare(a.out, a.dataset, cfg, a.label_rate, a.labels_per_class, a.split_seed,
                                        write=info.is_main)
        unl = prep.norm(prep.unlabeled)
        if info.is_main:
            print(unl.summary())
            print("stage 1 on {} process(es) ({}), global batch {}".format(
                info.world_size, info.backend or "single process", cfg.batch_size))
            if not a.resume and os.path.exists(os.path.join(a.out, CHECKPOINT)):
                os.remove(os.path.join(a.out, CHECKPOINT))
        distributed.barrier()
        res = pretrain(unl, cfg, a.out, resume=a.resume, progress=not a.no_progress)
        if info.is_main:
            r = finish(a.out, prep, prep_args, cfg, res, name=a.name, features=a.features,
                       quality=not a.no_quality, onnx=not a.no_onnx, edge_data=a.edge_data)
            print("stage 1: {} epochs in {:.1f} s, final loss {:.4f}; wrote {} ({}), edge data in {}".format(
                cfg.epochs, res["seconds"], res["history"][-1]["loss"], a.out,
                ", ".join(f["path"] for f in r["manifest"]["files"]), r["edge_data"]))
        return 0
    finally:
        distributed.cleanup()


def main(argv: Optional[List[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s [rank {}]: %(message)s".format(
                            os.environ.get("RANK", "0")))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    try:
        return run(a)
    except CosmoError as e:
        print("cloud.ddp_pretrain [rank {}]: error: {}".format(os.environ.get("RANK", "0"), e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
