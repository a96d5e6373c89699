"""Cosmo stage 2: iterative fusion fine-tuning on few labels with quality-guided attention.

Truly alternating: ``t_iter`` epochs train the encoders with the classifier frozen (its parameters get
no gradient and it stays in eval mode), then ``t_iter`` epochs train the classifier with the encoders
frozen (likewise, so their BatchNorm statistics do not move either), and so on until ``epochs``.
Each part has its own optimizer and learning rate. The model kept is the one with the best validation
accuracy (ties: lower validation loss); the test split is only evaluated once, at the end.
"""
import copy
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.dataset import MultimodalDataset
from ..errors import DataError
from ..models.classifier import CosmoModel
from ..models.finetuned import ARCH_FIELDS, build_cosmo_model
from .augment import Augment, augment
from .common import iterate_batches, make_optimizer, pick_device, seed_everything, to_tensors
from ..metrics import accuracy_f1
from ..hparams import Stage2Config  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


def build_model(encoders: Sequence[nn.Module], modalities: Sequence[str], num_classes: int,
                quality: Optional[Sequence[float]], config: Stage2Config) -> CosmoModel:
    """The model stage 2 trains: ``shared.models.finetuned.build_cosmo_model`` with ``config``'s architecture."""
    return build_cosmo_model(encoders, modalities, num_classes, quality,
                             **{f: getattr(config, f) for f in ARCH_FIELDS})


