"""The encoder bundle (``encoders.pt``): what stage 1 ships to the edge, read without the training code.

``{"format": "cosmo-har/encoders", "modalities": [...], "encoders": [encoder specs], "state_dicts": [...]}``
— each encoder is rebuilt from its registry spec (``shared.models.encoders``) and loaded with plain tensors,
so a bundle written by the cloud's torch 2.x loads on the edge's torch 1.10.
"""
import os
from typing import Any, Dict, List, Sequence

import torch
from torch import nn

from ..data.dataset import ModalitySpec
from ..errors import DataError
from .encoders import build_encoder, encoder_spec


def encoder_bundle(model: Any, specs: Sequence[ModalitySpec]) -> Dict[str, Any]:
    """What the edge needs to rebuild the encoders: specs + state dicts (torch-1.10 loadable)."""
    return {
        "format": "cosmo-har/encoders",
        "modalities": [s.name for s in specs],
        "encoders": [encoder_spec(e) for e in model.encoders],
        "state_dicts": [{k: v.detach().cpu() for k, v in e.state_dict().items()} for e in model.encoders],
    }


def load_encoder_bundle(path: str, map_location: str = "cpu") -> List[nn.Module]:
    """Rebuild the encoders saved by ``pretrain`` (``encoders.pt``), in modality order."""
    if not os.path.isfile(path):
        raise DataError("{}: encoder file not found".format(path))
    try:
        b = torch.load(path, map_location=map_location)
    except Exception as e:  # torch raises many types for a corrupt file
        raise DataError("{}: corrupt or unreadable encoder file: {}".format(path, e)) from e
    if not isinstance(b, dict) or b.get("format") != "cosmo-har/encoders":
        raise DataError("{}: not a cosmo-har encoder bundle".format(path))
    encs = []
    for spec, sd in zip(b["encoders"], b["state_dicts"]):
        e = build_encoder(spec["name"], **spec["config"])
        e.load_state_dict(sd)
        encs.append(e)
    return encs


__all__ = ["encoder_bundle", "load_encoder_bundle"]
