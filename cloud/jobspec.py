"""What a training job may ask for: the whole check of a submission, done before a job is queued.

``validate`` parses and checks a SubmitJob (kind, dataset, config) so that the worker never fails on
something submit could have caught: strict JSON (no NaN/Infinity, no overflowing numbers, bounded size
and depth), known keys of the right types, model names the registry accepts, known encoders and
distillation losses, and a dataset that is either a built-in name or a path confined to the server's
``--datasets-dir``. Errors are ``ConfigError`` naming the field; values are echoed clipped.

Stage-1 jobs (``pretrain``, ``quality``) take Stage1Config keys; ``"preset": "paper"`` starts from the
named configuration (``shared.hparams.STAGE1_PRESETS``) instead of the default, the keys given win.

Datasets (``resolve_dataset``):

* ``hapt``, ``basicmotions``, ``seglearn_watch``, ``crowdsignals``, ``synthetic``: the packaged copies (no
  path);
* ``NAME:PATH`` (``uschad:USC-HAD``) and ``PATH.npz`` / ``PATH.json`` (a saved dataset): PATH relative
  to ``--datasets-dir`` (or absolute inside it); resolved with symlinks, and refused unless the result
  lies inside the resolved datasets dir. A refused path gets the same answer whether it exists or not.
"""
import json
import math
import os
from typing import Any, Dict, Optional

from shared.errors import ConfigError, clip
from shared.hparams import STAGE1_PRESETS

from .registry.limits import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, MAX_DATASET_CHARS, NAME_RE

KINDS = ("pretrain", "quality", "align")
JOB_KEYS = {"label_rate": float, "labels_per_class": int, "split_seed": int, "model_name": str,
            "features": str, "model_version": int, "preset": str}
# align: AlignConfig keys + these (holdout: activities kept out of training; max_windows: cap per split)
ALIGN_JOB_KEYS = {"split_seed": int, "model_name": str, "holdout": list, "max_windows": int}
NEEDS_PATH = ("uschad", "utdmhad")  # loaders without a packaged copy
DEFAULT_LABEL_RATE = 0.01  # of the pretrain pipeline and the quality job when neither rate nor count is given


def _reject_constant(name: str) -> None:
    raise ValueError("{} is not valid JSON (no NaN or Infinity)".format(name))


def _depth(v: Any, limit: int, level: int = 0) -> int:
    """Nesting depth of parsed JSON; ``ValueError`` past ``limit``; non-finite floats (``1e999``) refused."""
    if level > limit:
        raise ValueError("nested deeper than {} levels".format(limit))
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError("a number overflows a double (JSON has no Infinity)")
    if isinstance(v, dict):
        return max([_depth(x, limit, level + 1) for x in v.values()] or [level])
    if isinstance(v, list):
        return max([_depth(x, limit, level + 1) for x in v] or [level])
    return level


def parse_config(config_json: str) -> Dict[str, Any]:
    """``config_json`` as a dict: strict JSON, at most ``MAX_CONFIG_BYTES`` and ``MAX_CONFIG_DEPTH`` deep."""
    if not config_json:
        return {}
    if len(config_json.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise ConfigError("field 'config_json' is over {} bytes".format(MAX_CONFIG_BYTES))
    try:
        cfg = json.loads(config_json, parse_constant=_reject_constant)
        _depth(cfg, MAX_CONFIG_DEPTH)
    except RecursionError:
        raise ConfigError("field 'config_json' is nested deeper than {} levels".format(MAX_CONFIG_DEPTH)) from None
    except ValueError as e:
        raise ConfigError("field 'config_json' is not valid JSON: {}".format(clip(str(e), 200))) from None
    if not isinstance(cfg, dict):
        raise ConfigError("field 'config_json' must be a JSON object")
    return cfg


def _confine(path: str, datasets_dir: Optional[str]) -> str:
    """``path`` resolved under ``datasets_dir``; the same refusal for any path outside it (existing or not)."""
    if not datasets_dir:
        raise ConfigError("field 'dataset': {} is a path, and this server takes no dataset paths (start it with "
                          "--datasets-dir DIR to train on files under DIR)".format(clip(path)))
    if "\x00" in path or not path:
        raise ConfigError("field 'dataset': {} is not a usable path".format(clip(path)))
    root = os.path.realpath(datasets_dir)
    full = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, full]) != root:
        raise ConfigError("field 'dataset': {} is not inside the server's --datasets-dir".format(clip(path)))
    if not os.path.exists(full):
        raise ConfigError("field 'dataset': {} not found in the server's --datasets-dir".format(clip(path)))
    return full