def phase_of(epoch: int, config: Stage2Config) -> str:
    """Which part trains in ``epoch``: ``"classifier"``, ``"encoders"`` or ``"both"``."""
    if config.schedule == "joint":
        return "both"
    if config.schedule == "frozen":
        return "classifier"
    first, second = ("classifier", "encoders") if config.start_with == "classifier" else ("encoders", "classifier")
    return first if (epoch // config.t_iter) % 2 == 0 else second


def _set_trainable(module: nn.Module, on: bool) -> None:
    """Freeze (eval mode, no gradients) or unfreeze ``module``.

    A frozen module's GRUs stay in train mode: gradients still flow *through* a frozen classifier to the
    encoders, and cuDNN's RNN backward refuses eval mode. A one-layer GRU has no dropout, so its output
    is the same in both modes.
    """
    module.train(on)
    for p in module.parameters():
        p.requires_grad_(on)
    if not on:
        for sub in module.modules():
            if isinstance(sub, nn.RNNBase):
                sub.train(True)


def drop_modalities(xs: List[torch.Tensor], present: torch.Tensor) -> List[torch.Tensor]:
    """Zero the inputs of the modalities not ``present`` ``[B, M]`` (what serving does for a sensor that is off)."""
    return [x * present[:, j].to(x.dtype)[:, None, None] for j, x in enumerate(xs)]


def random_present(batch: int, modalities: int, p: float, rng: np.random.RandomState) -> np.ndarray:
    """``[B, M]`` bool: with probability ``p`` a window loses one modality chosen at random (never all)."""
    present = np.ones((batch, modalities), bool)
    if modalities > 1 and p > 0:
        rows = np.flatnonzero(rng.rand(batch) < p)
        present[rows, rng.randint(0, modalities, size=len(rows))] = False
    return present


@torch.no_grad()
def predict(model: CosmoModel, ds: MultimodalDataset, batch_size: int = 512,
            device: Optional[torch.device] = None, drop: Sequence[str] = ()) -> Dict[str, np.ndarray]:
    """Class probabilities ``[N, K]`` and attention weights ``beta [N, M]`` for every window; ``drop``:
    modalities treated as switched off (zeroed and masked)."""
    device = device or next(model.parameters()).device
    model.eval()
    probs, betas = [], []
    keep = torch.tensor([m not in drop for m in ds.modalities], device=device)
    for idx in iterate_batches(len(ds), batch_size, shuffle=False):
        xs = to_tensors(ds, idx, device)
        if drop:
            present = keep[None, :].expand(len(idx), -1)
            logits, beta = model(drop_modalities(xs, present), present)
        else:
            logits, beta = model(xs)
        probs.append(F.softmax(logits, 1).cpu().numpy())
        betas.append(beta.cpu().numpy())
    return {"proba": np.concatenate(probs), "beta": np.concatenate(betas)}


def evaluate(model: CosmoModel, ds: MultimodalDataset, device: Optional[torch.device] = None,
             drop: Sequence[str] = ()) -> Dict[str, Any]:
    out = predict(model, ds, device=device, drop=drop)
    m = accuracy_f1(ds.labels, out["proba"].argmax(1), ds.num_classes)
    p = np.clip(out["proba"][np.arange(len(ds)), ds.labels], 1e-12, 1.0)
    m["loss"] = float(-np.log(p).mean())
    m["beta_mean"] = out["beta"].mean(0).tolist()
    return m


def accuracy_without(model: CosmoModel, ds: MultimodalDataset, device: Optional[torch.device] = None
                     ) -> Dict[str, float]:
    """Accuracy on ``ds`` with each modality switched off in turn (zeroed and masked, as serving does)."""
    return {m: float(evaluate(model, ds, device, drop=(m,))["accuracy"]) for m in ds.modalities}


class DistributionAlignment:
    """Distribution alignment of pseudo-labels (``Stage2Config.align_distribution``; ReMixMatch, Berthelot et
    al. 2020): class probabilities on unlabeled windows are scaled by ``prior / running`` and renormalized,
    where ``prior`` is the labeled windows' class frequency (add-one smoothed: a class with no label keeps a
    share) and ``running`` the mean prediction over about the last ``1 / (1 - momentum)`` unlabeled batches."""

    def __init__(self, labels: np.ndarray, num_classes: int, momentum: float = 0.99,
                 device: Optional[torch.device] = None) -> None:
        counts = np.bincount(labels, minlength=num_classes).astype(np.float32) + 1.0
        self.prior = torch.from_numpy(counts / counts.sum()).to(device)
        self.running = torch.full((num_classes,), 1.0 / num_classes, device=device)
        self.momentum = momentum

    @torch.no_grad()
    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        self.running.mul_(self.momentum).add_(probs.mean(0), alpha=1.0 - self.momentum)
        aligned = probs * (self.prior / self.running.clamp_min(1e-6))
        return aligned / aligned.sum(1, keepdim=True)


def _with_unlabeled(model: nn.Module, xs: List[torch.Tensor], present: Optional[torch.Tensor], y: torch.Tensor,
                    xu_all: List[torch.Tensor], strong: Augment, config: Stage2Config,
                    rng: np.random.RandomState, align: Optional[DistributionAlignment] = None) -> Any:
    """The loss of one step with unlabeled windows (FixMatch-style), and the fraction pseudo-labeled.

    Labeled windows ``xs``, a weak and a strong view of ``config.unlabeled_batch`` unlabeled windows go
    through the model in one batch (BatchNorm sees them together); the weak view's confident predictions
    (no gradient) are the strong view's targets (after ``align``, when given). The strong view loses
    modalities as labeled windows do, so the fused model's confident answers teach the model with a sensor
    missing.
    """
    n = len(y)
    uidx = rng.randint(0, len(xu_all[0]), size=config.unlabeled_batch)
    xu = [x[uidx] for x in xu_all]
    weak = augment(xu, config.jitter, config.scale)
    hard = strong(xu)
    p_u = torch.ones(len(uidx), len(xs), dtype=torch.bool, device=y.device)
    p_s = p_u
    if config.modality_dropout > 0:
        p_s = torch.from_numpy(random_present(len(uidx), len(xs), config.modality_dropout, rng)).to(y.device)
        hard = drop_modalities(hard, p_s)
    p_l = present if present is not None else torch.ones(n, len(xs), dtype=torch.bool, device=y.device)
    logits, _ = model([torch.cat(parts) for parts in zip(xs, weak, hard)], torch.cat([p_l, p_u, p_s]))
    k = len(uidx)
    with torch.no_grad():
        probs = F.softmax(logits[n:n + k], 1)
        conf, target = (align(probs) if align is not None else probs).max(1)
        keep = (conf >= config.threshold).to(logits.dtype)
    loss_u = (F.cross_entropy(logits[n + k:], target, reduction="none") * keep).mean()
    return F.cross_entropy(logits[:n], y) + config.unlabeled_weight * loss_u, float(keep.mean())


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics (``Stage2Config.ema``):
    ``model`` is the averaged copy; ``update`` follows the live model after each optimizer step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.steps = 0

    @torch.no_grad()
    def update(self, live: nn.Module) -> None:
        d = min(self.decay, (1.0 + self.steps) / (10.0 + self.steps))
        self.steps += 1
        for avg, cur in zip(self.model.state_dict().values(), live.state_dict().values()):
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(cur.detach(), alpha=1.0 - d)
            else:
                avg.copy_(cur)


def finetune(encoders: Sequence[nn.Module], labeled: MultimodalDataset, val: MultimodalDataset,
             config: Stage2Config, quality: Optional[Sequence[float]] = None, progress: bool = True,
             on_epoch: Optional[Callable[[Dict[str, Any], CosmoModel], None]] = None,
             model: Optional[nn.Module] = None, unlabeled: Optional[MultimodalDataset] = None) -> Dict[str, Any]:
    """Train the Cosmo classifier (and fine-tune ``encoders``) on ``labeled``; select on ``val``.

    ``encoders`` are modified in place; pass fresh ones (``build_encoders``) for the no-pretraining
    ablation. ``on_epoch(row, model)`` is called after each epoch with its history row.
    ``model``: a prebuilt model to train instead (e.g. a baseline from ``shared.baselines``): any module
    with ``.encoders``, ``.classifier`` and ``forward(xs, present=None) -> (logits, beta)``; when given,
    ``encoders`` and ``quality`` are ignored and ``build_model`` is not called.
    ``unlabeled``: windows without labels (their labels are ignored) for the pseudo-label consistency of
    ``config.unlabeled_weight`` (``_with_unlabeled``); unused while that weight is 0.
    Returns ``{"model": CosmoModel (best on val), "history": [...], "best_epoch": int, "val": metrics,
    "seconds": float}``.
    """
    from tqdm import tqdm

    config.check()
    for name, d in (("labeled", labeled), ("val", val)):
        if len(d) == 0 or (d.labels < 0).any():
            raise DataError("stage 2: {} split must be non-empty and fully labeled".format(name))
    seed_everything(config.seed)
    device = pick_device(config.device)
    if model is None:
        model = build_model(encoders, labeled.modalities, labeled.num_classes, quality, config)
    model = model.to(device)
    enc_params = list(model.encoders.parameters())
    clf_params = list(model.classifier.parameters())

    opt_enc, opt_clf = [make_optimizer(config.optimizer, ps, lr, config.weight_decay, config.momentum)
                        for ps, lr in ((enc_params, config.encoder_lr), (clf_params, config.classifier_lr))]
    xs_all = to_tensors(labeled, device=device)
    y_all = torch.from_numpy(labeled.labels).to(device)
    rng = np.random.RandomState(config.seed)
    use_u = unlabeled is not None and len(unlabeled) > 0 and config.unlabeled_weight > 0
    xu_all = to_tensors(unlabeled, device=device) if use_u else None
    align = DistributionAlignment(labeled.labels, labeled.num_classes, device=device) \
        if use_u and config.align_distribution else None
    strong = Augment(jitter=2 * config.jitter, scale=2 * config.scale, time_warp=config.strong_time_warp,
                     mask=config.strong_mask)
    avg = WeightAverage(model, config.ema) if config.ema > 0 else None
    judged = avg.model if avg is not None else model  # the weights scored on validation and kept
    best = {"acc": -1.0, "loss": float("inf"), "epoch": -1, "state": None}  # type: Dict[str, Any]
    history = []
    t0 = time.time()
    bar = tqdm(range(config.epochs), desc="stage 2", unit="epoch", disable=not progress, dynamic_ncols=True)
    for epoch in bar:
        phase = phase_of(epoch, config)
        _set_trainable(model.encoders, phase in ("encoders", "both"))
        _set_trainable(model.classifier, phase in ("classifier", "both"))
        opts = {"encoders": [opt_enc], "classifier": [opt_clf], "both": [opt_enc, opt_clf]}[phase]
        losses, used = [], []
        for idx in iterate_batches(len(labeled), config.batch_size, True, rng):
            if len(idx) < 2 and phase in ("encoders", "both"):
                continue  # BatchNorm cannot train on a single window
            xs = augment([x[idx] for x in xs_all], config.jitter, config.scale)
            present = None
            if config.modality_dropout > 0:
                present = torch.from_numpy(random_present(len(idx), len(xs), config.modality_dropout, rng)).to(device)
                xs = drop_modalities(xs, present)
            if use_u:
                assert xu_all is not None
                loss, frac = _with_unlabeled(model, xs, present, y_all[idx], xu_all, strong, config, rng, align)
                used.append(frac)
            else:
                logits, _ = model(xs, present)
                loss = F.cross_entropy(logits, y_all[idx])
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()
            if avg is not None:
                avg.update(model)
            losses.append(float(loss.detach()))
        vm = evaluate(judged, val, device)
        history.append({"epoch": epoch, "phase": phase, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                        "val_accuracy": vm["accuracy"], "val_loss": vm["loss"], "val_macro_f1": vm["macro_f1"]})
        if used:
            history[-1]["pseudo_labeled"] = float(np.mean(used))
        score = vm["accuracy"]
        if config.selection == "subsets" and len(val.modalities) > 1:
            score = float(np.mean([score] + list(accuracy_without(judged, val, device).values())))
            history[-1]["val_accuracy_subsets"] = score
        if score > best["acc"] or (score == best["acc"] and vm["loss"] < best["loss"]):
            best = {"acc": score, "loss": vm["loss"], "epoch": epoch, "state": copy.deepcopy(judged.state_dict())}
        if on_epoch is not None:
            on_epoch(history[-1], model)
        bar.set_postfix(phase=phase[:3], val="{:.3f}".format(score), best="{:.3f}".format(best["acc"]))
    model.load_state_dict(best["state"])
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return {"model": model, "history": history, "best_epoch": best["epoch"],
            "val": evaluate(model, val, device), "seconds": time.time() - t0}
