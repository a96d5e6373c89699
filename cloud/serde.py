"""Conversions between protobuf messages and the registry's plain dicts; errors -> status codes."""
import json
from typing import Any, Dict, Optional

import grpc

from shared.rpc import pb

from .registry import JOB_STATES, Conflict, DataLoss, NotFound, OutOfRange, RegistryError


def model_version(m: Dict[str, Any]) -> Any:
    """Manifest dict -> ``ModelVersion``."""
    return pb.ModelVersion(
        name=m["name"], version=int(m["version"]), aliases=list(m.get("aliases") or []),
        created_at=str(m.get("created_at", "")),
        files=[pb.FileEntry(path=f["path"], kind=f.get("kind", ""), size=int(f["size"]), sha256=f["sha256"])
               for f in m.get("files", [])],
        manifest_json=json.dumps(m, sort_keys=True))


def report(r: Dict[str, Any]) -> Any:
    """A stored edge report (``Registry.list_reports`` row) -> ``Report``."""
    return pb.Report(id=int(r["id"]), edge_id=r["edge_id"], name=r["name"], version=int(r["version"]),
                     created_at=str(r["created_at"]), device=r.get("device") or "",
                     execution_provider=r.get("execution_provider") or "",
                     metrics={k: float(v) for k, v in (r.get("metrics") or {}).items()},
                     stages=[pb.StageMetric(**{k: s[k] for k in ("stage", "wall_seconds", "cpu_seconds", "energy_joules",
                                                                 "energy_source", "peak_memory_mb") if k in s})
                             for s in r.get("stages") or []])


EVENT_KINDS = {"PUBLISHED": 1, "ALIAS_MOVED": 2, "DELETED": 3, "CURRENT": 4}


def model_event(ev: Dict[str, Any], model: Optional[Dict[str, Any]] = None) -> Any:
    msg = pb.ModelEvent(kind=EVENT_KINDS[ev["kind"]], name=ev.get("name", ""), version=int(ev.get("version") or 0),
                        alias=ev.get("alias") or "")
    if model is not None:
        msg.model.CopyFrom(model_version(model))
    return msg


def job(j: Dict[str, Any]) -> Any:
    p = j.get("progress") or {}
    if isinstance(p, str):
        p = json.loads(p) if p else {}
    return pb.Job(
        id=j["id"], kind=j.get("kind", ""), dataset=j.get("dataset", ""), config_json=j.get("config_json", ""),
        state=pb.Job.State.Value(j["state"]) if j.get("state") in JOB_STATES else 0, error=j.get("error") or "",
        model_name=j.get("model_name") or "", model_version=int(j.get("model_version") or 0),
        created_at=str(j.get("created_at", "")), updated_at=str(j.get("updated_at", "")),
        progress=pb.JobProgress(stage=str(p.get("stage", "")), epoch=int(p.get("epoch") or 0),
                                epochs=int(p.get("epochs") or 0), loss=float(p.get("loss") or 0.0),
                                eta_seconds=float(p.get("eta_seconds") or 0.0), message=str(p.get("message", ""))))


def status_of(err: BaseException) -> grpc.StatusCode:
    """The canonical status code for an error raised below a servicer."""
    if isinstance(err, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(err, OutOfRange):
        return grpc.StatusCode.OUT_OF_RANGE
    if isinstance(err, DataLoss):
        return grpc.StatusCode.DATA_LOSS
    if isinstance(err, Conflict):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(err, (ValueError, KeyError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(err, RegistryError):
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.INTERNAL
