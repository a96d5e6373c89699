from dataclasses import replace

import numpy as np
import pytest
import torch

from shared.data import make_synthetic
from shared.errors import ConfigError, DataError
from shared.experiment import prepare
from shared.training import (Stage1Config, Stage2Config, build_encoders, config_from_dict, finetune,
                             load_encoder_bundle, phase_of, pretrain)
from shared.metrics import accuracy_f1

S1 = dict(epochs=3, batch_size=32, encoder_widths=(8, 8, 8), out_steps=4, proj_hidden=32, proj_dim=16,
          num_views=4, device="cpu")


@pytest.fixture(scope="module")
def prep():
    ds = make_synthetic(num_subjects=6, windows_per_subject=40, num_classes=3,
                        modalities=(("a", 32, 3), ("b", 32, 2)), informativeness=(1.0, 0.6), seed=1)
    return prepare(ds, labels_per_class=4, seed=0, val_fraction=0.2, test_fraction=0.2)


def _encoders(ds):
    return build_encoders(list(ds.specs.values()), [a.shape[1] for a in ds.x.values()], (8, 8, 8), 0.0, 4)


def test_prepare_keeps_labeled_windows_out_of_pretraining(prep):
    assert len(prep.labeled) == 12 and (prep.unlabeled.labels == -1).all()
    labeled_rows = {a.tobytes() for a in prep.labeled.x["a"]}
    assert not labeled_rows & {a.tobytes() for a in prep.unlabeled.x["a"]}
    assert len(prep.labeled) + len(prep.unlabeled) == len(prep.split.train)
    stats = prep.norm(prep.split.train).x["a"].reshape(-1, 3)
    assert np.allclose(stats.mean(0), 0, atol=1e-4) and np.allclose(stats.std(0), 1, atol=1e-3)


class _Stop(Exception):
    pass


def test_stage1_resume_continues_where_it_stopped(prep, tmp_path):
    unl = prep.norm(prep.unlabeled)
    cfg = Stage1Config(**S1)
    full = pretrain(unl, cfg, str(tmp_path / "full"), progress=False)

    def crash(row):
        if row["epoch"] == 1:
            raise _Stop()
    with pytest.raises(_Stop):
        pretrain(unl, cfg, str(tmp_path / "part"), progress=False, on_epoch=crash)
    seen = []
    resumed = pretrain(unl, cfg, str(tmp_path / "part"), progress=False, on_epoch=seen.append)
    assert [r["epoch"] for r in seen] == [2]
    assert resumed["epochs_run"] == 1
    assert [h["loss"] for h in resumed["history"]] == pytest.approx([h["loss"] for h in full["history"]], rel=1e-5)
    a = load_encoder_bundle(str(tmp_path / "full" / "encoders.pt"))
    b = load_encoder_bundle(str(tmp_path / "part" / "encoders.pt"))
    for ea, eb in zip(a, b):
        for (k, va), vb in zip(ea.state_dict().items(), eb.state_dict().values()):
            assert torch.allclose(va.float(), vb.float(), atol=1e-5), k


def test_stage1_lowers_its_loss(prep, tmp_path):
    res = pretrain(prep.norm(prep.unlabeled), Stage1Config(**dict(S1, epochs=6)), str(tmp_path), progress=False)
    losses = [h["loss"] for h in res["history"]]
    assert losses[-1] < losses[0]


def test_stage1_predictive_term_is_added_with_its_weight(prep, tmp_path):
    from shared.losses import ContrastiveFusionLoss, FusionViews
    from shared.training.augment import Augment
    from shared.training.stage1 import Stage1Model, Stage1Views, stage1_loss
    unl = prep.norm(prep.unlabeled)
    torch.manual_seed(0)
    model = Stage1Model(_encoders(unl), 16, 32, predictive_steps=2).eval()  # no dropout: deterministic
    net = Stage1Views(model, FusionViews(4, "grid"), 1, Augment())
    xs = [torch.from_numpy(a[:16]) for a in unl.x.values()]
    crit = ContrastiveFusionLoss(0.07)
    views, aux = net(xs)
    assert float(aux) > 0 and len(model.predictive) == 2
    assert float(stage1_loss(net, xs, crit, 0.5)) == pytest.approx(float(crit(views) + 0.5 * aux), rel=1e-5)
    assert float(stage1_loss(net, xs, crit)) == pytest.approx(float(crit(views)), rel=1e-5)
    # pretraining with the term: it falls, the shipped bundle holds the encoders alone
    res = pretrain(unl, Stage1Config(**dict(S1, epochs=4, predictive=1.0, predictive_steps=2)), str(tmp_path),
                   progress=False)
    assert res["history"][-1]["loss"] < res["history"][0]["loss"]
    encs = load_encoder_bundle(str(tmp_path / "encoders.pt"))
    assert len(encs) == 2 and not any("predictive" in k for e in encs for k in e.state_dict())


