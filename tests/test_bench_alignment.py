"""The alignment benchmark (benchmarks/alignment.py) as a smoke run on synthetic windows with a hash
text encoder (``--synthetic``: HAPT + MiniLM would not fit the time budget of a unit test), and the
triplet objectives of ``shared.training.align``."""
import json
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

from shared.errors import ConfigError  # noqa: E402
from shared.training.align import (AlignConfig, AlignModel, TripletAlignmentLoss,  # noqa: E402
                                   _different_text_negatives, build_alignment_loss, train_alignment)
from shared.models.encoders import build_encoder  # noqa: E402


def test_quick_synthetic_run_writes_reports(tmp_path):
    import alignment

    torch.set_num_threads(1)
    out = str(tmp_path / "al")
    res = alignment.main(["--out", out, "--quick", "--synthetic"])
    for name in ("report.md", "results.json", "alignment.png"):
        assert os.path.exists(os.path.join(out, name)), name
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    assert len(saved["runs"]) == len(res["runs"]) >= 8
    objectives = {r["objective"] for r in saved["runs"]}
    assert objectives == {"info_nce", "triplet", "triplet_cyclic"}
    for r in saved["runs"]:
        for d in ("imu2text", "text2imu"):
            assert r[d]["pool"] > 1
            for k in ("R@1", "R@10", "R@50", "MRR"):
                assert 0.0 <= r[d][k] <= 1.0
        assert 0.0 <= r["class_map"] <= 1.0
        assert 0.0 <= r["zero_shot"]["accuracy"] <= 1.0 and 0.0 <= r["zero_shot"]["macro_f1"] <= 1.0
    assert len(saved["seed_runs"]) == 3 and all(r["seed"] == 1 for r in saved["seed_runs"])
    assert saved["kd_magnitudes"]["info_nce"] > 0
    report = open(os.path.join(out, "report.md")).read()
    assert "Winner" in report and "alignment.png" in report
    # resume: every run is cached, nothing is retrained
    files = sorted(os.listdir(os.path.join(out, "runs")))
    again = alignment.main(["--out", out, "--quick", "--synthetic"])
    assert sorted(os.listdir(os.path.join(out, "runs"))) == files
    assert [r["seconds"] for r in again["runs"]] == [r["seconds"] for r in saved["runs"]]


def _tiny(seed=0):
    rng = np.random.RandomState(seed)
    protos = rng.randn(4, 16)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    y = np.arange(64) % 4
    x = (rng.randn(64, 32, 3) + y[:, None, None] * 0.5).astype(np.float32)
    return x, protos[y].astype(np.float32), y


@pytest.mark.parametrize("objective", ["triplet", "triplet_cyclic"])
def test_triplet_objectives_train_and_decrease(objective):
    torch.set_num_threads(1)
    x, t, _ = _tiny()
    cfg = AlignConfig(encoder="conv1d", encoder_config={"widths": [8, 8], "out_steps": 2}, epochs=3, batch_size=16,
                      optimizer="adam", lr=3e-3, objective=objective, device="cpu")
    res = train_alignment(x[:48], t[:48], x[48:], t[48:], cfg)
    assert "train_triplet" in res["history"][0]
    assert res["val"]["imu2text"]["pool"] == 16
    # a few steps on one tiny batch: the loss goes down
    torch.manual_seed(0)
    model = AlignModel(build_encoder("conv1d", window=32, in_channels=3, widths=[8, 8], out_steps=2,
                                       dropout=0.0), 16)
    loss_fn = build_alignment_loss(cfg)
    opt = torch.optim.Adam(list(model.parameters()) + list(loss_fn.parameters()), lr=3e-3)
    xb, tb = torch.from_numpy(x[:16]), torch.from_numpy(t[:16])
    losses = []
    for _ in range(15):
        out = loss_fn(model(xb), tb)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < losses[0]


def test_given_negative_is_another_text_and_seeded():
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    a = _different_text_negatives(t, torch.Generator().manual_seed(0))
    b = _different_text_negatives(t, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    for i, j in enumerate(a.tolist()):
        assert j != i and not torch.equal(t[i], t[j])  # a different narration when one exists
    same = torch.ones(3, 2)
    idx = _different_text_negatives(same, torch.Generator().manual_seed(1))
    assert all(j != i for i, j in enumerate(idx.tolist()))  # falls back to any other row
    loss = TripletAlignmentLoss(negative="given", kd="similarity_preserving")
    out = loss(torch.nn.functional.normalize(torch.randn(4, 2), dim=1), t)
    assert set(out) == {"triplet", "kd", "loss"} and float(out["loss"]) >= 0


def test_check_rejects_unknown_objective():
    with pytest.raises(ConfigError, match="objective"):
        AlignConfig(objective="hinge").check()
    x, t, _ = _tiny()
    with pytest.raises(ConfigError, match="objective"):
        train_alignment(x, t, x, t, AlignConfig(encoder="conv1d", objective="triplets", device="cpu"))