def resolve_dataset(dataset: str, datasets_dir: Optional[str]) -> str:
    """The ``load_named`` argument for a submitted ``dataset`` (see the module docstring)."""
    from shared.data import LOADERS, loader_name

    if not isinstance(dataset, str) or not dataset:
        raise ConfigError("field 'dataset' is empty (hapt, basicmotions, seglearn_watch, crowdsignals, synthetic, NAME:PATH or a .npz path)")
    if len(dataset) > MAX_DATASET_CHARS:
        raise ConfigError("field 'dataset' is over {} characters".format(MAX_DATASET_CHARS))
    if dataset.lower().endswith((".npz", ".json")):
        return _confine(dataset, datasets_dir)
    prefix, sep, location = dataset.partition(":")
    key = loader_name(prefix)
    if key is None:
        raise ConfigError("field 'dataset': unknown dataset {}; valid names: {}, NAME:PATH or a saved .npz "
                          "dataset under --datasets-dir".format(clip(dataset), ", ".join(sorted(LOADERS))))
    if sep:
        if key == "synthetic":
            raise ConfigError("field 'dataset': synthetic takes no path")
        return "{}:{}".format(prefix, _confine(location, datasets_dir))
    if key in NEEDS_PATH:
        raise ConfigError("field 'dataset': {} has no packaged copy; give {}:PATH with PATH under the server's "
                          "--datasets-dir".format(prefix, prefix))
    return dataset


def _job_keys(kind: str, cfg: Dict[str, Any]) -> Dict[str, Any]:
    keys = ALIGN_JOB_KEYS if kind == "align" else JOB_KEYS
    job = {k: cfg.pop(k) for k in list(cfg) if k in keys}
    for k, v in job.items():
        typ = keys[k]
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if not isinstance(v, typ) or isinstance(v, bool):
            raise ConfigError("config field {!r} must be {}, got {}".format(k, typ.__name__, clip(v)))
        job[k] = v
    if "label_rate" in job and not 0.0 < job["label_rate"] <= 1.0:
        raise ConfigError("config field 'label_rate' must be in (0, 1], got {}".format(job["label_rate"]))
    if "labels_per_class" in job and job["labels_per_class"] < 1:
        raise ConfigError("config field 'labels_per_class' must be >= 1, got {}".format(job["labels_per_class"]))
    if "label_rate" in job and "labels_per_class" in job:
        raise ConfigError("config fields 'label_rate' and 'labels_per_class': give one, not both")
    if "model_version" in job and job["model_version"] < 1:
        raise ConfigError("config field 'model_version' must be >= 1, got {}".format(job["model_version"]))
    if "model_name" in job and not NAME_RE.fullmatch(job["model_name"]):
        raise ConfigError("config field 'model_name' must match {}, got {}".format(NAME_RE.pattern,
                                                                                   clip(job["model_name"])))
    if "preset" in job and job["preset"] not in STAGE1_PRESETS:
        raise ConfigError("config field 'preset' must be one of {}, got {}".format(list(STAGE1_PRESETS),
                                                                                 clip(job["preset"])))
    if "features" in job and job["features"] not in ("encoder", "raw"):
        raise ConfigError("config field 'features' must be 'encoder' or 'raw', got {}".format(clip(job["features"])))
    if kind == "align":
        if not all(isinstance(c, str) for c in job.get("holdout", [])):
            raise ConfigError("config field 'holdout' must be a list of activity names, got {}".format(
                clip(job["holdout"])))
        if job.get("max_windows", 0) < 0:
            raise ConfigError("config field 'max_windows' must be >= 0, got {}".format(job["max_windows"]))
    return job


def validate(kind: str, dataset: str, config_json: str, datasets_dir: Optional[str] = None) -> Dict[str, Any]:
    """Check a submission; raise ``ConfigError`` naming the field. Returns ``{"job": job keys, "stage1": the
    rest of the config, "resolved": the training config, "dataset": the load_named argument}``.
    (Imports the training configs on first use: the daemon loads torch only once jobs are submitted.)"""
    from shared.training.common import pick_device
    from shared.config import config_from_dict

    if kind not in KINDS:
        raise ConfigError("field 'kind' must be one of {}, got {}".format(list(KINDS), clip(kind)))
    path = resolve_dataset(dataset, datasets_dir)
    cfg = parse_config(config_json)
    job = _job_keys(kind, cfg)
    if kind == "align":
        from shared.training.align import AlignConfig

        from .align import ALIGN_DEFAULTS
        resolved = config_from_dict(AlignConfig, dict(ALIGN_DEFAULTS, **cfg), where="config_json")
    else:
        from shared.training.stage1 import Stage1Config
        # the named preset under the submitted keys, as `cloud-server pretrain --preset`
        resolved = config_from_dict(Stage1Config, dict(STAGE1_PRESETS[job.get("preset", "cosmo-har")], **cfg),
                                    where="config_json")
    pick_device(resolved.device)  # "cuda" on a server without CUDA fails here, not in the worker
    return {"job": job, "stage1": cfg, "resolved": resolved, "dataset": path}


__all__ = ["DEFAULT_LABEL_RATE", "KINDS", "parse_config", "resolve_dataset", "validate"]
