"""Embedded model registry of the cloud: SQLite metadata + a content-addressed blob folder.

Layout under ``data_dir`` (DESIGN.md "Scale": the embedded default)::

    registry.sqlite3               metadata, WAL mode: versions, files, aliases, pins, reports, jobs
    blobs/sha256/ab/abcdef01...    file contents, named by their full sha256 (hex), read-only (0444)
    blobs/tmp/                     files being ingested (same filesystem, so the final rename is atomic)

A version's manifest is the JSON document of DESIGN.md "Wire contract" (see ``shared.manifest``); the
registry fills ``name``, ``version``, ``created_at``, ``files`` and ``aliases`` and stores the rest as
given. ``aliases`` are not frozen into the stored document: every read fills in the current ones.

Atomicity and durability
------------------------
* ``publish`` first copies every file into the blob store (temp file in ``blobs/tmp``, fsync, rename to
  its content address, fsync the folder), then writes the version row, its file rows and the alias moves
  in **one** SQLite transaction. A crash (or an exception) before the commit leaves no trace in the
  metadata; blobs written before it are orphans that ``gc`` removes. Readers see a version with all its
  files and aliases, or not at all.
* Version numbers come from a per-model counter incremented inside that transaction, so they are
  monotonic and never reused, even after ``delete``. (A rolled-back publish does not consume a number:
  nobody ever saw it.)
* Alias moves are single-row upserts inside a transaction: a reader always finds the alias, pointing at
  the old or the new version.
* ``gc`` and the last step of ``publish`` both hold SQLite's write lock; ``publish`` checks, under that
  lock, that its blobs are still present and re-ingests them if a concurrent ``gc`` removed them. So
  ``gc`` is safe to run at any time, also from another process.
* Every transaction is ``BEGIN IMMEDIATE`` (the write lock is taken up front, so ``busy_timeout``
  applies instead of a deadlock error), ``synchronous=FULL`` (a committed publish survives power loss).

Threads: one SQLite connection per thread (``threading.local``); the object can be shared by the gRPC
thread pool and the job runner. Processes: several may open the same data dir (events cross over, see
below); ``recover_jobs`` assumes that it runs in the only server process (call it once at start-up,
before the job runner starts).

Verification cost (``read_chunks``)
-----------------------------------
A blob is never served as good when it does not match its sha256: ``read_chunks`` hashes what it reads
and, after the last chunk, raises ``DataLoss`` instead of ending normally when the digest differs (a
gRPC Download then ends with DATA_LOSS, not OK). From offset 0 this costs nothing beyond the read itself.
When resuming from ``offset > 0`` it first reads and hashes the prefix ``[0, offset)`` (not sent), then
streams the rest while hashing: total disk I/O is one read of the whole blob (``size`` bytes), the same
as a full download, with ``offset`` bytes read before the first chunk goes out. The alternative, hashing
the whole blob before sending anything (``verify_first=True``), costs ``size + (size - offset)`` bytes
of reads and delays the first chunk by a full read, but never sends a byte of a corrupted blob; the
default suits a client that verifies the sha256 sent with every chunk anyway.

Events
------
Every change that makes an event (publish, alias move or removal, delete, job create/update) appends
it to an ``events`` table **in the same transaction**, so an event exists if and only if its change
committed, and its id (``seq``) is the commit order. Delivery reads that log: right after each commit
made through this object (so the event is queued before the call returns) and every ``event_poll_s``
(0.25 s) from a tailer thread, so subscribers also hear of changes made by other processes on the same
data dir (the job runner's worker processes publish that way). Only the newest 2000 rows are kept: the
log feeds live delivery, it is not a history.

``subscribe`` returns a :class:`Subscription`, a bounded queue. Delivery never blocks on it: when it is
full the **oldest** event is dropped and the event that is now the oldest gets ``dropped`` set to how
many events were lost just before it (0 otherwise), so a watcher can resynchronize (for example by
re-listing). Subscribers must drain their queue; the registry never waits for them.

Timestamps are RFC 3339 UTC strings with second resolution (``2024-05-01T12:00:00Z``), as in
``shared.manifest.new_manifest``.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import os
import queue
import re
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shared.manifest import sha256_file

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DB_FILE = "registry.sqlite3"
DEFAULT_CHUNK_SIZE = 1 << 20  # bytes (1 MiB), DESIGN.md "Wire contract"
MAX_CHUNK_SIZE = 3 << 20  # bytes; gRPC's default receive limit is 4 MiB per message
HASH_BLOCK = 1 << 20  # bytes read at a time when hashing
BUSY_TIMEOUT_S = 30.0
DEFAULT_QUEUE_SIZE = 256  # events per subscription
EVENT_POLL_S = 0.25  # seconds between looks for events committed by other processes
EVENT_LOG_KEEP = 2000  # rows of the events table kept (it only feeds live delivery)
TMP_MAX_AGE_S = 3600.0  # gc removes ingest temp files older than this (seconds)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ALIAS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
JOB_STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
JOB_FIELDS = ("state", "progress", "error", "model_name", "model_version")
RESTART_ERROR = "interrupted by server restart"
EVENT_KINDS = ("PUBLISHED", "ALIAS_MOVED", "DELETED")
MAX_STAGES = 64
MAX_METRICS = 1024

Event = dict[str, Any]


# ---------------------------------------------------------------------------------------- errors

class RegistryError(Exception):
    """Base class of the registry's errors.

    Deliberately not a ``shared.errors.CosmoError``: those are bad input data or config (a servicer maps
    them to INVALID_ARGUMENT), while these map to their own status codes (see each subclass).
    """


class InvalidArgument(RegistryError, ValueError):
    """An argument is invalid whatever the registry holds (gRPC INVALID_ARGUMENT); ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__("{}: {}".format(field, message))
        self.field = field


class NotFound(RegistryError):
    """The model, version, alias, file, report filter or job does not exist (gRPC NOT_FOUND)."""


class Conflict(RegistryError):
    """The request conflicts with the registry's state, e.g. deleting an aliased version (FAILED_PRECONDITION)."""


class OutOfRange(RegistryError):
    """A read offset lies past the end of the file (gRPC OUT_OF_RANGE)."""


class DataLoss(RegistryError):
    """A blob is missing on disk or does not match its recorded size or sha256 (gRPC DATA_LOSS)."""


# ------------------------------------------------------------------------------------- helpers

