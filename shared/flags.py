"""Command-line helpers both CLIs share: flags made from a settings dataclass (one flag per field, its
default and type taken from the dataclass, so a limit has one definition and one documented default),
number types whose errors name the flag, ``--version`` and ``-v`` after the subcommand."""
import argparse
from typing import Any, Dict, Tuple


def add_field_flags(parser: argparse.ArgumentParser, defaults: Any, helps: Dict[str, str]) -> None:
    """``--field-name`` for every ``helps`` key (a field of ``defaults``, a dataclass instance); values must
    be > 0 like every limit (``positive``)."""
    for name, text in helps.items():
        value = getattr(defaults, name)
        parser.add_argument("--" + name.replace("_", "-"), type=positive(type(value)), default=value,
                            help="{} (default {})".format(text, value))


def add_config_flags(parser: Any, defaults: Any, specs: Dict[str, Any]) -> None:
    """Training flags over a config dataclass (``shared.hparams``): ``--field-name`` for every ``specs``
    key, ``(type or list of choices, help)``. The flag's value stays None unless given, so a ``--config``
    file's value (else the dataclass default) applies; ``--help`` shows that default."""
    for name, (kind, text) in specs.items():
        default = getattr(defaults, name)
        extra = {"choices": list(kind)} if isinstance(kind, (list, tuple)) else {"type": kind}
        parser.add_argument("--" + name.replace("_", "-"), default=None,
                            help="{}{}(default {})".format(text, " " if text else "", default), **extra)


def add_metrics_flag(parser: argparse.ArgumentParser) -> None:
    """``--metrics-listen``, the same on both daemons (``shared.rpc.metrics``)."""
    parser.add_argument("--metrics-listen", metavar="HOST:PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics (RPCs by method and code, "
                        "latency histograms, open streams, ...); off by default. No token or TLS: keep it on "
                        "loopback or a network only the scraper reaches")


def host_port(text: str, flag: str, alternatives: str = "") -> Tuple[str, int]:
    """``(host, port)`` of a ``host:port`` or ``[v6]:port`` flag value (port 0..65535; 0: any free port);
    otherwise a ``CosmoError`` naming ``flag`` (``alternatives``: other forms the flag takes, for the
    message)."""
    from .errors import CosmoError
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise CosmoError("{} {!r}: expected host:port with a port in 0..65535{}".format(flag, text, alternatives))
    return host, int(port)


def check_metrics_flag(value: Any) -> None:
    """A bad ``--metrics-listen`` (or no ``prometheus_client``) as one ``CosmoError`` before anything starts."""
    if value is None:
        return
    from .errors import CosmoError
    try:
        import prometheus_client  # noqa: F401
    except ImportError as e:
        raise CosmoError("--metrics-listen needs the prometheus-client package ({})".format(e)) from None
    host_port(value, "--metrics-listen")


def finish_cli(parser: argparse.ArgumentParser, prog: str) -> None:
    """What both CLIs share: ``--version``, and ``-v`` accepted after the subcommand too (``cloud-server
    serve -v``), on every subcommand at every depth."""
    from . import __version__
    parser.add_argument("--version", action="version", version="{} {}".format(prog, __version__))

    def walk(p: argparse.ArgumentParser) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sp in action.choices.values():
                    if not any("--verbose" in a.option_strings for a in sp._actions):
                        sp.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                                        help="log at INFO level to stderr")
                    walk(sp)
    walk(parser)


def positive(kind: type, zero: bool = False) -> Any:
    """An argparse ``type`` for a number > 0 (``zero``: >= 0); argparse's error names the flag."""
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError("{!r} is not a{} {}".format(
                text, "n" if kind is int else "", "integer" if kind is int else "number")) from None
        if not (v >= 0 if zero else v > 0) or v != v:
            raise argparse.ArgumentTypeError("must be {} 0, got {}".format(">=" if zero else ">", text))
        return v
    parse.__name__ = kind.__name__  # argparse's "invalid int value" wording stays
    return parse


def setup_logging(verbose: bool, daemon: bool = False) -> None:
    """Both CLIs' logging: one line per record on stderr, INFO with ``-v``. A daemon (``daemon``: the
    subcommand set ``daemon=True``) logs its own INFO lines without ``-v`` too (the address it bound, what
    it installs), third-party libraries stay at WARNING. Python warnings of third-party libraries (torch's
    ONNX exporter, tracer warnings) go through logging and are kept out unless ``-v``, so a daemon's log
    holds its own lines."""
    import logging
    import sys
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if daemon and not verbose:
        for name in DAEMON_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbose else logging.ERROR)


DAEMON_LOGGERS = ("cloud", "edge", "shared")  # the project's packages (module loggers are named after them)


def fraction(text: str) -> float:
    """An argparse ``type`` for a rate in (0, 1] (``--label-rate``)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("{!r} is not a number".format(text)) from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError("must be in (0, 1], got {}".format(text))
    return v


__all__ = ["add_config_flags", "add_field_flags", "add_metrics_flag", "check_metrics_flag", "finish_cli", "fraction", "host_port",
           "positive",
           "setup_logging"]
