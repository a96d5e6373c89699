"""Edge reports: stage timings, energy and accuracy figures an edge sends about a version (never sensor data)."""
from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from shared.errors import clip

from .errors import InvalidArgument, NotFound
from .limits import MAX_METRICS, MAX_STAGES, Retention
from .validation import _check_name, _check_text, _check_version, _dumps, _plain_json, _utc_now


class Reports:
    """Metric reports of edges (mixed into ``Registry``); bounded by ``Retention.reports_*``."""

    retention: Retention
    _tx: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _conn: Callable[[], sqlite3.Connection]

    def report_metrics(self, edge_id: str, name: str, version: int, stages: Sequence[Mapping[str, Any]],
                       metrics: Mapping[str, float], device: str, execution_provider: str) -> int:
        """Store an edge's figures about a version (stage times in seconds, energy in joules, memory in
        MB, ...; never sensor data); return the report id. ``InvalidArgument`` naming the field,
        ``NotFound`` for an unknown version."""
        out = self.insert_reports([check_report(edge_id, name, version, stages, metrics, device, execution_provider)])
        if isinstance(out[0], Exception):
            raise out[0]
        return out[0]

    def insert_reports(self, rows: Sequence[tuple[Any, ...]]) -> list[int | NotFound]:
        """Store reports checked by ``check_report`` in **one** transaction (one fsync for a whole batch:
        the daemon group-commits the reports of a fleet this way); per row its id, or ``NotFound`` when
        its version does not exist (the others are stored)."""
        out: list[int | NotFound] = []
        now = _utc_now()
        with self._tx() as c:
            for edge_id, name, version, stages_json, metrics_json, device, provider in rows:
                if not self._version_exists(c, name, version):  # type: ignore[attr-defined]
                    out.append(self._not_found_version(c, name, version))  # type: ignore[attr-defined]
                    continue
                cur = c.execute(
                    "INSERT INTO reports (edge_id, name, version, created_at, stages_json, metrics_json, device, "
                    "execution_provider) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (edge_id, name, version, now, stages_json, metrics_json, device, provider))
                out.append(int(cur.lastrowid))
            ids = [i for i in out if isinstance(i, int)]
            if ids:
                c.execute("DELETE FROM reports WHERE id <= ?", (max(ids) - self.retention.reports_keep,))
        return out

    def list_reports(self, name: str | None = None, version: int | None = None,
                     limit: int | None = None) -> list[dict[str, Any]]:
        """Stored reports (of a model, or of one version), oldest first (with ``limit``: the newest
        ``limit``, newest first): ``{id, edge_id, name, version, created_at, stages, metrics, device,
        execution_provider}``."""
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
            "FROM reports {} ORDER BY id{}".format(where, " DESC LIMIT ?" if limit else ""),
            args + ([int(limit)] if limit else [])).fetchall()
        return [{"id": r[0], "edge_id": r[1], "name": r[2], "version": r[3], "created_at": r[4],
                 "stages": json.loads(r[5]), "metrics": json.loads(r[6]), "device": r[7],
                 "execution_provider": r[8]} for r in rows]



def check_report(edge_id: str, name: str, version: int, stages: Sequence[Mapping[str, Any]],
                 metrics: Mapping[str, float], device: str, execution_provider: str) -> tuple[Any, ...]:
    """Validate one report (``InvalidArgument`` naming the field); the row ``insert_reports`` stores."""
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
        field = "metrics[{}]".format(clip(k))
        _check_text(k, field, max_len=256)
        try:  # float() also takes numpy scalars; strings and bools are refused first
            if isinstance(v, (bool, str, bytes)):
                raise TypeError
            value = float(v)
        except (TypeError, ValueError):
            raise InvalidArgument(field, "{} is not a number".format(clip(v))) from None
        if not math.isfinite(value):
            raise InvalidArgument(field, "{!r} is not a finite number".format(v))
        metrics_doc[k] = value
    return (edge_id, name, version, _dumps(stages_doc), _dumps(metrics_doc), device, execution_provider)
