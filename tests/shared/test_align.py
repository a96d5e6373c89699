import numpy as np
import pytest

from shared.data import make_synthetic
from shared.errors import ConfigError, DataError
from shared.retrieval import zero_shot
from shared.training.align import AlignConfig, embed, train_alignment


def _data(seed=0):
    ds = make_synthetic(num_subjects=6, windows_per_subject=40, num_classes=4, modalities=(("a", 64, 3),),
                        informativeness=(1.0,), seed=seed)
    x = (ds.x["a"] - ds.x["a"].mean((0, 1))) / ds.x["a"].std((0, 1))
    rng = np.random.RandomState(7)
    protos = rng.randn(4, 32)
    protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    text = protos[ds.labels] + 0.05 * rng.randn(len(ds), 32)  # several phrasings per class
    train, val = ds.subjects < 4, ds.subjects >= 4
    return x[train], text[train], x[val], text[val], ds.labels[val], protos


@pytest.mark.parametrize("kd", ["", "similarity_preserving", "attention_transfer"])
def test_alignment_learns_class_structure(kd):
    xt, tt, xv, tv, yv, protos = _data()
    cfg = AlignConfig(encoder="conv1d", encoder_config={"widths": [16, 16, 16], "out_steps": 4}, epochs=6,
                      batch_size=32, optimizer="adam", lr=3e-3, kd=kd, device="cpu")
    res = train_alignment(xt, tt, xv, tv, cfg)
    assert res["history"][-1]["train_loss"] < res["history"][0]["train_loss"]
    zs = zero_shot(embed(res["model"], xv), protos, yv, ["c0", "c1", "c2", "c3"])
    assert zs["accuracy"] > 0.6  # chance is 0.25
    assert res["val"]["imu2text"]["pool"] == len(xv)
    best = max(h["val_imu2text"]["MRR"] for h in res["history"])
    assert res["val"]["imu2text"]["MRR"] == pytest.approx(best)


def test_bad_inputs_are_named():
    xt, tt, xv, tv, _, _ = _data()
    with pytest.raises(DataError, match="train"):
        train_alignment(xt, tt[:-1], xv, tv, AlignConfig(encoder="conv1d", device="cpu"))
    with pytest.raises(ConfigError, match="optimizer"):
        train_alignment(xt, tt, xv, tv, AlignConfig(encoder="conv1d", optimizer="lion", device="cpu"))
