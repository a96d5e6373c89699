"""Baselines for Cosmo, trained on the same data, splits, label sets, epoch budget and validation-based
model selection as Cosmo (``shared.training.stage2.finetune``).

| name | paper | kind | module |
|---|---|---|---|
| ``single_modal`` | Cosmo reference code's single-modality baseline | supervised | ``single_modal`` |
| ``deepsense`` | Yao et al., WWW 2017 | supervised | ``deepsense`` |
| ``attnsense`` | Ma et al., IJCAI 2019 | supervised | ``attnsense`` |
| ``cmc`` | Tian et al., 2019 (Contrastive Multiview Coding) | pretrain + Cosmo classifier | ``cmc`` |
| ``cpc`` | Haresamudram et al., IMWUT 2021 (CPC for HAR) | pretrain + Cosmo classifier | ``cpc`` |

Each module's docstring describes its architecture and what is scaled down to fit this machine.

Uniform entry point::

    res = train_baseline(name, labeled, val, stage2_config, unlabeled=None, pretrain_config=None,
                         quality=None, progress=False, on_epoch=None, **build_kwargs)

* supervised baselines: ``BASELINES[name].build(labeled, stage2_config, **build_kwargs)`` makes the model
  (``.encoders``, ``.classifier``, ``forward(xs, present=None) -> (logits [B, K], beta [B, M])``) and
  ``finetune(..., model=model)`` trains it with ``schedule="joint"`` (both parts every epoch; there are
  no pretrained encoders to alternate against); ``single_modal`` takes ``modality=`` (name or index);
* pretraining baselines: ``BASELINES[name].pretrain(unlabeled, pretrain_config)`` returns one encoder per
  modality (``pretrain_config``: a ``CMCConfig``/``CPCConfig``, a dict of its fields, or None for the
  defaults), then ``finetune(encoders, labeled, val, stage2_config, quality)`` trains the Cosmo
  classifier with ``stage2_config`` as given (the same classifier and schedule as Cosmo).

Returns ``finetune``'s dict (``model``, ``history``, ``best_epoch``, ``val``, ``seconds``) plus
``baseline`` (the name) and ``pretrain_history`` (per-epoch pretraining losses; empty for supervised).
Evaluate on the test split with ``shared.training.evaluate(res["model"], test)``.
"""
from typing import Any, Callable, Dict, List, Optional, Sequence

from dataclasses import dataclass, replace

from ..data.dataset import MultimodalDataset
from ..errors import ConfigError, DataError
from ..training.common import seed_everything
from ..config import config_from_dict
from ..training.stage2 import Stage2Config, finetune
from .attnsense import AttnSenseHead, AttnSenseModel, build_attnsense
from .cmc import CMCConfig, cmc_loss, pretrain_cmc
from .cpc import CPCConfig, CPCModel, pretrain_cpc
from .deepsense import DeepSenseMerge, DeepSenseModel, IntervalSensorEncoder, build_deepsense
from .single_modal import SingleModalModel, build_single_modal


@dataclass(frozen=True)
class Baseline:
    """A registry entry: ``kind`` is ``"supervised"`` (``build``) or ``"pretrain"`` (``pretrain`` +
    ``config_cls``)."""

    name: str
    kind: str
    paper: str
    build: Optional[Callable[..., Any]] = None
    pretrain: Optional[Callable[..., Any]] = None
    config_cls: Optional[type] = None


BASELINES = {
    "single_modal": Baseline("single_modal", "supervised", "Cosmo reference code (Ouyang et al., MobiCom 2022)",
                             build=build_single_modal),
    "deepsense": Baseline("deepsense", "supervised", "Yao et al., DeepSense, WWW 2017", build=build_deepsense),
    "attnsense": Baseline("attnsense", "supervised", "Ma et al., AttnSense, IJCAI 2019", build=build_attnsense),
    "cmc": Baseline("cmc", "pretrain", "Tian et al., Contrastive Multiview Coding, 2019", pretrain=pretrain_cmc,
                    config_cls=CMCConfig),
    "cpc": Baseline("cpc", "pretrain", "Haresamudram et al., CPC for HAR, IMWUT 2021", pretrain=pretrain_cpc,
                    config_cls=CPCConfig),
}  # type: Dict[str, Baseline]


def list_baselines() -> List[str]:
    return sorted(BASELINES)


def train_baseline(name: str, labeled: MultimodalDataset, val: MultimodalDataset, config: Stage2Config,
                   unlabeled: Optional[MultimodalDataset] = None, pretrain_config: Any = None,
                   quality: Optional[Sequence[float]] = None, progress: bool = False,
                   on_epoch: Optional[Callable[..., None]] = None, **build_kwargs: Any) -> Dict[str, Any]:
    """Train baseline ``name`` (see the module docstring) and select it on ``val``."""
    if name not in BASELINES:
        raise ConfigError("unknown baseline {!r}; known: {}".format(name, list_baselines()))
    b = BASELINES[name]
    config.check()
    pre_hist = []  # type: List[Dict[str, Any]]
    if b.kind == "supervised":
        if pretrain_config is not None:
            raise ConfigError("baseline {!r} is supervised and takes no pretrain_config".format(name))
        config = replace(config, schedule="joint")
        seed_everything(config.seed)
        model = b.build(labeled, config, **build_kwargs)  # type: ignore[misc]
        res = finetune(list(model.encoders), labeled, val, config, progress=progress, on_epoch=on_epoch, model=model)
    else:
        if build_kwargs:
            raise ConfigError("baseline {!r}: unknown arguments {}".format(name, sorted(build_kwargs)))
        if unlabeled is None:
            raise DataError("baseline {!r} pretrains on unlabeled windows: pass unlabeled=".format(name))
        cls = b.config_cls
        if pretrain_config is None:
            pcfg = cls()  # type: ignore[misc]
        elif isinstance(pretrain_config, dict):
            pcfg = config_from_dict(cls, pretrain_config, where=name)  # type: ignore[arg-type]
        elif isinstance(pretrain_config, cls):  # type: ignore[arg-type]
            pcfg = pretrain_config
        else:
            raise ConfigError("baseline {!r}: pretrain_config must be a {} or a dict, got {!r}".format(
                name, cls.__name__, type(pretrain_config).__name__))  # type: ignore[union-attr]
        encoders = b.pretrain(unlabeled, pcfg, progress=progress, on_epoch=pre_hist.append)  # type: ignore[misc]
        res = finetune(encoders, labeled, val, config, quality=quality, progress=progress, on_epoch=on_epoch)
    res["baseline"] = name
    res["pretrain_history"] = pre_hist
    return res


__all__ = ["AttnSenseHead", "AttnSenseModel", "BASELINES", "Baseline", "CMCConfig", "CPCConfig", "CPCModel",
           "DeepSenseMerge", "DeepSenseModel", "IntervalSensorEncoder", "SingleModalModel", "build_attnsense",
           "build_deepsense", "build_single_modal", "cmc_loss", "list_baselines", "pretrain_cmc", "pretrain_cpc",
           "train_baseline"]