def test_stage1_config_errors_name_the_field(tmp_path, prep):
    for kw, field in (({"predictive": -1.0}, "predictive"), ({"predictive_steps": 0}, "predictive_steps")):
        with pytest.raises(ConfigError, match=field):
            config_from_dict(Stage1Config, kw)
    with pytest.raises(ConfigError, match="'fusion'"):
        config_from_dict(Stage1Config, {"fusion": "uniform"})
    with pytest.raises(ConfigError, match="epoch"):
        config_from_dict(Stage1Config, {"epoch": 3})
    with pytest.raises(ConfigError, match="'lr'"):
        config_from_dict(Stage1Config, {"lr": "fast"})
    with pytest.raises(DataError, match="modalities"):
        pretrain(prep.norm(prep.unlabeled).select_modalities(["a"]), Stage1Config(**S1), str(tmp_path),
                 progress=False)


def test_phase_schedule_alternates():
    cfg = Stage2Config(epochs=20, t_iter=3, start_with="encoders")
    assert [phase_of(e, cfg) for e in range(8)] == ["encoders"] * 3 + ["classifier"] * 3 + ["encoders"] * 2
    assert {phase_of(e, Stage2Config(schedule="joint")) for e in range(6)} == {"both"}


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_stage2_truly_alternates(prep):
    lab, val = prep.norm(prep.labeled), prep.norm(prep.split.val)
    cfg = Stage2Config(epochs=4, t_iter=2, start_with="classifier", batch_size=4, device="cpu",
                       encoder_lr=1e-2, classifier_lr=1e-2)
    snaps = []

    def record(row, model):
        snaps.append((row["phase"], _snapshot(model.encoders), _snapshot(model.classifier)))
    encs = _encoders(lab)
    enc0 = [_snapshot(e) for e in encs]
    finetune(encs, lab, val, cfg, progress=False, on_epoch=record)
    assert [p for p, _, _ in snaps] == ["classifier", "classifier", "encoders", "encoders"]

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)
    # classifier epochs: encoders (weights and BatchNorm statistics) untouched
    start = {"{}.{}".format(i, k): v for i, sd in enumerate(enc0) for k, v in sd.items()}
    assert same(start, snaps[0][1]) and same(snaps[0][1], snaps[1][1])
    assert not same(snaps[0][2], snaps[1][2])
    # encoder epochs: classifier untouched, encoders move
    assert same(snaps[1][2], snaps[2][2]) and same(snaps[2][2], snaps[3][2])
    assert not same(snaps[1][1], snaps[2][1])


def test_stage2_learns_and_selects_on_validation(prep):
    lab, val, test = prep.norm(prep.labeled), prep.norm(prep.split.val), prep.norm(prep.split.test)
    cfg = Stage2Config(epochs=30, t_iter=5, batch_size=4, device="cpu", encoder_lr=1e-3, classifier_lr=3e-3,
                       fusion="concat")
    res = finetune(_encoders(lab), lab, val, cfg, quality=[0.7, 0.3], progress=False)
    best = max(h["val_accuracy"] for h in res["history"])
    assert res["val"]["accuracy"] == pytest.approx(best)
    assert res["history"][res["best_epoch"]]["val_accuracy"] == pytest.approx(best)
    from shared.training import evaluate
    assert evaluate(res["model"], test)["accuracy"] > 0.6  # 3 classes: chance is 1/3


def test_stage2_rejects_unlabeled_input(prep):
    with pytest.raises(DataError, match="labeled"):
        finetune(_encoders(prep.labeled), prep.norm(prep.unlabeled), prep.norm(prep.split.val),
                 Stage2Config(epochs=1), progress=False)


def test_accuracy_f1_matches_hand_computation():
    m = accuracy_f1(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), 3)
    # per class F1: c0 p=1/2 r=1/2 -> .5; c1 p=2/3 r=1 -> .8; c2 p=0 r=0 -> 0
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_stage2_unlabeled_weight_zero_ignores_the_unlabeled_windows(prep):
    lab, val = prep.norm(prep.labeled), prep.norm(prep.split.val)
    cfg = Stage2Config(epochs=3, t_iter=1, batch_size=4, device="cpu")
    torch.manual_seed(0)
    a = finetune(_encoders(lab), lab, val, cfg, progress=False)
    torch.manual_seed(0)
    b = finetune(_encoders(lab), lab, val, cfg, progress=False, unlabeled=prep.norm(prep.unlabeled))
    assert [h["val_loss"] for h in a["history"]] == [h["val_loss"] for h in b["history"]]
    assert all("pseudo_labeled" not in h for h in b["history"])


