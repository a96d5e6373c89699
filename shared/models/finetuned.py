"""The fine-tuned Cosmo model as a file format: built from the encoder bundle and ``finetuned.pt``
without any training code, so the edge's torch fallback (a device without ONNX Runtime) and the exporter
read a model the way they read the encoders (``shared.models.bundle``)."""
import os
from typing import Any, Optional, Sequence

from torch import nn

from ..errors import ConfigError, DataError
from .bundle import load_encoder_bundle
from .classifier import CosmoClassifier, CosmoModel

# the classifier's architecture, as stage 2 saves it in the checkpoint's "config"
ARCH_FIELDS = ("lam", "fusion", "gru_hidden", "mlp_hidden", "dropout")


def build_cosmo_model(encoders: Sequence[nn.Module], modalities: Sequence[str], num_classes: int,
                      quality: Optional[Sequence[float]] = None, **arch: Any) -> CosmoModel:
    """Encoders + a ``CosmoClassifier`` (``arch``: the ``ARCH_FIELDS``) over their outputs."""
    steps = {e.out_steps for e in encoders}
    if len(steps) != 1:
        raise ConfigError("all encoders must output the same number of steps, got {}".format(sorted(steps)))
    clf = CosmoClassifier(steps.pop(), [e.out_features for e in encoders], num_classes, quality=quality, **arch)
    return CosmoModel(encoders, clf, modalities)


def load_finetuned(finetuned_path: str, encoders_path: str, modalities: Sequence[str], num_classes: int) -> Any:
    """Rebuild the fine-tuned ``CosmoModel`` (eval mode, CPU) from ``finetuned.pt`` + the encoder bundle;
    ``DataError`` naming the file when it is missing, corrupt or not such a checkpoint."""
    import torch

    if not os.path.isfile(finetuned_path):
        raise DataError("{}: fine-tuned weights not found".format(finetuned_path))
    try:
        ck = torch.load(finetuned_path, map_location="cpu")
    except Exception as e:  # torch raises many types for a corrupt file
        raise DataError("{}: corrupt or unreadable: {}".format(finetuned_path, e)) from e
    if not isinstance(ck, dict) or "state_dict" not in ck:
        raise DataError("{}: not a cosmo-har fine-tuned checkpoint".format(finetuned_path))
    cfg = ck.get("config") or {}
    missing = [f for f in ARCH_FIELDS if f not in cfg]
    if missing:
        raise DataError("{}: the checkpoint's config lacks {}".format(finetuned_path, ", ".join(missing)))
    try:
        model = build_cosmo_model(load_encoder_bundle(encoders_path), modalities, num_classes, None,
                                  **{f: cfg[f] for f in ARCH_FIELDS})
        model.load_state_dict(ck["state_dict"])
    except (ConfigError, TypeError, ValueError, RuntimeError) as e:  # RuntimeError: state_dict mismatch
        raise DataError("{}: does not fit the encoders in {}: {}".format(finetuned_path, encoders_path, e)) from e
    return model.eval()


__all__ = ["ARCH_FIELDS", "build_cosmo_model", "load_finetuned"]
