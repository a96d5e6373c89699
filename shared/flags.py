"""Command-line flags made from a settings dataclass: one flag per field, its default and type taken from
the dataclass, so a limit has one definition (the field) and one documented default (``--help``)."""
import argparse
from typing import Any, Dict


def add_field_flags(parser: argparse.ArgumentParser, defaults: Any, helps: Dict[str, str]) -> None:
    """``--field-name`` for every ``helps`` key (a field of ``defaults``, a dataclass instance)."""
    for name, text in helps.items():
        value = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value,
                            help="{} (default {})".format(text, value))


__all__ = ["add_field_flags"]
