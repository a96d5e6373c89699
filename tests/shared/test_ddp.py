"""Stage 1 under DistributedDataParallel (2 CPU processes, gloo) equals stage 1 in one process.

With deterministic fusion (grid), no augmentation and no dropout, one step on 2 ranks (each with half
of the global batch, views gathered across ranks, batch norm synchronized, DDP averaging gradients)
must give the single-process loss and parameter gradients on the whole batch, and whole runs of
``pretrain`` (resumed after a stop, and through the torchrun entry point) the same losses and weights.
"""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from shared.data import make_synthetic
from shared.errors import ConfigError, CosmoError
from shared.experiment import prepare
from shared.losses import ContrastiveFusionLoss, FusionViews
from shared.training import Stage1Config, Stage1Model, build_encoders, load_encoder_bundle, pretrain
from shared.training import distributed
from shared.training.common import seed_everything
from shared.training.stage1 import Stage1Views, stage1_augment, stage1_loss

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORLD = 2
# deterministic steps (grid fusion, no augmentation, no dropout); lr 0.01 keeps this tiny model out of
# the regime (lr >= 0.02) where a 1e-7 change of the input already moves one-process weights by 1e-3
CFG = dict(epochs=3, batch_size=16, lr=0.01, encoder_widths=(8, 8, 8), out_steps=4, proj_hidden=32, proj_dim=16,
           num_views=4, input_views=2, fusion="grid", jitter=0.0, scale=0.0, time_warp=0.0, encoder_dropout=0.0,
           predictive=0.0, device="cpu")  # no random transform: a two-rank step must equal the single-process one exactly


def _dataset():
    return make_synthetic(num_subjects=6, windows_per_subject=40, num_classes=3,
                          modalities=(("a", 32, 3), ("b", 32, 2)), informativeness=(1.0, 0.6), seed=1)


