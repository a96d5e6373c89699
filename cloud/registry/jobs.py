"""Training jobs in the registry: their states (defined here once), progress and events.

Jobs are rows of the ``jobs`` table; every change logs a ``JOB_UPDATED`` event in the same transaction,
so ``WatchJob`` in the daemon hears of updates made by job worker processes. Finished jobs are pruned by
``Retention.jobs_*``; active ones never are.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from shared.errors import clip

from .errors import Conflict, InvalidArgument, NotFound
from .limits import MAX_CONFIG_BYTES, MAX_DATASET_CHARS
from .validation import _check_name, _check_text, _check_version, _dumps, _plain_json, _utc_now

log = logging.getLogger("cloud.registry")
JOB_STATES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED")
ACTIVE_STATES = frozenset({"QUEUED", "RUNNING"})
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
JOB_FIELDS = ("state", "progress", "error", "model_name", "model_version")
RESTART_ERROR = "interrupted by server restart"
MIN_JOB_PREFIX = 4  # hex digits of a job id that may stand for it


class Jobs:
    """Job rows (mixed into ``Registry``)."""

    instance_id: str
    _tx: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _conn: Callable[[], sqlite3.Connection]

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
        """The job as it is now; its JOB_UPDATED event is logged in the same transaction (without the
        config, which never changes: the event log stays small whatever configs clients send)."""
        job = self._job(c, job_id)
        self._append_event(c, "jobs", job_id, {"kind": "JOB_UPDATED", "job": dict(job, config_json=None)})
        return job

    def create_job(self, kind: str, dataset: str, config_json: str | Mapping[str, Any] = "{}") -> dict[str, Any]:
        """Persist a new job in state QUEUED (id: uuid4 hex); return it as ``get_job`` does.

        ``config_json`` is a JSON object as text (or a mapping, serialized here); the job runner
        validates its keys and the kind (``pretrain``, ``quality``, ...)."""
        _check_text(kind, "kind", max_len=64)
        _check_text(dataset, "dataset", max_len=MAX_DATASET_CHARS)
        if isinstance(config_json, Mapping):
            config_json = _dumps(_plain_json(config_json, "config_json"))
        _check_text(config_json, "config_json", max_len=MAX_CONFIG_BYTES)
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
        model_version, created_at, updated_at}``; ``NotFound`` naming the id. ``job_id`` may be a unique
        prefix of at least ``MIN_JOB_PREFIX`` hex digits (what the CLI prints)."""
        return self._job(self._conn(), self.resolve_job_id(job_id))

    def resolve_job_id(self, ref: str) -> str:
        """The full id of the job ``ref`` names (itself, or a unique prefix); ``NotFound``, or
        ``InvalidArgument`` naming the field ``id`` for a prefix several jobs share."""
        _check_text(ref, "id", max_len=64)
        if len(ref) == 32:
            return ref
        if len(ref) < MIN_JOB_PREFIX or any(ch not in "0123456789abcdef" for ch in ref):
            raise NotFound("job {} not found (a job id is 32 hex digits; a unique prefix of {} or more works)"
                           .format(clip(ref), MIN_JOB_PREFIX))
        rows = self._conn().execute("SELECT id FROM jobs WHERE substr(id, 1, ?) = ? LIMIT 2",
                                    (len(ref), ref)).fetchall()
        if not rows:
            raise NotFound("job {!r} not found".format(ref))
        if len(rows) > 1:
            raise InvalidArgument("id", "prefix {!r} matches several jobs; give more digits".format(ref))
        return rows[0][0]

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


