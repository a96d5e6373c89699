"""On-device personalization: adapt a trained model to one user from that user's unlabeled windows.

Two levers, chosen and dosed on validation users (``python -m benchmarks.personalize``), never on the
users scored, because neither is a free win (on HAPT, full BatchNorm re-estimation lifted the two worst
test subjects by about 20 points and lowered most others):

* **BatchNorm statistics** (``bn_mix``): the training data's running mean and variance of every BN layer
  are moved towards the user's by ``bn_mix`` (0: unchanged, 1: AdaBN). The statistics of the user are
  measured with the model in eval mode except its BN layers (no dropout), as one pass over the windows.
* **Self-training** (``self_train_epochs``): the classifier (encoders frozen, their BN statistics
  fixed) is fine-tuned on the adapted model's confident predictions (top probability >= ``threshold``),
  each window seen through stage 2's augmentation, so predictions must hold across views.

``gate="confidence"`` keeps the adaptation only when the mean top-class probability on the user's
windows does not drop; otherwise the model comes back unchanged. Every step is deterministic given
``seed``; the input model is never modified.
"""
import copy
import logging
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.dataset import MultimodalDataset
from ..hparams import AdaptConfig
from .augment import augment
from .common import iterate_batches, seed_everything, to_tensors
from .stage2 import Stage2Config, predict

log = logging.getLogger(__name__)


def _bn_layers(model: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def user_bn_statistics(model: nn.Module, windows: MultimodalDataset, batch_size: int = 256) -> List[Dict[str, torch.Tensor]]:
    """Per BN layer (in ``model.modules()`` order) the mean and variance of its input over ``windows``."""
    probe = copy.deepcopy(model).eval()
    layers = _bn_layers(probe)
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over every batch
        bn.train()
    device = next(probe.parameters()).device
    with torch.no_grad():
        for idx in iterate_batches(len(windows), batch_size, shuffle=False):
            probe(to_tensors(windows, idx, device))
    return [{"mean": bn.running_mean.clone(), "var": bn.running_var.clone()} for bn in layers]


def mix_bn(model: nn.Module, stats: List[Dict[str, torch.Tensor]], alpha: float) -> nn.Module:
    """A copy of ``model`` whose BN statistics are ``(1 - alpha) * its own + alpha * stats``."""
    out = copy.deepcopy(model)
    for bn, st in zip(_bn_layers(out), stats):
        bn.running_mean.mul_(1.0 - alpha).add_(alpha * st["mean"])
        bn.running_var.mul_(1.0 - alpha).add_(alpha * st["var"])
    return out


def mean_confidence(model: nn.Module, windows: MultimodalDataset) -> float:
    return float(predict(model, windows)["proba"].max(1).mean())


def self_train(model: nn.Module, windows: MultimodalDataset, config: AdaptConfig,
               augment_config: Optional[Stage2Config] = None) -> Dict[str, Any]:
    """Fine-tune ``model``'s classifier in place on its confident predictions over ``windows``; returns
    ``{"pseudo_labeled": n, "classes": k}`` (nothing is trained when no window is confident enough)."""
    aug = augment_config or Stage2Config()
    proba = predict(model, windows)["proba"]
    keep = np.flatnonzero(proba.max(1) >= config.threshold)
    if len(keep) == 0:
        return {"pseudo_labeled": 0, "classes": 0}
    targets = torch.from_numpy(proba[keep].argmax(1)).long()
    device = next(model.parameters()).device
    params = list(model.classifier.parameters())
    opt = torch.optim.Adam(params, lr=config.lr)
    rng = np.random.RandomState(config.seed)
    for _ in range(config.self_train_epochs):
        model.eval()  # encoders: BN statistics and dropout fixed
        model.classifier.train()
        for b in iterate_batches(len(keep), config.batch_size, shuffle=True, rng=rng):
            xs = augment(to_tensors(windows, keep[b], device), aug.jitter, aug.scale)
            with torch.no_grad():
                hs = [enc(x) for enc, x in zip(model.encoders, xs)]
            logits, _ = model.classifier(hs)
            loss = F.cross_entropy(logits, targets[b].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return {"pseudo_labeled": int(len(keep)), "classes": int(len(np.unique(targets.numpy())))}


def adapt(model: nn.Module, windows: MultimodalDataset, config: AdaptConfig,
          augment_config: Optional[Stage2Config] = None) -> Dict[str, Any]:
    """The personalized model for the user whose unlabeled ``windows`` (normalized like training data)
    are given. Returns ``{"model", "adapted" (False: the model as it was), "reason", "confidence_before",
    "confidence_after", "pseudo_labeled"}``; ``model`` is always a copy."""
    config.check()
    seed_everything(config.seed)
    out = {"adapted": False, "pseudo_labeled": 0, "windows": len(windows)}  # type: Dict[str, Any]
    if len(windows) < config.min_windows or (config.bn_mix == 0 and config.self_train_epochs == 0):
        out.update(model=copy.deepcopy(model).eval(), reason="too few windows" if len(windows) < config.min_windows
                   else "nothing to adapt (bn_mix 0, no self-training)")
        return out
    before = mean_confidence(model, windows)
    new = mix_bn(model, user_bn_statistics(model, windows), config.bn_mix) if config.bn_mix > 0 else copy.deepcopy(model)
    if config.self_train_epochs > 0:
        out["pseudo_labeled"] = self_train(new, windows, config, augment_config)["pseudo_labeled"]
    after = mean_confidence(new, windows)
    out.update(confidence_before=before, confidence_after=after)
    if config.gate == "confidence" and after < before:
        out.update(model=copy.deepcopy(model).eval(), reason="confidence fell ({:.3f} -> {:.3f})".format(before, after))
        return out
    out.update(model=new.eval(), adapted=True, reason="adapted")
    return out


__all__ = ["AdaptConfig", "adapt", "mix_bn", "self_train", "user_bn_statistics"]
