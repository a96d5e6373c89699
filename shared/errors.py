"""Errors raised by the library. Each message names the file, field or shape at fault."""


class CosmoError(Exception):
    """Base class of every error the library raises on purpose."""


class DataError(CosmoError, ValueError):
    """Input data is missing, corrupt or does not have the expected shape or content."""


class ConfigError(CosmoError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""
