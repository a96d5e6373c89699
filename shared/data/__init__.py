"""Data: the windowed multimodal dataset, its loaders, windowing, splits and normalization.

See ``dataset`` for the in-memory form; ``load_named`` picks a loader by name. Importing this package
does no I/O (loaders find their files when called).
"""
import inspect
import os
from typing import Callable, Dict, Optional

from ..errors import ConfigError, DataError
from .basicmotions import load_basicmotions, read_ts
from .crowdsignals import load_crowdsignals, read_crowdsignals
from .dataset import FORMAT_VERSION, ModalitySpec, MultimodalDataset, concat, make_dataset
from .hapt import load_hapt, read_hapt_pickle, read_hapt_uci
from .pickles import RestrictedUnpickler
from .seglearn_watch import load_seglearn_watch, read_watch
from .narration import NarratedDataset, narrate, read_ego4d
from .splits import Normalizer, Split, labeled_unlabeled, sample_labels, subject_split
from .synthetic import make_synthetic
from .uschad import load_uschad, read_uschad
from .utdmhad import load_utdmhad
from .windows import Recording, resample, sliding_windows

LOADERS: Dict[str, Callable[..., MultimodalDataset]] = {
    "hapt": load_hapt,
    "basicmotions": load_basicmotions,
    "synthetic": make_synthetic,
    "uschad": load_uschad,
    "utdmhad": load_utdmhad,
    "seglearn_watch": load_seglearn_watch,
    "crowdsignals": load_crowdsignals,
}


def loader_name(name: str) -> Optional[str]:
    """The ``LOADERS`` key that ``name`` means (case-insensitive, ``-`` and ``_`` ignored), else None."""
    norm = name.lower().replace("-", "").replace("_", "")
    return next((k for k in LOADERS if k.replace("_", "") == norm), None)


def load_named(name: str, **kwargs: object) -> MultimodalDataset:
    """Load a data set by name, or a saved ``.npz``/``.json`` dataset by path.

    Names (case-insensitive; ``-`` and ``_`` ignored, so ``"USC-HAD"`` works): ``hapt``,
    ``basicmotions``, ``synthetic``, ``uschad``, ``utdmhad``, ``seglearn_watch``, ``crowdsignals``;
    ``kwargs`` go to the loader
    (``load_hapt``, ``load_basicmotions``, ``make_synthetic``, ``load_uschad(root=...)``,
    ``load_utdmhad(root=...)``); ``"NAME:PATH"`` passes PATH as the loader's first argument
    (``"uschad:/data/USC-HAD"``, ``"hapt:/data/HAPT Data Set"``). A name ending in ``.npz`` or ``.json`` is read with
    ``MultimodalDataset.load`` (no kwargs).

    Raises:
        DataError for an unknown name (listing the valid ones) or a missing/corrupt file;
        ConfigError for keyword arguments the loader does not take.
    """
    name = str(name)
    if name.lower().endswith((".npz", ".json")):
        if kwargs:
            raise ConfigError("load_named({!r}): a saved dataset takes no arguments, got {}".format(
                name, sorted(kwargs)))
        return MultimodalDataset.load(os.path.expanduser(name))
    prefix, sep, location = name.partition(":")
    key = loader_name(prefix)
    loader = LOADERS.get(key) if key else None
    if sep and loader is not None and key != "synthetic":
        # "uschad:/data/USC-HAD" -> load_uschad("/data/USC-HAD"): the loader's first argument is its path
        return loader(os.path.expanduser(location), **kwargs)
    if loader is None:
        raise DataError("unknown dataset {!r}; valid names: {}, or a path to a saved .npz/.json dataset"
                        .format(name, ", ".join(sorted(LOADERS))))
    params = inspect.signature(loader).parameters
    bad = sorted(k for k in kwargs if k not in params)
    if bad:
        raise ConfigError("load_named({!r}): unknown arguments {}; {} takes {}".format(
            name, bad, loader.__name__, list(params)))
    return loader(**kwargs)


__all__ = [
    # dataset
    "FORMAT_VERSION", "ModalitySpec", "MultimodalDataset", "concat", "make_dataset",
    # windows
    "Recording", "resample", "sliding_windows",
    # splits
    "Normalizer", "Split", "labeled_unlabeled", "sample_labels", "subject_split",
    # loaders
    "RestrictedUnpickler", "load_hapt", "read_hapt_pickle", "read_hapt_uci",
    "load_basicmotions", "read_ts",
    "load_uschad", "read_uschad",
    "load_utdmhad",
    "load_seglearn_watch", "read_watch",
    "load_crowdsignals", "read_crowdsignals",
    "make_synthetic",
    "NarratedDataset", "narrate", "read_ego4d",
    "LOADERS", "load_named", "loader_name",
    # errors used by the data layer
    "DataError",
]
