"""Configs as frozen dataclasses: built from dicts or YAML files with unknown keys and wrong types refused by
name, and written back as plain dicts. No torch here (the edge's serving half loads configs too)."""
import os
from collections import OrderedDict
from typing import Any, Dict, Optional, Type, TypeVar

from dataclasses import asdict, fields, is_dataclass

from .errors import ConfigError, clip

T = TypeVar("T")


def config_from_dict(cls: Type[T], d: Optional[Dict[str, Any]], where: str = "config") -> T:
    """Build frozen dataclass ``cls`` from ``d``; unknown keys and wrong types are rejected by name."""
    d = dict(d or {})
    known = OrderedDict((f.name, f) for f in fields(cls))
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError("{}: unknown keys {} (known: {})".format(where, unknown, list(known)))
    defaults = cls()
    out = {}
    for k, v in d.items():
        cur = getattr(defaults, k)
        try:
            if isinstance(cur, bool):
                if not isinstance(v, bool):
                    raise TypeError("expected true/false")
            elif isinstance(cur, int):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise TypeError("expected an integer")
            elif isinstance(cur, float):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise TypeError("expected a number")
                v = float(v)
            elif isinstance(cur, str):
                if not isinstance(v, str):
                    raise TypeError("expected a string")
            elif isinstance(cur, tuple):
                if not isinstance(v, (list, tuple)):
                    raise TypeError("expected a list")
                v = tuple(v)
            elif isinstance(cur, dict):
                if not isinstance(v, dict):
                    raise TypeError("expected an object")
        except TypeError as e:
            raise ConfigError("{}: field {!r}: {}, got {}".format(where, k, e, clip(v))) from e
        out[k] = v
    cfg = cls(**out)
    check = getattr(cfg, "check", None)
    if check is not None:
        check()
    return cfg


def load_config(cls: Type[T], path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None,
                base: Optional[Dict[str, Any]] = None) -> T:
    """Config from ``base`` (e.g. a named preset), then a YAML file (optional), then ``overrides`` (e.g.
    CLI flags): each later one wins."""
    import yaml  # only here: serving imports this module for not_positive, and never reads YAML

    d = dict(base or {})  # type: Dict[str, Any]
    if path:
        if not os.path.isfile(path):
            raise ConfigError("{}: config file not found".format(path))
        with open(path) as f:
            try:
                loaded = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ConfigError("{}: invalid YAML: {}".format(path, e)) from e
        if not isinstance(loaded, dict):
            raise ConfigError("{}: expected a mapping of config keys".format(path))
        d.update(loaded)
    d.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(cls, d, where=path or cls.__name__)


def config_dict(cfg: Any) -> Dict[str, Any]:
    if not is_dataclass(cfg):
        raise TypeError("not a dataclass: {!r}".format(cfg))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


def not_positive(cfg: Any) -> Optional[str]:
    """The first field of dataclass ``cfg`` that is not a number > 0 (limits are), or None."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            return f.name
    return None


__all__ = ["config_dict", "config_from_dict", "load_config", "not_positive"]