def _unlabeled():
    prep = prepare(_dataset(), labels_per_class=4, seed=0, val_fraction=0.2, test_fraction=0.2)
    return prep.norm(prep.unlabeled)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_step(unl, cfg, idx):
    """Loss, parameter gradients and BN buffers of one stage-1 step on windows ``idx`` (this rank's)."""
    seed_everything(cfg.seed)
    model = Stage1Model(build_encoders(list(unl.specs.values()), [a.shape[1] for a in unl.x.values()],
                                       cfg.encoder_widths, cfg.encoder_dropout, cfg.out_steps),
                        cfg.proj_dim, cfg.proj_hidden)
    model = distributed.sync_batchnorm(model, torch.device("cpu"))
    fusion = FusionViews(cfg.num_views // cfg.input_views, cfg.fusion, cfg.concentration)
    net = distributed.wrap_ddp(Stage1Views(model, fusion, cfg.input_views, stage1_augment(cfg)),
                               torch.device("cpu"))
    net.train()
    loss = stage1_loss(net, [torch.from_numpy(a[idx]) for a in unl.x.values()],
                       ContrastiveFusionLoss(cfg.temperature))
    loss.backward()
    return {"loss": float(loss.detach()),
            "grads": {k: p.grad.detach().clone() for k, p in model.named_parameters()},
            "buffers": {k: b.detach().clone() for k, b in model.named_buffers()}}


class _Stop(Exception):
    pass


def _stop_after_first_epoch(row):
    if row["epoch"] == 0:
        raise _Stop()


def _worker(rank: int, port: int, tmp: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    info = distributed.init_from_env(device="cpu")
    assert (info.rank, info.world_size, info.backend, info.distributed) == (rank, WORLD, "gloo", True)
    try:
        unl = _unlabeled()
        cfg = Stage1Config(**CFG)
        out = {}
        # gather order and gradient flow of the collective itself
        x = torch.full((2, 3), float(rank + 1), requires_grad=True)
        g = distributed.gather_with_grad(x)
        (g * torch.arange(1.0, 5.0)[:, None]).sum().backward()
        out["gathered"], out["gather_grad"] = g.detach(), x.grad.clone()
        # one step on this rank's half of the global batch (the first 8 windows)
        b = 8 // WORLD
        out["step"] = _one_step(unl, cfg, np.arange(rank * b, (rank + 1) * b))
        # the global batch must split evenly
        try:
            pretrain(unl, Stage1Config(**dict(CFG, batch_size=9)), os.path.join(tmp, "bad{}".format(rank)),
                     progress=False)
        except ConfigError as e:
            out["batch_error"] = str(e)
        # pretrain with per-rank output folders: only rank 0 writes; stop after epoch 1, then resume
        run_dir = os.path.join(tmp, "run{}".format(rank))
        try:
            pretrain(unl, cfg, run_dir, progress=False, on_epoch=_stop_after_first_epoch)
        except _Stop:
            out["stopped"] = "callback"
        except CosmoError as e:
            out["stopped"] = str(e)
        seen = []
        res = pretrain(unl, cfg, run_dir, progress=False, on_epoch=seen.append)
        out["seen"] = [r["epoch"] for r in seen]
        out["history"] = [h["loss"] for h in res["history"]]
        out["epochs_run"] = res["epochs_run"]
        out["state"] = {k: v.clone() for k, v in res["model"].state_dict().items()}
        torch.save(out, os.path.join(tmp, "rank{}.pt".format(rank)))
    finally:
        distributed.cleanup()


def _assert_grads_close(got, want) -> None:
    assert set(got) == set(want)
    for k in want:
        err = float((got[k].double() - want[k].double()).abs().max())
        scale = float(want[k].abs().max())
        assert err <= 1e-5 * scale + 1e-6, "{}: max error {:.3g} for gradients of size {:.3g}".format(k, err, scale)


def _assert_state_close(got, want, rel: float = 5e-4) -> None:
    """Weights and BN statistics after a few steps: rounding differences (reduction order, thread
    count) grow over the steps to ~3e-5 here; a wrong gradient scale or unsynchronized BN gives > 1e-2."""
    assert set(got) == set(want)
    for k, v in want.items():
        err = float((got[k].double() - v.double()).abs().max())
        assert err <= rel * max(1.0, float(v.abs().max())), "{}: max error {:.3g}".format(k, err)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("ddp"))
    torch.multiprocessing.spawn(_worker, args=(_free_port(), tmp), nprocs=WORLD, join=True)
    return tmp, [torch.load(os.path.join(tmp, "rank{}.pt".format(r))) for r in range(WORLD)]


def test_not_distributed_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = distributed.init_from_env(device="cpu")
    assert not info.distributed and info.is_main and info.backend is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.init_from_env(device="cpu").distributed
    x = torch.randn(3, 2)
    assert distributed.gather_with_grad(x) is x and distributed.all_reduce_with_grad(x) is x
    m = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), torch.nn.BatchNorm1d(4))
    assert distributed.sync_batchnorm(m, torch.device("cpu")) is m and distributed.wrap_ddp(m, torch.device("cpu")) is m


def test_dist_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3), torch.nn.BatchNorm1d(4, momentum=None))
    conv = distributed.convert_dist_batchnorm(torch.nn.Sequential(torch.nn.Conv1d(2, 4, 3),
                                                                 torch.nn.BatchNorm1d(4, momentum=None)))
    conv.load_state_dict(ref.state_dict())
    assert isinstance(conv[1], distributed.DistBatchNorm) and set(conv.state_dict()) == set(ref.state_dict())
    x = torch.randn(5, 2, 9)
    for mode in (True, False):
        ref.train(mode)
        conv.train(mode)
        assert torch.allclose(conv(x), ref(x))
    for k, v in ref.state_dict().items():
        assert torch.equal(conv.state_dict()[k], v), k


