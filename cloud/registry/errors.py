"""The registry's errors, each mapped to one gRPC status code by ``cloud.serde.status_of``."""
from __future__ import annotations

class RegistryError(Exception):
    """Base class of the registry's errors.

    Deliberately not a ``shared.errors.CosmoError``: those are bad input data or config (a servicer maps
    them to INVALID_ARGUMENT), while these map to their own status codes (see each subclass).
    """


class InvalidArgument(RegistryError, ValueError):
    """An argument is invalid whatever the registry holds (gRPC INVALID_ARGUMENT); ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__("{}: {}".format(field, message))
        self.field, self.message = field, message


class NotFound(RegistryError):
    """The model, version, alias, file, report filter or job does not exist (gRPC NOT_FOUND)."""


class Conflict(RegistryError):
    """The request conflicts with the registry's state, e.g. deleting an aliased version (FAILED_PRECONDITION)."""


class OutOfRange(RegistryError):
    """A read offset lies past the end of the file (gRPC OUT_OF_RANGE)."""


class DataLoss(RegistryError):
    """A blob is missing on disk or does not match its recorded size or sha256 (gRPC DATA_LOSS)."""

