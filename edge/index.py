"""The edge's search index: a bounded, persisted store of recent windows' aligned embeddings.

``WindowIndex(path, capacity)`` keeps one SQLite table (WAL journal) of the windows the Inference service
saw while an aligned model was installed: ``id`` (autoincrement, never reused), ``time`` (unix seconds),
``predicted_activity``, ``source`` (``"Predict"``, ``"Embed"`` or ``"StreamPredict"``), ``model_name``,
``model_version`` and ``embedding`` (a float32 BLOB of ``dim`` values). At most ``capacity`` windows are
kept: adding past it evicts the oldest. Re-opening the file reads the windows back, so the index survives
a restart of the agent.

Search is brute-force cosine similarity over an in-memory ``[capacity, dim]`` float32 matrix of
L2-normalized rows (a ring buffer kept in step with the table; at 10,000 windows of 384 values that is
15 MiB and a query costs about 4 M multiply-adds, well under a millisecond-scale budget on a TX2).

Embeddings of different aligned model versions live in different spaces and cannot be compared: the
index holds the windows of one aligned model version at a time. ``set_model(name, version, dim)`` (the
service calls it whenever an aligned model is installed) drops the windows of any other model or version
and logs how many; ``add`` refuses windows embedded by a model other than the current one (a request
that started before a model swap).

Thread-safe: one lock guards the connection and the matrix.
"""
import logging
import os
import sqlite3
import threading
import time
from collections import namedtuple
from typing import Any, List, Optional, Sequence

import numpy as np

from shared.errors import CosmoError

from .runtime import InputError

log = logging.getLogger(__name__)
DEFAULT_CAPACITY = 10000

# One search result: ``score`` is the cosine similarity to the query.
Hit = namedtuple("Hit", ["window_id", "time", "predicted_activity", "score", "source", "model_name",
                         "model_version"])