def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _check_name(name: Any, field: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidArgument(field, "model name {!r} must match {}".format(name, NAME_RE.pattern))
    return name


def _check_alias(alias: Any, field: str = "alias") -> str:
    # All-digit aliases are refused so that "3" is never ambiguous between a version and an alias.
    if not isinstance(alias, str) or not ALIAS_RE.fullmatch(alias) or alias.isdigit():
        raise InvalidArgument(field, "alias {!r} must match {} and not be all digits".format(alias, ALIAS_RE.pattern))
    return alias


def _check_version(version: Any, field: str = "version") -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidArgument(field, "version {!r} must be an int >= 1".format(version))
    return version


def _check_text(value: Any, field: str, max_len: int = 1024, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value) or len(value) > max_len:
        raise InvalidArgument(field, "{!r} must be a {}string of at most {} characters".format(
            value, "" if empty else "non-empty ", max_len))
    return value


def _check_rel_path(path: Any, field: str) -> str:
    """A file's name inside a version: relative, '/'-separated, no '.', '..' or empty components."""
    if not isinstance(path, str) or not path or len(path) > 1024:
        raise InvalidArgument(field, "file path {!r} must be a non-empty string".format(path))
    if path.startswith("/") or "\\" in path or "\x00" in path or re.match(r"[A-Za-z]:", path):
        raise InvalidArgument(field, "file path {!r} must be relative, '/'-separated".format(path))
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise InvalidArgument(field, "file path {!r} must not contain '..', '.' or empty components".format(path))
    return path


def _plain_json(value: Any, field: str) -> Any:
    """A deep copy of ``value`` as plain JSON types; ``InvalidArgument`` names the first bad field.

    numpy arrays and scalars (anything with ``tolist``) are converted; NaN and infinities are refused
    because the stored manifest must be strict JSON for every client.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(field, "{} is not a finite number (JSON has no NaN/Infinity)".format(value))
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidArgument(field, "key {!r} is not a string".format(k))
            out[k] = _plain_json(v, "{}.{}".format(field, k))
        return out
    if isinstance(value, (list, tuple)):
        return [_plain_json(v, "{}[{}]".format(field, i)) for i, v in enumerate(value)]
    if hasattr(value, "tolist"):
        return _plain_json(value.tolist(), field)
    raise InvalidArgument(field, "{} is not JSON-serializable".format(type(value).__name__))


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def _hash_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file."""
    return sha256_file(str(path)), path.stat().st_size


def _fsync_dir(path: Path) -> None:
    """Make a rename or create in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------- schema

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE models (name TEXT PRIMARY KEY, last_version INTEGER NOT NULL)",
        """CREATE TABLE versions (
            name TEXT NOT NULL, version INTEGER NOT NULL, created_at TEXT NOT NULL,
            manifest_json TEXT NOT NULL, pinned INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (name, version))""",
        """CREATE TABLE files (
            name TEXT NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL,
            size INTEGER NOT NULL, sha256 TEXT NOT NULL, position INTEGER NOT NULL,
            PRIMARY KEY (name, version, path),
            FOREIGN KEY (name, version) REFERENCES versions (name, version) ON DELETE CASCADE)""",
        "CREATE INDEX files_sha256 ON files (sha256)",
        """CREATE TABLE aliases (
            name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL, updated_at TEXT NOT NULL,
            PRIMARY KEY (name, alias),
            FOREIGN KEY (name, version) REFERENCES versions (name, version))""",
        """CREATE TABLE reports (
            id INTEGER PRIMARY KEY AUTOINCREMENT, edge_id TEXT NOT NULL, name TEXT NOT NULL,
            version INTEGER NOT NULL, created_at TEXT NOT NULL, stages_json TEXT NOT NULL,
            metrics_json TEXT NOT NULL, device TEXT NOT NULL, execution_provider TEXT NOT NULL)""",
        "CREATE INDEX reports_model ON reports (name, version)",
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY, kind TEXT NOT NULL, dataset TEXT NOT NULL, config_json TEXT NOT NULL,
            state TEXT NOT NULL, progress_json TEXT, error TEXT, model_name TEXT, model_version INTEGER,
            runner TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
        "CREATE INDEX jobs_state ON jobs (state)",
        # Change log for event delivery across threads and processes; only the newest rows are kept.
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, key TEXT NOT NULL,
            body_json TEXT NOT NULL, created_at TEXT NOT NULL)""",
    ),
}


# ------------------------------------------------------------------------------------- events

