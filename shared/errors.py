"""Errors raised by the library. Each message names the file, field or shape at fault."""


class CosmoError(Exception):
    """Base class of every error the library raises on purpose."""


class DataError(CosmoError, ValueError):
    """Input data is missing, corrupt or does not have the expected shape or content."""


class ConfigError(CosmoError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


def clip(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for echoing a client's value in an error or log
    line: a 100 kB name must not push a status text past gRPC's metadata limit, and the repr escapes
    newlines, so a value cannot forge a log line."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return "{}...[{} chars]".format(text[:limit], len(text))


MAX_STATUS_DETAILS = 1024  # characters of a gRPC status text


def status_details(text: str) -> str:
    """``text`` cut to ``MAX_STATUS_DETAILS`` characters for a status: an echoed client value must not push
    the status past gRPC's metadata limit (the client would get RESOURCE_EXHAUSTED "Stream removed")."""
    return text if len(text) <= MAX_STATUS_DETAILS else text[:MAX_STATUS_DETAILS] + "..."