def test_stage2_pseudo_labels_come_from_confident_weak_views(prep):
    from shared.training.augment import Augment
    from shared.training.stage2 import _with_unlabeled
    lab, unl = prep.norm(prep.labeled), prep.norm(prep.unlabeled)
    model = finetune(_encoders(lab), lab, prep.norm(prep.split.val), Stage2Config(epochs=2, batch_size=4,
                                                                                   device="cpu"), progress=False)["model"]
    model.eval()  # BatchNorm frozen and no dropout: a window's logits do not depend on its batch
    xs = [torch.from_numpy(a[:4]) for a in lab.x.values()]
    y = torch.from_numpy(lab.labels[:4])
    xu = [torch.from_numpy(a) for a in unl.x.values()]
    rng = np.random.RandomState(0)
    none = Stage2Config(unlabeled_weight=1.0, threshold=1.0, unlabeled_batch=8, jitter=0.0, scale=0.0)
    loss, frac = _with_unlabeled(model, xs, None, y, xu, Augment(), none, rng)
    assert frac == 0.0  # no window is certain: the loss is the labeled windows' alone
    assert float(loss) == pytest.approx(float(torch.nn.functional.cross_entropy(model(xs)[0], y)), rel=1e-5)
    every = Stage2Config(unlabeled_weight=1.0, threshold=1e-6, unlabeled_batch=8, jitter=0.0, scale=0.0)
    loss_all, frac = _with_unlabeled(model, xs, None, y, xu, Augment(), every, np.random.RandomState(0))
    assert frac == 1.0
    # identity views: every window's target is its own argmax, so the extra loss is the mean -log(max p)
    uidx = np.random.RandomState(0).randint(0, len(unl), size=8)
    p = torch.softmax(model([x[uidx] for x in xu])[0], 1).max(1)[0]
    assert float(loss_all - loss) == pytest.approx(float(-torch.log(p).mean()), rel=1e-4)


def test_stage2_with_unlabeled_windows_trains_and_reports_pseudo_labels(prep):
    lab, val, test = prep.norm(prep.labeled), prep.norm(prep.split.val), prep.norm(prep.split.test)
    cfg = Stage2Config(epochs=20, t_iter=5, batch_size=4, device="cpu", encoder_lr=1e-3, classifier_lr=3e-3,
                       unlabeled_weight=1.0, unlabeled_batch=16, threshold=0.6, modality_dropout=0.3)
    torch.manual_seed(0)
    res = finetune(_encoders(lab), lab, val, cfg, quality=[0.7, 0.3], progress=False,
                   unlabeled=prep.norm(prep.unlabeled))
    used = [h["pseudo_labeled"] for h in res["history"]]
    assert all(0.0 <= u <= 1.0 for u in used) and max(used) > 0
    from shared.training import evaluate
    assert evaluate(res["model"], test)["accuracy"] > 0.6


def test_stage2_unlabeled_config_errors_name_the_field():
    for kw, field in (({"unlabeled_weight": -1}, "unlabeled_weight"), ({"threshold": 0}, "threshold"),
                      ({"strong_mask": 0.95}, "strong_mask"), ({"unlabeled_batch": 0}, "unlabeled_batch"),
                      ({"ema": 1.0}, "ema"), ({"ema": -0.1}, "ema")):
        with pytest.raises(ConfigError, match=field):
            config_from_dict(Stage2Config, kw)


def test_weight_average_follows_the_live_weights_with_warm_up():
    from shared.training.stage2 import WeightAverage
    live = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    avg = WeightAverage(live, 0.9)
    w0 = live[0].weight.detach().clone()
    expect = w0.clone()
    for step in range(30):
        with torch.no_grad():
            live[0].weight.add_(1.0)
        live[1].num_batches_tracked += 1
        avg.update(live)
        d = min(0.9, (1.0 + step) / (10.0 + step))
        expect = d * expect + (1 - d) * live[0].weight.detach()
    assert torch.allclose(avg.model[0].weight, expect, atol=1e-5)
    assert not torch.allclose(avg.model[0].weight, live[0].weight)  # lags the live weights...
    assert 0 < float((live[0].weight - avg.model[0].weight).detach().mean()) < 10  # ...by about decay / (1 - decay) steps
    assert int(avg.model[1].num_batches_tracked) == 30  # integer buffers are copied, not averaged
    assert not any(p.requires_grad for p in avg.model.parameters())


