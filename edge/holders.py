"""What the Inference service serves: thread-safe references to the current runtimes.

``ModelHolder`` holds the classifier ``Runtime`` (None before the first install); ``swap`` replaces it
atomically, and every request works with the runtime it got when it started, so a swap in the middle of
a request is safe. ``AlignedHolder`` holds the aligned runtime and the search index its embeddings go into.
"""
import logging
import threading
from typing import Any, Callable, List, Optional

from edge.aligned import AlignedRuntime
from edge.index import WindowIndex
from edge.runtime import Runtime

log = logging.getLogger(__name__)


class ModelHolder(object):
    """A thread-safe reference to the current ``Runtime`` (or None before the first install)."""

    def __init__(self, runtime: Optional[Runtime] = None) -> None:
        self._lock = threading.Lock()
        self._rt = runtime
        self._listeners: List[Callable[[Optional[Runtime]], None]] = []

    def get(self) -> Optional[Runtime]:
        with self._lock:
            return self._rt

    def swap(self, rt: Optional[Runtime]) -> Optional[Runtime]:
        """Install ``rt``; return the runtime it replaces. Requests already running keep theirs."""
        with self._lock:
            old, self._rt = self._rt, rt
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn(rt)
            except Exception:  # a listener must not break the swap
                log.exception("model holder listener failed")
        return old

    def add_listener(self, fn: Callable[[Optional[Runtime]], None]) -> None:
        """Call ``fn(runtime)`` after every swap (and once now)."""
        with self._lock:
            self._listeners.append(fn)
            rt = self._rt
        fn(rt)


class AlignedHolder(ModelHolder):
    """The aligned runtime (or None) and the search ``index`` its embeddings go into. Installing a model
    of another name or version drops the index's windows (not comparable across models)."""

    def __init__(self, index: Optional[WindowIndex] = None, runtime: Optional[AlignedRuntime] = None) -> None:
        super().__init__(None)
        self.index = index
        if runtime is not None:
            self.swap(runtime)

    def swap(self, rt: Optional[Any]) -> Optional[Any]:  # type: ignore[override]
        if rt is not None and self.index is not None:
            self.index.set_model(rt.name, int(rt.version), int(rt.dim))
        return super().swap(rt)
