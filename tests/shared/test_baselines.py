"""Baselines: shapes, gradients, training through stage2.finetune, contrastive pretraining losses."""
import pytest
import torch

from shared.baselines import (BASELINES, CMCConfig, CPCConfig, build_attnsense, build_deepsense,
                              build_single_modal, pretrain_cmc, pretrain_cpc, train_baseline)
from shared.data import make_synthetic
from shared.errors import ConfigError, DataError
from shared.experiment import prepare
from shared.training import Stage2Config, evaluate

TINY = {"single_modal": dict(widths=(8, 8, 8), out_steps=4, dropout=0.0),
        "deepsense": dict(intervals=4, widths=(8, 8), merge_widths=(8, 8), sensor_dim=16, dropout=0.0),
        "attnsense": dict(intervals=4, widths=(8, 8), sensor_dim=16, attn_dim=8, dropout=0.0)}
BUILD = {"single_modal": build_single_modal, "deepsense": build_deepsense, "attnsense": build_attnsense}
S2 = Stage2Config(epochs=15, batch_size=8, device="cpu", encoder_lr=3e-3, classifier_lr=3e-3, gru_hidden=16,
                  mlp_hidden=16, dropout=0.0)
PRE = dict(epochs=4, batch_size=16, encoder_widths=(8, 8, 8), out_steps=4, encoder_dropout=0.0, device="cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster than two on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data():
    ds = make_synthetic(num_subjects=6, windows_per_subject=30, num_classes=3,
                        modalities=(("a", 32, 3), ("b", 32, 2)), informativeness=(1.0, 0.6), seed=1)
    p = prepare(ds, labels_per_class=8, seed=0, val_fraction=0.2, test_fraction=0.2)
    return {"labeled": p.norm(p.labeled), "val": p.norm(p.split.val), "test": p.norm(p.split.test),
            "unlabeled": p.norm(p.unlabeled)}


def test_registry_names_and_kinds():
    assert set(BASELINES) == {"single_modal", "deepsense", "attnsense", "cmc", "cpc"}
    assert {n for n, b in BASELINES.items() if b.kind == "supervised"} == {"single_modal", "deepsense", "attnsense"}
    assert all(b.pretrain is not None for b in BASELINES.values() if b.kind == "pretrain")


@pytest.mark.parametrize("name", ["single_modal", "deepsense", "attnsense"])
def test_supervised_forward_backward_shapes(data, name):
    torch.manual_seed(0)
    lab = data["labeled"]
    kw = dict(TINY[name], modality="b") if name == "single_modal" else TINY[name]
    model = BUILD[name](lab, S2, **kw)
    assert isinstance(model.encoders, torch.nn.ModuleList) and isinstance(model.classifier, torch.nn.Module)
    assert len(model.encoders) == (1 if name == "single_modal" else 2)
    xs = [torch.from_numpy(a[:5]) for a in lab.x.values()]
    logits, beta = model(xs)
    assert logits.shape == (5, 3) and beta.shape == (5, 2)
    assert torch.allclose(beta.sum(1), torch.ones(5))
    if name == "single_modal":
        assert torch.equal(beta, torch.tensor([[0.0, 1.0]] * 5))
    logits.sum().backward()
    for part in (model.encoders, model.classifier):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    if name != "single_modal":  # a missing modality gets no weight
        model.eval()
        present = torch.tensor([[True, False]] * 5)
        _, beta = model(xs, present)
        assert torch.all(beta[:, 1] == 0) and torch.allclose(beta[:, 0], torch.ones(5))


@pytest.mark.parametrize("name", ["single_modal", "deepsense", "attnsense"])
def test_supervised_baselines_learn_with_finetune(data, name):
    res = train_baseline(name, data["labeled"], data["val"], S2, **TINY[name])
    assert res["baseline"] == name and res["pretrain_history"] == []
    assert {h["phase"] for h in res["history"]} == {"both"}  # joint schedule
    best = max(h["val_accuracy"] for h in res["history"])
    assert res["val"]["accuracy"] == pytest.approx(best)
    assert evaluate(res["model"], data["test"])["accuracy"] > 0.55  # 3 classes: chance is 1/3


@pytest.mark.parametrize("pretrain,cfg", [(pretrain_cmc, CMCConfig(proj_dim=16, proj_hidden=32, **dict(PRE, epochs=1))),
                                         (pretrain_cpc, CPCConfig(gru_hidden=16, k_steps=2, **dict(PRE, epochs=1)))])
def test_pretrain_returns_per_modality_encoders(data, pretrain, cfg):
    rows = []
    encs = pretrain(data["unlabeled"], cfg, on_epoch=rows.append)
    assert len(encs) == 2 and all(e.out_steps == 4 for e in encs)
    assert [r["epoch"] for r in rows] == [0]
    x = torch.from_numpy(data["unlabeled"].x["b"][:3])
    assert encs[1].eval()(x).shape == (3, 4, 8)


@pytest.mark.parametrize("name,extra", [("cmc", dict(proj_dim=16, proj_hidden=32)),
                                        ("cpc", dict(gru_hidden=16, k_steps=2))])
def test_pretrained_baselines_lower_their_loss_and_learn(data, name, extra):
    res = train_baseline(name, data["labeled"], data["val"], S2, unlabeled=data["unlabeled"],
                         pretrain_config=dict(PRE, **extra))
    losses = [h["loss"] for h in res["pretrain_history"]]
    assert len(losses) == PRE["epochs"] and losses[-1] < losses[0]  # the contrastive loss goes down
    assert type(res["model"]).__name__ == "CosmoModel"
    assert evaluate(res["model"], data["test"])["accuracy"] > 0.55


def test_train_baseline_errors(data):
    with pytest.raises(ConfigError, match="unknown baseline"):
        train_baseline("nope", data["labeled"], data["val"], S2)
    with pytest.raises(DataError, match="unlabeled"):
        train_baseline("cmc", data["labeled"], data["val"], S2)
    with pytest.raises(ConfigError, match="epochs"):
        train_baseline("cpc", data["labeled"], data["val"], S2, unlabeled=data["unlabeled"],
                       pretrain_config={"epochs": 0})