def test_stage2_with_weight_average_keeps_the_averaged_model_it_scored(prep):
    lab, val = prep.norm(prep.labeled), prep.norm(prep.split.val)
    cfg = Stage2Config(epochs=6, t_iter=2, batch_size=4, device="cpu", ema=0.9, unlabeled_weight=1.0,
                       unlabeled_batch=8, threshold=0.6)
    torch.manual_seed(0)
    res = finetune(_encoders(lab), lab, val, cfg, progress=False, unlabeled=prep.norm(prep.unlabeled))
    torch.manual_seed(0)
    plain = finetune(_encoders(lab), lab, val, replace(cfg, ema=0.0), progress=False,
                     unlabeled=prep.norm(prep.unlabeled))
    best = res["history"][res["best_epoch"]]
    from shared.training import evaluate
    assert evaluate(res["model"], val)["accuracy"] == pytest.approx(best["val_accuracy"])
    assert evaluate(res["model"], val)["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    # the same training run (same pseudo-labels and steps), another model scored: the curves differ
    assert [h["val_loss"] for h in res["history"]] != [h["val_loss"] for h in plain["history"]]


def test_distribution_alignment_moves_pseudo_labels_off_an_over_predicted_class():
    from shared.training.stage2 import DistributionAlignment
    labels = np.array([0, 0, 1, 1, 2, 2])  # balanced labels: prior 1/3 each
    da = DistributionAlignment(labels, 3, momentum=0.5)
    assert torch.allclose(da.prior, torch.full((3,), 1 / 3))
    # a model that says "class 0" far too often: 0.55 vs 0.45 windows get a pseudo-label of class 0 ...
    probs = torch.tensor([[0.55, 0.45, 0.0], [0.9, 0.1, 0.0], [0.0, 0.1, 0.9]] * 4)
    for _ in range(20):  # ... until the running mean has seen it
        aligned = da(probs)
    assert torch.allclose(aligned.sum(1), torch.ones(len(probs)))
    assert da.running[0] > da.running[1] > 1 / 3 * 0.5
    # the borderline window flips to the under-predicted class; confident ones keep theirs
    assert aligned.argmax(1)[:3].tolist() == [1, 0, 2]


def test_distribution_alignment_is_the_identity_when_predictions_match_the_labels():
    from shared.training.stage2 import DistributionAlignment
    da = DistributionAlignment(np.array([0, 1, 1, 1]), 2, momentum=0.0)
    probs = torch.tensor([[1 / 3, 2 / 3], [1 / 3, 2 / 3]])  # mean prediction = the labeled prior (2/6, 4/6)
    assert torch.allclose(da(probs), probs, atol=1e-6)


def test_stage2_with_distribution_alignment_takes_its_pseudo_labels_from_the_aligned_probabilities(prep, monkeypatch):
    from shared.training import stage2
    seen = []

    class Recording(stage2.DistributionAlignment):
        def __call__(self, probs):
            out = super().__call__(probs)
            seen.append(out.argmax(1))
            return torch.roll(out, 1, dims=1)  # the targets must follow what alignment returns

    monkeypatch.setattr(stage2, "DistributionAlignment", Recording)
    lab, val = prep.norm(prep.labeled), prep.norm(prep.split.val)
    cfg = Stage2Config(epochs=2, t_iter=1, batch_size=4, device="cpu", unlabeled_weight=1.0, unlabeled_batch=8,
                       threshold=0.3, align_distribution=True)
    targets = []
    real_ce = stage2.F.cross_entropy
    monkeypatch.setattr(stage2.F, "cross_entropy", lambda logits, y, **kw: targets.append(y) or real_ce(logits, y, **kw))
    res = finetune(_encoders(lab), lab, val, cfg, progress=False, unlabeled=prep.norm(prep.unlabeled))
    assert seen and all(np.isfinite(h["train_loss"]) for h in res["history"])
    unl = [t for t in targets if len(t) == 8]  # the unlabeled batch's targets, in step order
    assert len(unl) == len(seen) and all(torch.equal(t, (a + 1) % 3) for t, a in zip(unl, seen))
    seen.clear()
    finetune(_encoders(lab), lab, val, replace(cfg, align_distribution=False), progress=False,
             unlabeled=prep.norm(prep.unlabeled))
    assert not seen