class Subscription:
    """A bounded, thread-safe queue of registry events (dicts), from :meth:`Registry.subscribe`.

    Producers never block: when ``maxsize`` events are waiting, the oldest is dropped, ``dropped_total``
    grows and the event now at the head gets ``event["dropped"]`` incremented (the number of events lost
    just before it). ``get`` returns ``None`` once the subscription is closed and drained.
    """

    def __init__(self, maxsize: int = DEFAULT_QUEUE_SIZE, name: str | None = None, topic: str = "models") -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise InvalidArgument("maxsize", "{!r} must be an int >= 1".format(maxsize))
        self.maxsize = maxsize
        self.name = name  # model name (topic "models") or job id (topic "jobs"); None: all
        self.topic = topic
        self.since = 0  # id of the last logged event before this subscription began
        self.dropped_total = 0
        self._events: collections.deque[Event] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def qsize(self) -> int:
        with self._cond:
            return len(self._events)

    def empty(self) -> bool:
        return self.qsize() == 0

    def put(self, event: Event) -> None:
        """Enqueue a copy of ``event`` without blocking (drops the oldest when full; no-op once closed)."""
        with self._cond:
            if self._closed:
                return
            self._events.append(dict(event))
            lost = 0  # events lost before the new head: the dropped ones and the gaps they carried
            while len(self._events) > self.maxsize:
                gone = self._events.popleft()
                self.dropped_total += 1
                lost += 1 + gone.get("dropped", 0)
            if lost:
                head = self._events[0]
                head["dropped"] = head.get("dropped", 0) + lost
            self._cond.notify_all()

    def get(self, block: bool = True, timeout: float | None = None) -> Event | None:
        """The oldest event; ``None`` once closed and drained; ``queue.Empty`` on timeout (seconds)."""
        with self._cond:
            if block:
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self._events and not self._closed:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise queue.Empty
                    self._cond.wait(left)
            if self._events:
                return self._events.popleft()
            if self._closed:
                return None
            raise queue.Empty

    def get_nowait(self) -> Event | None:
        return self.get(block=False)

    def close(self) -> None:
        """Wake waiting readers; queued events can still be read, then ``get`` returns ``None``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __iter__(self) -> Iterator[Event]:
        """Events until the subscription is closed (blocks between events)."""
        while True:
            ev = self.get()
            if ev is None:
                return
            yield ev


# ------------------------------------------------------------------------------------- registry

class Registry:
    """The model registry under ``data_dir`` (created if missing). Thread-safe; see the module docstring.

    Sizes are in bytes, digests are lowercase hex sha256, timestamps RFC 3339 UTC strings.
    """

    def __init__(self, data_dir: str | os.PathLike[str], busy_timeout_s: float = BUSY_TIMEOUT_S,
                 event_poll_s: float = EVENT_POLL_S) -> None:
        self.data_dir = Path(data_dir)
        self.db_path = self.data_dir / DB_FILE
        self.blob_dir = self.data_dir / "blobs" / "sha256"
        self.tmp_dir = self.data_dir / "blobs" / "tmp"
        self._busy_timeout_s = float(busy_timeout_s)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._subs: list[Subscription] = []
        self._subs_lock = threading.Lock()
        self._pump_lock = threading.Lock()
        self._last_event = 0  # id of the last event delivered to subscribers
        self._event_poll_s = float(event_poll_s)
        self._tail_stop = threading.Event()
        self._tailer: threading.Thread | None = None
        self._closed = False
        self.instance_id = uuid.uuid4().hex  # marks jobs this object set RUNNING (see recover_jobs)
        for d in (self.blob_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._init_schema()

    # -- connections and transactions

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise RegistryError("registry {} is closed".format(self.data_dir))
        c = getattr(self._local, "conn", None)
        if c is None:
            # check_same_thread=False only so that close() can close every thread's connection;
            # each connection is otherwise used by the thread that opened it.
            c = sqlite3.connect(str(self.db_path), timeout=self._busy_timeout_s, isolation_level=None,
                                check_same_thread=False)
            c.execute("PRAGMA busy_timeout = {}".format(int(self._busy_timeout_s * 1000)))
            c.execute("PRAGMA foreign_keys = ON")
            c.execute("PRAGMA synchronous = FULL")
            self._local.conn = c
            with self._conns_lock:
                self._conns.append(c)
        return c

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed on success, rolled back on any exception."""
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same snapshot."""
        c = self._conn()
        c.execute("BEGIN")
        try:
            yield c
        finally:
            c.execute("COMMIT")

    def _init_schema(self) -> None:
        c = self._conn()
        mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            log.warning("%s: journal mode is %s, not WAL (filesystem without shared memory?)", self.db_path, mode)
        with self._tx() as c:
            c.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise RegistryError("{}: schema_version {} is newer than this code's {}".format(
                    self.db_path, current, SCHEMA_VERSION))
            for v in range(current + 1, SCHEMA_VERSION + 1):
                for stmt in _MIGRATIONS[v]:
                    c.execute(stmt)
            if current != SCHEMA_VERSION:
                c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                          (str(SCHEMA_VERSION),))

    def schema_version(self) -> int:
        row = self._conn().execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0])

    def close(self) -> None:
        """Close every thread's connection and every subscription. Further calls raise ``RegistryError``."""
        self._closed = True
        self._tail_stop.set()
        if self._tailer is not None and self._tailer is not threading.current_thread():
            self._tailer.join(10.0)
        with self._subs_lock:
            subs, self._subs = self._subs, []
        for s in subs:
            s.close()
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.close()
            except sqlite3.Error:
                pass

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return "Registry({!r})".format(str(self.data_dir))

    # -- blobs

    def blob_path(self, sha256: str) -> Path:
        """Where the blob with this digest lives: ``blobs/sha256/<first 2 hex>/<64 hex>``."""
        if not isinstance(sha256, str) or not SHA256_RE.fullmatch(sha256):
            raise InvalidArgument("sha256", "{!r} is not a lowercase hex sha256".format(sha256))
        return self.blob_dir / sha256[:2] / sha256

    def _ingest(self, local: Path, field: str) -> tuple[str, int]:
        """Copy ``local`` into the blob store; return (sha256, size in bytes).

        The source is read once: copied to a temp file while hashed, fsynced, then renamed onto its
        content address (and the folder fsynced). An existing blob with that digest is kept when it
        verifies (the temp copy is dropped) and replaced when it does not (repair).
        """
        fd, tmp_name = tempfile.mkstemp(dir=str(self.tmp_dir), prefix="ingest-")
        tmp = Path(tmp_name)
        try:
            h = hashlib.sha256()
            size = 0
            with open(local, "rb") as src, os.fdopen(fd, "wb") as dst:
                while True:
                    b = src.read(HASH_BLOCK)
                    if not b:
                        break
                    h.update(b)
                    dst.write(b)
                    size += len(b)
                dst.flush()
                os.fsync(dst.fileno())
            digest = h.hexdigest()
            dest = self.blob_path(digest)
            try:
                keep = dest.stat().st_size == size and _hash_file(dest)[0] == digest
            except FileNotFoundError:  # absent, or removed by a concurrent gc
                keep = False
            if keep:
                tmp.unlink()
                return digest, size
            if not dest.parent.is_dir():
                dest.parent.mkdir(parents=True, exist_ok=True)
                _fsync_dir(self.blob_dir)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
            return digest, size
        except FileNotFoundError as e:
            raise InvalidArgument(field, "local file {} vanished while being published".format(local)) from e
        finally:
            if tmp.exists():
                tmp.unlink()

    def gc(self, tmp_max_age_s: float = TMP_MAX_AGE_S) -> dict[str, int]:
        """Remove blobs no file row references, and ingest temp files older than ``tmp_max_age_s`` (s).

        Runs under SQLite's write lock, the same lock under which ``publish`` checks that its blobs are
        present before committing, so a blob a concurrent publish is about to reference is either kept
        or re-ingested by that publish. Returns counts: ``blobs_removed``, ``bytes_freed``, ``tmp_removed``.
        """
        removed = freed = tmp_removed = 0
        with self._tx() as c:
            referenced = {r[0] for r in c.execute("SELECT DISTINCT sha256 FROM files")}
            for shard in sorted(self.blob_dir.iterdir()):
                if not shard.is_dir():
                    continue
                for p in sorted(shard.iterdir()):
                    if SHA256_RE.fullmatch(p.name) and p.name not in referenced:
                        try:
                            size = p.stat().st_size
                            p.unlink()
                        except FileNotFoundError:
                            continue
                        removed += 1
                        freed += size
        now = time.time()
        for p in self.tmp_dir.iterdir():
            try:
                if now - p.stat().st_mtime > tmp_max_age_s:
                    p.unlink()
                    tmp_removed += 1
            except FileNotFoundError:
                continue
        if removed or tmp_removed:
            log.info("registry gc: removed %d blobs (%d bytes), %d temp files", removed, freed, tmp_removed)
        return {"blobs_removed": removed, "bytes_freed": freed, "tmp_removed": tmp_removed}

    # -- publishing

    def publish(self, name: str, files: Mapping[str, tuple[str | os.PathLike[str], str]],
                manifest: Mapping[str, Any], aliases: Sequence[str] | str | None = ("latest",)) -> dict[str, Any]:
        """Publish a new version of model ``name``; return its manifest.

        ``files`` maps a path inside the version (relative, '/'-separated) to ``(local_path, kind)``;
        each file is copied into the blob store. ``manifest`` is not modified: the returned copy has
        ``name``, ``version`` (previous highest + 1, never reused), ``created_at``, ``files`` (``[{path,
        kind, size (bytes), sha256}]`` in the given order) and ``aliases`` filled in; ``aliases`` (default
        ``latest``) are moved to the new version. The version, its files and the alias moves become
        visible together in one transaction, or not at all (see the module docstring).

        Raises ``InvalidArgument`` (a ``ValueError``) naming the field: ``name``, ``files[...]``,
        ``aliases``, ``manifest...``.
        """
        _check_name(name)
        if not isinstance(files, Mapping) or not files:
            raise InvalidArgument("files", "must be a non-empty mapping path -> (local_path, kind)")
        if aliases is None:
            aliases = ()
        elif isinstance(aliases, str):
            aliases = (aliases,)
        alias_list = sorted({_check_alias(a, "aliases") for a in aliases})
        if not isinstance(manifest, Mapping):
            raise InvalidArgument("manifest", "must be a mapping, not {}".format(type(manifest).__name__))
        doc = _plain_json(manifest, "manifest")
        sources: list[tuple[str, Path, str]] = []
        seen: set[str] = set()
        for rel, spec in files.items():
            field = "files[{!r}]".format(rel)
            _check_rel_path(rel, field)
            if rel in seen:
                raise InvalidArgument(field, "file path {!r} is listed twice".format(rel))
            seen.add(rel)
            if not isinstance(spec, (tuple, list)) or len(spec) != 2:
                raise InvalidArgument(field, "must be a (local_path, kind) pair")
            local, kind = Path(spec[0]), spec[1]
            _check_text(kind, field + ".kind", max_len=64)
            if not local.is_file():
                raise InvalidArgument(field + ".local_path", "{} is not a file".format(local))
            sources.append((rel, local, kind))

        for _attempt in range(3):
            entries = []
            for rel, local, kind in sources:
                digest, size = self._ingest(local, "files[{!r}]".format(rel))
                entries.append({"path": rel, "kind": kind, "size": size, "sha256": digest})
            try:
                with self._tx() as c:
                    for e in entries:  # a concurrent gc may have removed a blob we found present
                        p = self.blob_path(e["sha256"])
                        if not p.is_file() or p.stat().st_size != e["size"]:
                            raise _BlobVanished(e["path"])
                    c.execute("INSERT OR IGNORE INTO models (name, last_version) VALUES (?, 0)", (name,))
                    last = c.execute("SELECT last_version FROM models WHERE name = ?", (name,)).fetchone()[0]
                    top = c.execute("SELECT MAX(version) FROM versions WHERE name = ?", (name,)).fetchone()[0]
                    version = max(int(last), int(top or 0)) + 1
                    c.execute("UPDATE models SET last_version = ? WHERE name = ?", (version, name))
                    doc.setdefault("format", "cosmo-har/manifest")
                    doc.update(name=name, version=version, created_at=_utc_now(), files=entries)
                    doc["aliases"] = []
                    self._insert_version(c, name, version, doc)
                    self._log_event(c, "PUBLISHED", name, version, None)
                    for a in alias_list:
                        self._upsert_alias(c, name, a, version)
                        self._log_event(c, "ALIAS_MOVED", name, version, a)
                break
            except _BlobVanished as e:
                log.warning("blob of %s file %r vanished before commit (concurrent gc); re-ingesting", name, e)
        else:
            raise RegistryError("model {!r}: blobs kept vanishing during publish (gc running in a loop?)".format(name))
        doc["aliases"] = alias_list
        self._pump()
        log.info("published %s version %d (%d files, aliases %s)", name, version, len(entries), alias_list)
        return doc

    def _insert_version(self, c: sqlite3.Connection, name: str, version: int, doc: dict[str, Any]) -> None:
        """Insert the version row and its file rows (inside the publish transaction)."""
        c.execute("INSERT INTO versions (name, version, created_at, manifest_json) VALUES (?, ?, ?, ?)",
                  (name, version, doc["created_at"], _dumps(doc)))
        c.executemany(
            "INSERT INTO files (name, version, path, kind, size, sha256, position) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(name, version, e["path"], e["kind"], e["size"], e["sha256"], i) for i, e in enumerate(doc["files"])])

    @staticmethod
    def _upsert_alias(c: sqlite3.Connection, name: str, alias: str, version: int) -> int | None:
        row = c.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
        c.execute("INSERT INTO aliases (name, alias, version, updated_at) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
                  (name, alias, version, _utc_now()))
        return None if row is None else int(row[0])

    # -- reading

    @staticmethod
    def _version_exists(c: sqlite3.Connection, name: str, version: int) -> bool:
        return c.execute("SELECT 1 FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone() is not None

    @staticmethod
    def _not_found_version(c: sqlite3.Connection, name: str, version: int) -> NotFound:
        if c.execute("SELECT 1 FROM versions WHERE name = ? LIMIT 1", (name,)).fetchone() is None:
            return NotFound("model {!r} not found (asked for version {})".format(name, version))
        return NotFound("model {!r} has no version {}".format(name, version))

    def list_versions(self, name: str | None = None) -> list[dict[str, Any]]:
        """Manifests of every version (of model ``name``, or of all), with current aliases; sorted by
        (name, version). An unknown name gives an empty list."""
        if name is not None:
            _check_name(name)
        with self._read() as c:
            where, args = ("WHERE name = ?", (name,)) if name is not None else ("", ())
            rows = c.execute("SELECT name, version, manifest_json FROM versions {} ORDER BY name, version".format(where),
                             args).fetchall()
            amap: dict[tuple[str, int], list[str]] = collections.defaultdict(list)
            for n, a, v in c.execute("SELECT name, alias, version FROM aliases {} ORDER BY alias".format(where), args):
                amap[(n, int(v))].append(a)
        out = []
        for n, v, mj in rows:
            doc = json.loads(mj)
            doc["aliases"] = amap.get((n, int(v)), [])
            out.append(doc)
        return out

    def resolve(self, name: str, alias: str) -> int:
        """The version ``alias`` of model ``name`` points at; ``NotFound`` naming the alias."""
        _check_name(name)
        _check_alias(alias)
        row = self._conn().execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
        if row is None:
            raise NotFound("model {!r} has no alias {!r}".format(name, alias))
        return int(row[0])

    def get(self, name: str, version: int | None = None, alias: str | None = None) -> dict[str, Any]:
        """The manifest of one version, chosen by exactly one of ``version`` or ``alias``, with its
        current aliases. ``NotFound`` names the model, version or alias."""
        _check_name(name)
        if (version is None) == (alias is None):
            raise InvalidArgument("version/alias", "give exactly one of version or alias")
        with self._read() as c:
            if alias is not None:
                _check_alias(alias)
                row = c.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
                if row is None:
                    raise NotFound("model {!r} has no alias {!r}".format(name, alias))
                version = int(row[0])
            else:
                _check_version(version)
            row = c.execute("SELECT manifest_json FROM versions WHERE name = ? AND version = ?",
                            (name, version)).fetchone()
            if row is None:
                raise self._not_found_version(c, name, version)
            names = [r[0] for r in c.execute("SELECT alias FROM aliases WHERE name = ? AND version = ? ORDER BY alias",
                                             (name, version))]
        doc = json.loads(row[0])
        doc["aliases"] = names
        return doc

    def is_pinned(self, name: str, version: int) -> bool:
        _check_name(name)
        _check_version(version)
        c = self._conn()
        row = c.execute("SELECT pinned FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone()
        if row is None:
            raise self._not_found_version(c, name, version)
        return bool(row[0])

    # -- aliases, pins, delete

    def set_alias(self, name: str, alias: str, version: int) -> int | None:
        """Point ``alias`` at ``version`` atomically (creating it if needed); return the previous version
        (``None`` if the alias is new). ``NotFound`` if the version does not exist."""
        _check_name(name)
        _check_alias(alias)
        _check_version(version)
        with self._tx() as c:
            if not self._version_exists(c, name, version):
                raise self._not_found_version(c, name, version)
            old = self._upsert_alias(c, name, alias, version)
            if old != version:
                self._log_event(c, "ALIAS_MOVED", name, version, alias)
        self._pump()
        return old

    def remove_alias(self, name: str, alias: str) -> int:
        """Remove ``alias``; return the version it pointed at. Emits ALIAS_MOVED with ``version=None``."""
        _check_name(name)
        _check_alias(alias)
        with self._tx() as c:
            row = c.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
            if row is None:
                raise NotFound("model {!r} has no alias {!r}".format(name, alias))
            c.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias))
            self._log_event(c, "ALIAS_MOVED", name, None, alias)
        self._pump()
        return int(row[0])

    def _set_pinned(self, name: str, version: int, pinned: bool) -> None:
        _check_name(name)
        _check_version(version)
        with self._tx() as c:
            cur = c.execute("UPDATE versions SET pinned = ? WHERE name = ? AND version = ?", (int(pinned), name, version))
            if cur.rowcount == 0:
                raise self._not_found_version(c, name, version)

    def pin(self, name: str, version: int) -> None:
        """Protect a version from ``delete`` (idempotent)."""
        self._set_pinned(name, version, True)

    def unpin(self, name: str, version: int) -> None:
        """Undo ``pin`` (idempotent)."""
        self._set_pinned(name, version, False)

    def delete(self, name: str, version: int) -> None:
        """Delete a version's metadata in one transaction; its blobs stay until ``gc``.

        ``Conflict`` (naming the aliases) while any alias points at it, or while it is pinned. The
        version number is never given out again. Metric reports about it are kept.
        """
        _check_name(name)
        _check_version(version)
        with self._tx() as c:
            row = c.execute("SELECT pinned FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone()
            if row is None:
                raise self._not_found_version(c, name, version)
            held = [r[0] for r in c.execute("SELECT alias FROM aliases WHERE name = ? AND version = ? ORDER BY alias",
                                            (name, version))]
            if held:
                raise Conflict("model {!r} version {} is still the target of alias(es) {}; move them first".format(
                    name, version, ", ".join(repr(a) for a in held)))
            if row[0]:
                raise Conflict("model {!r} version {} is pinned; unpin it first".format(name, version))
            c.execute("DELETE FROM files WHERE name = ? AND version = ?", (name, version))
            c.execute("DELETE FROM versions WHERE name = ? AND version = ?", (name, version))
            self._log_event(c, "DELETED", name, version, None)
        self._pump()
        log.info("deleted %s version %d", name, version)

    # -- downloads

    def _file_row(self, name: str, version: int, file: str) -> tuple[int, str]:
        _check_name(name)
        _check_version(version)
        _check_text(file, "file")
        with self._read() as c:
            row = c.execute("SELECT size, sha256 FROM files WHERE name = ? AND version = ? AND path = ?",
                            (name, version, file)).fetchone()
            if row is None:
                if not self._version_exists(c, name, version):
                    raise self._not_found_version(c, name, version)
                raise NotFound("model {!r} version {} has no file {!r}".format(name, version, file))
        return int(row[0]), str(row[1])

    def open_blob(self, name: str, version: int, file: str) -> tuple[Path, int, str]:
        """(blob path, size in bytes, sha256 hex) of one file of a version, for Download.

        Cheap: checks that the blob exists with the recorded size (``DataLoss`` otherwise) but does not
        hash it; use ``verify_blob`` or ``read_chunks`` for that.
        """
        size, digest = self._file_row(name, version, file)
        path = self.blob_path(digest)
        label = "model {!r} version {} file {!r}".format(name, version, file)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise DataLoss("{}: blob {} is missing on disk".format(label, path)) from None
        if st.st_size != size:
            raise DataLoss("{}: blob {} is {} bytes on disk, {} recorded".format(label, path, st.st_size, size))
        return path, size, digest

    def verify_blob(self, name: str, version: int, file: str) -> None:
        """Re-hash one file's blob (reads ``size`` bytes); ``DataLoss`` naming the file if it is missing,
        of the wrong size or does not match its sha256."""
        path, size, digest = self.open_blob(name, version, file)
        self._verify_path(path, size, digest, "model {!r} version {} file {!r}".format(name, version, file))

    @staticmethod
    def _verify_path(path: Path, size: int, digest: str, label: str) -> None:
        try:
            got, n = _hash_file(path)
        except FileNotFoundError:
            raise DataLoss("{}: blob {} is missing on disk".format(label, path)) from None
        if n != size or got != digest:
            raise DataLoss("{}: blob {} is corrupted on disk (sha256 {}, {} bytes; recorded {}, {} bytes)".format(
                label, path, got, n, digest, size))

    def read_chunks(self, name: str, version: int, file: str, offset: int = 0,
                    chunk_size: int | None = DEFAULT_CHUNK_SIZE, *,
                    verify_first: bool = False) -> Iterator[tuple[int, bytes]]:
        """Chunks ``(offset, data)`` of one file from byte ``offset`` to its end, for Download.

        ``chunk_size`` in bytes; ``None`` or 0 mean 1 MiB, larger than 3 MiB is clamped. Arguments, the
        file's existence and its size on disk are checked when this is called (``InvalidArgument``,
        ``NotFound``, ``OutOfRange`` for ``offset > size``, ``DataLoss``); ``offset == size`` yields
        nothing. The blob is hashed as it is read (the unsent prefix ``[0, offset)`` included), and after
        the last chunk ``DataLoss`` is raised instead of a normal end when the digest differs;
        ``verify_first=True`` hashes the whole blob before the first chunk instead. Costs: module docstring.
        """
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidArgument("offset", "{!r} must be an int >= 0 (bytes)".format(offset))
        if chunk_size is None or chunk_size == 0:
            chunk_size = DEFAULT_CHUNK_SIZE
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
            raise InvalidArgument("chunk_size", "{!r} must be an int >= 0 (bytes; 0: 1 MiB)".format(chunk_size))
        chunk_size = min(chunk_size, MAX_CHUNK_SIZE)
        path, size, digest = self.open_blob(name, version, file)
        label = "model {!r} version {} file {!r}".format(name, version, file)
        if offset > size:
            raise OutOfRange("{}: offset {} is past the end of the file ({} bytes)".format(label, offset, size))
        if verify_first:
            self._verify_path(path, size, digest, label)
        return self._stream(path, size, digest, offset, chunk_size, label)

    @staticmethod
    def _stream(path: Path, size: int, digest: str, offset: int, chunk_size: int,
                label: str) -> Iterator[tuple[int, bytes]]:
        h = hashlib.sha256()
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise DataLoss("{}: blob {} is missing on disk".format(label, path)) from None
        with f:
            pos = 0
            while pos < offset:  # the prefix the client already has: hashed, not sent
                b = f.read(min(HASH_BLOCK, offset - pos))
                if not b:
                    raise DataLoss("{}: blob {} is truncated at {} bytes".format(label, path, pos))
                h.update(b)
                pos += len(b)
            while pos < size:
                b = f.read(min(chunk_size, size - pos))
                if not b:
                    raise DataLoss("{}: blob {} is truncated at {} bytes".format(label, path, pos))
                h.update(b)
                yield pos, b
                pos += len(b)
            extra = f.read(1)
        if extra or h.hexdigest() != digest:
            raise DataLoss("{}: blob {} does not match its sha256 {} (corrupted on disk)".format(label, path, digest))

    # -- events

    def subscribe(self, name: str | None = None, maxsize: int = DEFAULT_QUEUE_SIZE) -> Subscription:
        """A queue of model events (of model ``name``, or all): dicts ``{kind: PUBLISHED | ALIAS_MOVED |
        DELETED, name, version, alias, seq, dropped}``. ``alias`` is ``None`` except for ALIAS_MOVED;
        ALIAS_MOVED with ``version=None`` means the alias was removed. A publish sends PUBLISHED then one
        ALIAS_MOVED per alias it moved. ``seq`` is the commit order (the same in every process). Changes
        made through this object arrive before the call that made them returns; changes made by other
        processes (or other ``Registry`` objects) within ``event_poll_s``. To list the current state
        without a gap, subscribe first, then list.
        """
        if name is not None:
            _check_name(name)
        return self._add_sub(Subscription(maxsize, name, "models"))

    def subscribe_jobs(self, job_id: str | None = None, maxsize: int = DEFAULT_QUEUE_SIZE) -> Subscription:
        """A queue of job events (of job ``job_id``, or all): ``{kind: "JOB_UPDATED", job, seq, dropped}``
        with ``job`` as ``get_job`` returns it, sent on create, update, claim and recovery."""
        return self._add_sub(Subscription(maxsize, job_id, "jobs"))

    def _add_sub(self, sub: Subscription) -> Subscription:
        with self._pump_lock:
            top = self._conn().execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            with self._subs_lock:
                if not self._subs:
                    self._last_event = top  # nobody listened: nothing older is owed to anyone
                sub.since = top
                self._subs.append(sub)
                if self._tailer is None:
                    self._tailer = threading.Thread(target=self._tail, name="registry-events", daemon=True)
                    self._tailer.start()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to ``sub`` and close it (idempotent)."""
        with self._subs_lock:
            if sub in self._subs:
                self._subs.remove(sub)
        sub.close()

    def _log_event(self, c: sqlite3.Connection, kind: str, name: str, version: int | None,
                   alias: str | None) -> None:
        self._append_event(c, "models", name, {"kind": kind, "name": name, "version": version, "alias": alias})

    @staticmethod
    def _append_event(c: sqlite3.Connection, topic: str, key: str, body: dict[str, Any]) -> None:
        """Log an event inside the caller's transaction: it exists if and only if the change commits."""
        cur = c.execute("INSERT INTO events (topic, key, body_json, created_at) VALUES (?, ?, ?, ?)",
                        (topic, key, _dumps(body), _utc_now()))
        c.execute("DELETE FROM events WHERE id <= ?", (cur.lastrowid - EVENT_LOG_KEEP,))

    def _pump(self) -> None:
        """Deliver logged events newer than the last delivered one, in commit order, to the subscribers.

        Called after each of this object's commits and every ``event_poll_s`` by the tailer thread (for
        other processes' commits). ``Subscription.put`` never blocks, so neither does this for long.
        """
        if not self._subs:
            return
        try:
            with self._pump_lock:
                rows = self._conn().execute("SELECT id, topic, key, body_json FROM events WHERE id > ? ORDER BY id",
                                            (self._last_event,)).fetchall()
                if not rows:
                    return
                with self._subs_lock:
                    subs = list(self._subs)
                first = rows[0][0]
                for event_id, topic, key, body in rows:
                    ev = json.loads(body)
                    ev["seq"] = event_id
                    for sub in subs:
                        if sub.topic == topic and event_id > sub.since and (sub.name is None or sub.name == key):
                            # ids are contiguous, so a gap before the first row means the log was pruned
                            # faster than delivered (a stalled process): count it as dropped.
                            gap = first - max(self._last_event, sub.since) - 1 if event_id == first else 0
                            sub.put(dict(ev, dropped=max(0, gap)))
                self._last_event = rows[-1][0]
        except (sqlite3.Error, RegistryError):
            if not self._closed:  # the change itself is committed; only its notification failed
                log.exception("registry event delivery failed")

    def _tail(self) -> None:
        """Tailer thread: pick up events committed by other processes (or other Registry objects)."""
        while not self._tail_stop.wait(self._event_poll_s):
            self._pump()

    # -- metric reports

    def report_metrics(self, edge_id: str, name: str, version: int, stages: Sequence[Mapping[str, Any]],
                       metrics: Mapping[str, float], device: str, execution_provider: str) -> int:
        """Store an edge's figures about a version (stage times in seconds, energy in joules, memory in
        MB, ...; never sensor data); return the report id. ``NotFound`` for an unknown version."""
        _check_text(edge_id, "edge_id", max_len=256)
        _check_name(name)
        _check_version(version)
        _check_text(device, "device", empty=True)
        _check_text(execution_provider, "execution_provider", max_len=256, empty=True)
        if not isinstance(stages, (list, tuple)) or len(stages) > MAX_STAGES:
            raise InvalidArgument("stages", "must be a list of at most {} dicts".format(MAX_STAGES))
        for i, s in enumerate(stages):
            if not isinstance(s, Mapping):
                raise InvalidArgument("stages[{}]".format(i), "must be a dict, not {}".format(type(s).__name__))
        stages_doc = _plain_json(list(stages), "stages")
        if not isinstance(metrics, Mapping) or len(metrics) > MAX_METRICS:
            raise InvalidArgument("metrics", "must be a dict str -> float of at most {} items".format(MAX_METRICS))
        metrics_doc = {}
        for k, v in metrics.items():
            field = "metrics[{!r}]".format(k)
            _check_text(k, field, max_len=256)
            try:  # float() also takes numpy scalars; strings and bools are refused first
                if isinstance(v, (bool, str, bytes)):
                    raise TypeError
                value = float(v)
            except (TypeError, ValueError):
                raise InvalidArgument(field, "{!r} is not a number".format(v)) from None
            if not math.isfinite(value):
                raise InvalidArgument(field, "{!r} is not a finite number".format(v))
            metrics_doc[k] = value
        with self._tx() as c:
            if not self._version_exists(c, name, version):
                raise self._not_found_version(c, name, version)
            cur = c.execute(
                "INSERT INTO reports (edge_id, name, version, created_at, stages_json, metrics_json, device, "
                "execution_provider) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (edge_id, name, version, _utc_now(), _dumps(stages_doc), _dumps(metrics_doc), device,
                 execution_provider))
            report_id = int(cur.lastrowid)
        return report_id

    def list_reports(self, name: str | None = None, version: int | None = None) -> list[dict[str, Any]]:
        """Stored reports (of a model, or of one version), oldest first: ``{id, edge_id, name, version,
        created_at, stages, metrics, device, execution_provider}``."""
        clauses, args = [], []
        if name is not None:
            clauses.append("name = ?")
            args.append(_check_name(name))
        if version is not None:
            if name is None:
                raise InvalidArgument("version", "a version filter needs a model name")
            clauses.append("version = ?")
            args.append(_check_version(version))
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self._conn().execute(
            "SELECT id, edge_id, name, version, created_at, stages_json, metrics_json, device, execution_provider "
            "FROM reports {} ORDER BY id".format(where), args).fetchall()
        return [{"id": r[0], "edge_id": r[1], "name": r[2], "version": r[3], "created_at": r[4],
                 "stages": json.loads(r[5]), "metrics": json.loads(r[6]), "device": r[7],
                 "execution_provider": r[8]} for r in rows]

    # -- jobs

    _JOB_COLS = ("id, kind, dataset, config_json, state, progress_json, error, model_name, model_version, "
                 "created_at, updated_at")

    @staticmethod
    def _job_dict(r: Sequence[Any]) -> dict[str, Any]:
        return {"id": r[0], "kind": r[1], "dataset": r[2], "config_json": r[3], "state": r[4],
                "progress": json.loads(r[5]) if r[5] is not None else None, "error": r[6],
                "model_name": r[7], "model_version": r[8], "created_at": r[9], "updated_at": r[10]}

    def _job(self, c: sqlite3.Connection, job_id: str) -> dict[str, Any]:
        row = c.execute("SELECT {} FROM jobs WHERE id = ?".format(self._JOB_COLS), (job_id,)).fetchone()
        if row is None:
            raise NotFound("job {!r} not found".format(job_id))
        return self._job_dict(row)

    def _log_job(self, c: sqlite3.Connection, job_id: str) -> dict[str, Any]:
        """The job as it is now; its JOB_UPDATED event is logged in the same transaction."""
        job = self._job(c, job_id)
        self._append_event(c, "jobs", job_id, {"kind": "JOB_UPDATED", "job": job})
        return job

    def create_job(self, kind: str, dataset: str, config_json: str | Mapping[str, Any] = "{}") -> dict[str, Any]:
        """Persist a new job in state QUEUED (id: uuid4 hex); return it as ``get_job`` does.

        ``config_json`` is a JSON object as text (or a mapping, serialized here); the job runner
        validates its keys and the kind (``pretrain``, ``quality``, ...)."""
        _check_text(kind, "kind", max_len=64)
        _check_text(dataset, "dataset", max_len=4096)
        if isinstance(config_json, Mapping):
            config_json = _dumps(_plain_json(config_json, "config_json"))
        _check_text(config_json, "config_json", max_len=1 << 20)
        try:
            parsed = json.loads(config_json)
        except ValueError as e:
            raise InvalidArgument("config_json", "invalid JSON: {}".format(e)) from None
        if not isinstance(parsed, dict):
            raise InvalidArgument("config_json", "must be a JSON object")
        job_id = uuid.uuid4().hex
        now = _utc_now()
        with self._tx() as c:
            c.execute("INSERT INTO jobs (id, kind, dataset, config_json, state, created_at, updated_at) "
                      "VALUES (?, ?, ?, ?, 'QUEUED', ?, ?)", (job_id, kind, dataset, config_json, now, now))
            job = self._log_job(c, job_id)
        self._pump()
        return job

    def get_job(self, job_id: str) -> dict[str, Any]:
        """``{id, kind, dataset, config_json, state, progress (dict or None), error, model_name,
        model_version, created_at, updated_at}``; ``NotFound`` naming the id."""
        _check_text(job_id, "id", max_len=64)
        return self._job(self._conn(), job_id)

    def list_jobs(self, states: Sequence[str] | str | None = None) -> list[dict[str, Any]]:
        """Jobs (in the given states, or all), oldest first."""
        if isinstance(states, str):
            states = (states,)
        c = self._conn()
        if states is None:
            rows = c.execute("SELECT {} FROM jobs ORDER BY rowid".format(self._JOB_COLS)).fetchall()
        else:
            states = list(states)
            for s in states:
                if s not in JOB_STATES:
                    raise InvalidArgument("states", "{!r} is not one of {}".format(s, ", ".join(JOB_STATES)))
            if not states:
                return []
            rows = c.execute("SELECT {} FROM jobs WHERE state IN ({}) ORDER BY rowid".format(
                self._JOB_COLS, ", ".join("?" * len(states))), states).fetchall()
        return [self._job_dict(r) for r in rows]

    def update_job(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Change ``state``, ``progress`` (dict or JSON text), ``error``, ``model_name``, ``model_version``
        of a job in one transaction; return the job.

        A job in a terminal state (SUCCEEDED, FAILED, CANCELLED) cannot change state any more
        (``Conflict`` naming job and state), so a runner finishing a job that was cancelled meanwhile
        learns it; its other fields can still be set.
        """
        _check_text(job_id, "id", max_len=64)
        sets: dict[str, Any] = {}
        for k, v in fields.items():
            if k not in JOB_FIELDS:
                raise InvalidArgument(k, "unknown job field (known: {})".format(", ".join(JOB_FIELDS)))
            if k == "state":
                if v not in JOB_STATES:
                    raise InvalidArgument("state", "{!r} is not one of {}".format(v, ", ".join(JOB_STATES)))
                sets["state"] = v
            elif k == "progress":
                if v is None:
                    sets["progress_json"] = None
                else:
                    if isinstance(v, str):
                        try:
                            v = json.loads(v)
                        except ValueError as e:
                            raise InvalidArgument("progress", "invalid JSON: {}".format(e)) from None
                    sets["progress_json"] = _dumps(_plain_json(v, "progress"))
            elif k == "model_version":
                sets[k] = None if v is None else _check_version(v, "model_version")
            elif k == "model_name":
                sets[k] = None if v is None else _check_name(v, "model_name")
            else:
                sets[k] = None if v is None else _check_text(v, k, max_len=1 << 16, empty=True)
        with self._tx() as c:
            row = c.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound("job {!r} not found".format(job_id))
            new_state = sets.get("state", row[0])
            if row[0] in TERMINAL_STATES and new_state != row[0]:
                raise Conflict("job {!r} is already {}; it cannot become {}".format(job_id, row[0], new_state))
            if new_state == "RUNNING" and row[0] != "RUNNING":
                sets["runner"] = self.instance_id
            sets["updated_at"] = _utc_now()
            c.execute("UPDATE jobs SET {} WHERE id = ?".format(", ".join("{} = ?".format(k) for k in sets)),
                      list(sets.values()) + [job_id])
            job = self._log_job(c, job_id)
        self._pump()
        return job

    def claim_next_job(self) -> dict[str, Any] | None:
        """Atomically move the oldest QUEUED job to RUNNING and return it (``None`` if none is queued),
        so several runner threads never start the same job."""
        with self._tx() as c:
            row = c.execute("SELECT id FROM jobs WHERE state = 'QUEUED' ORDER BY rowid LIMIT 1").fetchone()
            if row is None:
                return None
            c.execute("UPDATE jobs SET state = 'RUNNING', runner = ?, updated_at = ? WHERE id = ?",
                      (self.instance_id, _utc_now(), row[0]))
            job = self._log_job(c, row[0])
        self._pump()
        return job

    def recover_jobs(self, requeue_queued: bool = True) -> dict[str, list[str]]:
        """After a restart: mark jobs left RUNNING by a previous process FAILED with error
        ``"interrupted by server restart"``; QUEUED jobs never started, so by default they stay QUEUED
        for the runner to pick up (``requeue_queued=False`` fails them too). Jobs this object set
        RUNNING are left alone. Returns ``{"failed": [ids], "requeued": [ids]}``. Call once at start-up,
        before the job runner starts; it assumes no other live process runs jobs on this data dir.
        """
        failed: list[str] = []
        requeued: list[str] = []
        with self._tx() as c:
            rows = c.execute("SELECT id, state, runner FROM jobs WHERE state IN ('RUNNING', 'QUEUED') ORDER BY rowid"
                             ).fetchall()
            now = _utc_now()
            for job_id, state, runner in rows:
                if state == "RUNNING" and runner == self.instance_id:
                    continue
                if state == "QUEUED" and requeue_queued:
                    requeued.append(job_id)
                    continue
                c.execute("UPDATE jobs SET state = 'FAILED', error = ?, updated_at = ? WHERE id = ?",
                          (RESTART_ERROR, now, job_id))
                failed.append(job_id)
                self._log_job(c, job_id)
        self._pump()
        if failed or requeued:
            log.warning("recovered jobs: %d failed (interrupted), %d still queued", len(failed), len(requeued))
        return {"failed": failed, "requeued": requeued}


class _BlobVanished(Exception):
    """Internal: a blob ingested by publish was removed (by gc) before the commit."""


__all__ = [
    "DEFAULT_CHUNK_SIZE", "EVENT_KINDS", "JOB_STATES", "MAX_CHUNK_SIZE", "RESTART_ERROR", "SCHEMA_VERSION",
    "Conflict", "DataLoss", "InvalidArgument", "NotFound", "OutOfRange", "Registry", "RegistryError",
    "Subscription",
]