def test_two_ranks_step_equals_single_process_step(ddp_results):
    """Loss, every parameter gradient and the BN running statistics match the global-batch step."""
    _, ranks = ddp_results
    for r, out in enumerate(ranks):
        assert torch.equal(out["gathered"], torch.tensor([[1.0] * 3] * 2 + [[2.0] * 3] * 2))
        # d/dx of sum over both ranks' losses: rows 2r, 2r+1 of the weights, times the 2 ranks
        assert torch.equal(out["gather_grad"], 2 * torch.tensor([[2 * r + 1.0] * 3, [2 * r + 2.0] * 3]))
    ref = _one_step(_unlabeled(), Stage1Config(**CFG), np.arange(8))
    for out in ranks:
        step = out["step"]
        assert step["loss"] == pytest.approx(ref["loss"], rel=1e-5)
        _assert_grads_close(step["grads"], ref["grads"])
        for k, v in ref["buffers"].items():
            assert torch.allclose(step["buffers"][k].double(), v.double(), rtol=1e-5, atol=1e-6), k
    # DDP leaves the same gradients on every rank
    for k, v in ranks[0]["step"]["grads"].items():
        assert torch.equal(v, ranks[1]["step"]["grads"][k]), k


def test_two_ranks_pretrain_resumes_and_equals_single_process(ddp_results, tmp_path):
    tmp, ranks = ddp_results
    for out in ranks:
        assert "'batch_size'" in out["batch_error"] and "2" in out["batch_error"]
    assert ranks[0]["stopped"] == "callback" and "rank 0" in ranks[1]["stopped"]
    assert ranks[0]["seen"] == [1, 2] and ranks[1]["seen"] == []  # on_epoch runs on rank 0 only
    assert sorted(os.listdir(os.path.join(tmp, "run0"))) == ["encoders.pt", "stage1_last.pt"]
    assert os.listdir(os.path.join(tmp, "run1")) == []  # rank 1 writes nothing
    single = pretrain(_unlabeled(), Stage1Config(**CFG), str(tmp_path), progress=False)
    want = [h["loss"] for h in single["history"]]
    for out in ranks:
        assert out["epochs_run"] == 2
        assert out["history"] == pytest.approx(want, rel=1e-5)
        _assert_state_close(out["state"], single["model"].state_dict())
    assert ranks[0]["history"] == ranks[1]["history"]


def test_torchrun_entry_point_writes_encoders_like_one_process(tmp_path):
    data = str(tmp_path / "syn")
    _dataset().save(data)
    cfg = tmp_path / "s1.yaml"
    cfg.write_text("".join("{}: {}\n".format(k, list(v) if isinstance(v, tuple) else v)
                           for k, v in dict(CFG, epochs=2).items()))
    args = ["--dataset", data + ".npz", "--config", str(cfg), "--labels-per-class", "4", "--no-progress"]
    from cloud.ddp_pretrain import main

    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
                           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                           "-m", "cloud.ddp_pretrain"] + args + ["--out", str(tmp_path / "two")],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert proc.stdout.count("stage 1 on 2 process(es) (gloo)") == 1  # rank 0 alone prints
    names = set(os.listdir(str(tmp_path / "two")))
    assert {"encoders.pt", "prepared.json", "stage1_config.yaml", "stage1_last.pt", "manifest.json",
            "edge_data", "quality.json"} <= names and any(n.endswith(".onnx") for n in names)
    assert set(os.listdir(str(tmp_path / "one"))) == names  # one process or two: the same version
    # the DDP output is a version like any other: edge-agent finetune takes it
    from edge.cli import main as edge_main
    assert edge_main(["finetune", "--model", str(tmp_path / "two"), "--labels", str(tmp_path / "two" / "edge_data"),
                      "--out", str(tmp_path / "ft"), "--epochs", "2", "--no-progress", "--device", "cpu"]) == 0
    assert (tmp_path / "ft" / "finetuned.pt").exists()
    one = load_encoder_bundle(str(tmp_path / "one" / "encoders.pt"))
    two = load_encoder_bundle(str(tmp_path / "two" / "encoders.pt"))
    for ea, eb in zip(one, two):
        _assert_state_close(eb.state_dict(), ea.state_dict())
    h1 = torch.load(str(tmp_path / "one" / "stage1_last.pt"))["history"]
    h2 = torch.load(str(tmp_path / "two" / "stage1_last.pt"))["history"]
    assert [h["loss"] for h in h2] == pytest.approx([h["loss"] for h in h1], rel=1e-5)
