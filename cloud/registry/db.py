"""The registry's SQLite database: schema and migrations, one connection per thread, transactions.

``registry.sqlite3`` in WAL mode; every write transaction is ``BEGIN IMMEDIATE`` (the write lock is taken
up front, so ``busy_timeout`` applies instead of a deadlock error) with ``synchronous=FULL`` (a committed
publish survives power loss). Threads: one connection per thread (``threading.local``).
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import RegistryError

log = logging.getLogger("cloud.registry")

SCHEMA_VERSION = 2
DB_FILE = "registry.sqlite3"

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
    2: (
        # What the last verification of a blob saw: served without re-hashing while size, mtime, ctime
        # and inode still match; ``bad`` once a verification failed (Download answers DATA_LOSS).
        """CREATE TABLE blobs (
            sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
            inode INTEGER NOT NULL,
            verified_at REAL NOT NULL, bad INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX jobs_created ON jobs (created_at)",
        "CREATE INDEX reports_created ON reports (created_at)",
    ),
}


class Database:
    """Connections and transactions on ``data_dir/registry.sqlite3`` (mixed into ``Registry``)."""

    data_dir: Path
    db_path: Path
    _busy_timeout_s: float
    _local: threading.local
    _conns: list[sqlite3.Connection]
    _conns_lock: threading.Lock
    _closed: bool

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

    def _close_connections(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.close()
            except sqlite3.Error:
                pass
