"""Embedded model registry of the cloud: SQLite metadata + a content-addressed blob folder.

Layout under ``data_dir`` (the embedded default; ``docs/scale-out.md`` for what replaces it at scale)::

    registry.sqlite3               metadata, WAL mode: versions, files, aliases, pins, blob checks,
                                   reports, jobs, events
    blobs/sha256/ab/abcdef01...    file contents, named by their full sha256 (hex), read-only (0444)
    blobs/tmp/                     files being ingested (same filesystem, so the final rename is atomic)

One ``Registry`` facade, one module per concern:

==============  ===========================================================================
``db``          schema, migrations, one SQLite connection per thread, transactions
``blobs``       blob store: ingest, verification records, Download chunks, scrub, gc
``versions``    publish, read, aliases, pins, delete (atomicity notes in its docstring)
``events``      the change log and its delivery to subscribers (threads or asyncio)
``reports``     edges' metric reports
``jobs``        training jobs and their states
``errors``      the errors, each one gRPC status code (``cloud.serde.status_of``)
``limits``      every size, count and time limit, and ``Retention``
==============  ===========================================================================

Sizes are in bytes, digests lowercase hex sha256, timestamps RFC 3339 UTC strings with second
resolution (``2024-05-01T12:00:00Z``). Threads: the object is shared by the daemon's executor threads
and the job runner. Processes: several may open the same data dir (events cross over); ``recover_jobs``
assumes it runs in the only server process (call it once at start-up, before the job runner starts).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

from .blobs import BlobStore, Chunks, clamp_chunk_size
from .db import DB_FILE, SCHEMA_VERSION, Database
from .errors import Conflict, DataLoss, InvalidArgument, NotFound, OutOfRange, RegistryError
from .events import EVENT_KINDS, Events, Subscription
from .jobs import ACTIVE_STATES, JOB_STATES, RESTART_ERROR, TERMINAL_STATES, Jobs
from .limits import (BUSY_TIMEOUT_S, DEFAULT_CHUNK_SIZE, EVENT_POLL_S, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, Retention)
from .reports import Reports, check_report
from .validation import _utc_ago
from .versions import Versions

log = logging.getLogger("cloud.registry")


class Registry(Database, BlobStore, Versions, Events, Reports, Jobs):
    """The model registry under ``data_dir`` (created if missing). Thread-safe; see the module docstring."""

    def __init__(self, data_dir: str | os.PathLike[str], busy_timeout_s: float = BUSY_TIMEOUT_S,
                 event_poll_s: float = EVENT_POLL_S, retention: Retention | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.db_path = self.data_dir / DB_FILE
        self.blob_dir = self.data_dir / "blobs" / "sha256"
        self.tmp_dir = self.data_dir / "blobs" / "tmp"
        self.retention = retention or Retention()
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

    def close(self) -> None:
        """Close every subscription and every thread's connection. Further calls raise ``RegistryError``."""
        self._closed = True
        self._close_events()
        self._close_connections()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return "Registry({!r})".format(str(self.data_dir))

    def prune_jobs(self) -> list[str]:
        """Remove finished jobs past ``Retention.jobs_keep`` or ``jobs_max_age_s`` (active ones never);
        returns their ids (the caller removes their folders). Cheap when nothing is over: SubmitJob calls
        it after every insert, so the table stays bounded however fast jobs are submitted and cancelled."""
        r = self.retention
        done = tuple(sorted(TERMINAL_STATES))
        marks = ", ".join("?" * len(done))
        with self._tx() as c:
            old = c.execute(
                "SELECT id FROM jobs WHERE state IN ({0}) AND (updated_at < ? OR id NOT IN (SELECT id FROM jobs "
                "WHERE state IN ({0}) ORDER BY updated_at DESC, rowid DESC LIMIT ?))".format(marks),
                done + (_utc_ago(r.jobs_max_age_s),) + done + (r.jobs_keep,))
            job_ids = [row[0] for row in old]
            c.executemany("DELETE FROM jobs WHERE id = ?", [(j,) for j in job_ids])
        return job_ids

    def prune(self) -> dict[str, Any]:
        """Apply ``self.retention`` to the tables clients can grow: finished jobs past the count or age,
        reports and events past their count or age. Returns ``{"jobs": [pruned job ids], "reports": n,
        "events": n}`` (the daemon also removes the pruned jobs' folders)."""
        r = self.retention
        job_ids = self.prune_jobs()
        with self._tx() as c:
            top = c.execute("SELECT COALESCE(MAX(id), 0) FROM reports").fetchone()[0]
            reports = c.execute("DELETE FROM reports WHERE created_at < ? OR id <= ?",
                                (_utc_ago(r.reports_max_age_s), top - r.reports_keep)).rowcount
            top = c.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
            events = c.execute("DELETE FROM events WHERE created_at < ? OR id <= ?",
                               (_utc_ago(r.events_max_age_s), top - r.events_keep)).rowcount
        if job_ids or reports or events:
            log.info("registry retention: pruned %d jobs, %d reports, %d events", len(job_ids), reports, events)
        return {"jobs": job_ids, "reports": reports, "events": events}

    def stats(self) -> dict[str, Any]:
        """What an operator graphs (``--metrics-listen``): ``{"models", "versions", "blob_bytes" (stored
        once per content), "bad_blobs", "reports", "jobs": {state: n} (every state, zeros included)}``."""
        with self._read() as c:
            one = lambda sql: c.execute(sql).fetchone()[0]  # noqa: E731
            out: dict[str, Any] = {
                "models": one("SELECT COUNT(*) FROM models"),
                "versions": one("SELECT COUNT(*) FROM versions"),
                "blob_bytes": one("SELECT COALESCE(SUM(size), 0) FROM (SELECT MAX(size) AS size FROM files "
                                  "GROUP BY sha256)"),
                "bad_blobs": one("SELECT COUNT(*) FROM blobs WHERE bad != 0"),
                "reports": one("SELECT COUNT(*) FROM reports"),
                "jobs": dict.fromkeys(JOB_STATES, 0)}
            out["jobs"].update(c.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return out


__all__ = [
    "ACTIVE_STATES", "DEFAULT_CHUNK_SIZE", "EVENT_KINDS", "JOB_STATES", "MAX_CHUNK_SIZE", "MIN_CHUNK_SIZE",
    "RESTART_ERROR", "SCHEMA_VERSION", "TERMINAL_STATES", "Conflict", "DataLoss", "InvalidArgument", "NotFound",
    "OutOfRange", "Registry", "RegistryError", "Retention", "Subscription", "Chunks", "check_report", "clamp_chunk_size",
]