_SCHEMA = """
CREATE TABLE IF NOT EXISTS windows (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    predicted_activity TEXT NOT NULL,
    source TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version INTEGER NOT NULL,
    embedding BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _normalize(a: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    return (a / np.maximum(n, 1e-12)).astype(np.float32)


class WindowIndex(object):
    """Bounded, persisted index of window embeddings (see the module docstring).

    ``size`` is the number of windows held, ``capacity`` the most it keeps, ``dim`` the embedding width
    (0 until known), ``model_name``/``model_version`` the aligned model the windows belong to."""

    def __init__(self, path: str, capacity: int = DEFAULT_CAPACITY) -> None:
        if int(capacity) < 1:
            raise CosmoError("index capacity must be >= 1, got {}".format(capacity))
        self.path = path
        self.capacity = int(capacity)
        d = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(d):
            os.makedirs(d)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.model_name = self._meta("model_name", "")
        self.model_version = int(self._meta("model_version", "0"))
        self.dim = int(self._meta("dim", "0"))
        self._load()

    # ---------------------------------------------------------------------------------- storage
    def _meta(self, key: str, default: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else default

    def _set_meta(self, **kv: Any) -> None:
        self._db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                             [(k, str(v)) for k, v in kv.items()])

    def _alloc(self) -> None:
        c = self.capacity
        self._emb = np.zeros((c, max(self.dim, 1)), np.float32)
        self._ids = np.full(c, -1, np.int64)  # -1: empty slot
        self._times = np.zeros(c, np.float64)
        self._pred = [""] * c  # type: List[str]
        self._src = [""] * c  # type: List[str]
        self._n = 0
        self._next = 0  # slot of the next window; once full, the slot of the oldest one

    def _load(self) -> None:
        """Read the table back (after a restart); drop the oldest windows past ``capacity`` and rows of
        another width than ``dim``."""
        with self._lock:
            self._alloc()
            rows = self._db.execute("SELECT id, time, predicted_activity, source, embedding FROM windows "
                                    "ORDER BY id").fetchall()
            bad = [r[0] for r in rows if self.dim and len(r[4]) != 4 * self.dim]
            rows = [r for r in rows if not self.dim or len(r[4]) == 4 * self.dim]
            if rows and not self.dim:
                self.dim = len(rows[0][4]) // 4
                self._alloc()
            over = rows[:max(0, len(rows) - self.capacity)]
            if bad or over:
                with self._db:
                    self._delete([r[0] for r in over] + bad)
                log.info("search index %s: dropped %d windows over the capacity of %d and %d of the wrong width",
                         self.path, len(over), self.capacity, len(bad))
            for r in rows[len(over):]:
                self._put(int(r[0]), float(r[1]), str(r[2]), str(r[3]),
                          np.frombuffer(r[4], dtype=np.float32))

    def _delete(self, ids: Sequence[int]) -> None:
        for i in range(0, len(ids), 500):
            part = [int(x) for x in ids[i:i + 500]]
            self._db.execute("DELETE FROM windows WHERE id IN ({})".format(",".join("?" * len(part))), part)

    def _put(self, wid: int, t: float, pred: str, src: str, emb: np.ndarray) -> Optional[int]:
        """Place one window in the ring; return the id it evicted (or None)."""
        s = self._next
        old = int(self._ids[s])
        self._ids[s], self._times[s], self._pred[s], self._src[s] = wid, t, pred, src
        self._emb[s] = _normalize(emb)
        self._next = (s + 1) % self.capacity
        self._n = min(self._n + 1, self.capacity)
        return old if old >= 0 else None

    # -------------------------------------------------------------------------------------- API
    @property
    def size(self) -> int:
        with self._lock:
            return self._n

    def __len__(self) -> int:
        return self.size

    @staticmethod
    def stored(path: str) -> int:
        """Windows held in the index file at ``path`` (0 when there is none), read without opening it as
        an index (which would trim it to a capacity)."""
        if not os.path.isfile(path):
            return 0
        db = sqlite3.connect(path)
        try:
            return int(db.execute("SELECT COUNT(*) FROM windows").fetchone()[0])
        except sqlite3.Error:
            return 0
        finally:
            db.close()

    def set_model(self, name: str, version: int, dim: int) -> int:
        """Make ``name`` v``version`` (embeddings of width ``dim``) the index's model: windows of any
        other model or version are dropped (their embeddings live in another space). Returns how many."""
        with self._lock:
            if (name, int(version), int(dim)) == (self.model_name, self.model_version, self.dim):
                return 0
            dropped = self._n
            with self._db:
                self._db.execute("DELETE FROM windows")
                self._set_meta(model_name=name, model_version=int(version), dim=int(dim))
            self.model_name, self.model_version, self.dim = name, int(version), int(dim)
            self._alloc()
        if dropped:
            log.warning("search index: aligned model is now %s v%d; dropped %d windows embedded by the previous "
                        "model (not comparable)", name, int(version), dropped)
        return dropped

    def add(self, embeddings: np.ndarray, predicted: Sequence[str], source: str, model_name: str,
            model_version: int, times: Optional[Sequence[float]] = None) -> List[int]:
        """Add windows: ``embeddings [N, dim]``, one predicted activity per window, the RPC that saw them,
        the aligned model that embedded them and their times (unix s; default now). Returns their ids.
        The oldest windows past ``capacity`` are evicted. A model other than the index's current one is
        refused (``CosmoError``); an index without a model takes this one."""
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(predicted):
            raise CosmoError("index add: embeddings of shape {} for {} predicted activities".format(
                list(emb.shape), len(predicted)))
        now = time.time()
        ts = [now] * len(emb) if times is None else [float(t) for t in times]
        if len(ts) != len(emb):
            raise CosmoError("index add: {} times for {} windows".format(len(ts), len(emb)))
        if not np.isfinite(emb).all():
            raise CosmoError("index add: embeddings contain NaN or Inf")
        with self._lock:
            if not self.model_name:
                self.set_model(model_name, int(model_version), int(emb.shape[1]))
            if (model_name, int(model_version)) != (self.model_name, self.model_version):
                raise CosmoError("index add: windows embedded by {} v{}, but the index holds {} v{}".format(
                    model_name, model_version, self.model_name, self.model_version))
            if emb.shape[1] != self.dim:
                raise CosmoError("index add: embeddings of width {}, the index holds width {}".format(
                    emb.shape[1], self.dim))
            ids, evicted = [], []  # type: List[int], List[int]
            with self._db:  # one transaction; the ring changes only once it committed
                for e, p, t in zip(emb, predicted, ts):
                    cur = self._db.execute(
                        "INSERT INTO windows (time, predicted_activity, source, model_name, model_version, "
                        "embedding) VALUES (?, ?, ?, ?, ?, ?)",
                        (t, str(p), str(source), model_name, int(model_version), sqlite3.Binary(e.tobytes())))
                    ids.append(int(cur.lastrowid))
            for wid, e, p, t in zip(ids, emb, predicted, ts):
                old = self._put(wid, t, str(p), str(source), e)
                if old is not None:
                    evicted.append(old)
            if evicted:  # a crash before this commits is repaired at the next open (capacity trim)
                with self._db:
                    self._delete(evicted)
            return ids

    def search(self, query: np.ndarray, k: int) -> List[Hit]:
        """The ``k`` windows most similar to ``query [dim]`` (cosine), best first; ties: newer first.
        Raises ``InputError`` naming ``embedding`` (wrong width) or ``k`` (below 1 or over ``size``)."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        with self._lock:
            if q.shape[0] != self.dim:
                raise InputError("embedding", "{} values; the index holds embeddings of {}".format(q.shape[0],
                                                                                                   self.dim))
            if k < 1 or k > self._n:
                raise InputError("k", "{} is out of range: 1 <= k <= index size ({})".format(k, self._n))
            n = self._n
            # the filled slots: 0..n-1 (the ring fills from slot 0 and never empties one slot alone)
            scores = self._emb[:n] @ _normalize(q)
            order = np.lexsort((-self._ids[:n], -scores))[:k]
            return [Hit(int(self._ids[i]), float(self._times[i]), self._pred[i], float(scores[i]), self._src[i],
                        self.model_name, self.model_version) for i in order]

    def embedding(self, window_id: int) -> Optional[np.ndarray]:
        """The stored (normalized) embedding of one window, or None when it is not held."""
        with self._lock:
            s = np.flatnonzero(self._ids[:self._n] == int(window_id))
            return self._emb[int(s[0])].copy() if s.size else None

    def clear(self) -> None:
        """Drop every window (the model and ids continue)."""
        with self._lock:
            with self._db:
                self._db.execute("DELETE FROM windows")
            self._alloc()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return "WindowIndex({}, {}/{} windows, {} v{})".format(self.path, self.size, self.capacity,
                                                              self.model_name, self.model_version)
