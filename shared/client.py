"""Client helpers for the cloud registry: resumable, verified, atomic downloads of model versions.

Runs on the edge (Python 3.6, grpcio 1.48, protobuf 3.19) as well as in the cloud.
"""
import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import grpc

from .errors import CosmoError, DataError
from .rpc import ModelRegistryStub, TrainingStub, pb

log = logging.getLogger(__name__)
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


class VerificationError(DataError):
    """A downloaded file's size or sha256 does not match the manifest."""


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call (works on plain and TLS channels)."""

    def __init__(self, token: str) -> None:
        self.meta = ("authorization", "Bearer " + token)

    def _details(self, d: Any) -> Any:
        md = list(d.metadata or []) + [self.meta]
        return _CallDetails(d.method, d.timeout, md, d.credentials, getattr(d, "wait_for_ready", None),
                            getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method: str, timeout: Any, metadata: Any, credentials: Any, wait_for_ready: Any,
                 compression: Any) -> None:
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression


def connect(target: str, token: Optional[str] = None, ca: Optional[str] = None, cert: Optional[str] = None,
            key: Optional[str] = None) -> grpc.Channel:
    """A channel to ``host:port``; TLS when ``ca`` is given (mTLS with ``cert`` + ``key``), and a bearer
    token on every call when ``token`` is given."""
    if ca:
        def read(p: Optional[str]) -> Optional[bytes]:
            if not p:
                return None
            with open(p, "rb") as f:
                return f.read()
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(read(ca), read(key), read(cert)))
    else:
        channel = grpc.insecure_channel(target)
    if token:
        channel = grpc.intercept_channel(channel, _BearerToken(token))
    return channel


def _sha256_of(path: str) -> "hashlib._Hash":
    h = hashlib.sha256()
    if os.path.exists(path):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h


def download_file(stub: Any, name: str, version: int, file: str, dest: str, size: int, sha256: str,
                  chunk_size: int = 0, retries: int = 5, backoff_s: float = 0.5, timeout_s: Optional[float] = None,
                  on_chunk: Optional[Callable[[int, int], None]] = None) -> Dict[str, Any]:
    """Download ``file`` of ``name`` v``version`` to ``dest``, resuming from ``dest + ".part"``.

    After a dropped connection it asks again from the last byte it has (up to ``retries`` times with
    exponential backoff). The finished file is checked against ``size`` and ``sha256`` (raises
    ``VerificationError``; the partial file is removed so the next try starts clean) and only then
    renamed to ``dest``. Returns ``{"bytes_received", "resumed_from", "attempts"}``.
    """
    part = dest + ".part"
    d = os.path.dirname(dest)
    if d:
        os.makedirs(d, exist_ok=True)
    have = os.path.getsize(part) if os.path.exists(part) else 0
    if have > size:
        os.remove(part)
        have = 0
    h = _sha256_of(part)
    resumed_from, received, attempt = have, 0, 0
    while have < size or (size == 0 and not os.path.exists(part)):
        attempt += 1
        try:
            with open(part, "ab") as f:
                req = pb.DownloadRequest(name=name, version=version, file=file, offset=have, chunk_size=chunk_size)
                for chunk in stub.Download(req, timeout=timeout_s):
                    if chunk.offset != have:
                        raise DataError("{}: chunk at offset {} while expecting {}".format(file, chunk.offset, have))
                    f.write(chunk.data)
                    h.update(chunk.data)
                    have += len(chunk.data)
                    received += len(chunk.data)
                    if on_chunk is not None:
                        on_chunk(have, size)
                f.flush()
                os.fsync(f.fileno())
            if have < size:
                raise DataError("{}: stream ended at byte {} of {}".format(file, have, size))
            break
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if code not in RETRYABLE or attempt > retries:
                raise
            wait = backoff_s * (2 ** (attempt - 1))
            log.warning("download %s interrupted at byte %d (%s); retrying in %.1f s", file, have, code, wait)
            time.sleep(wait)
    if have != size or h.hexdigest() != sha256:
        os.remove(part)
        raise VerificationError("{}: got {} bytes with sha256 {}, expected {} bytes with sha256 {}".format(
            file, have, h.hexdigest(), size, sha256))
    os.replace(part, dest)
    return {"bytes_received": received, "resumed_from": resumed_from, "attempts": attempt}


def get_manifest(stub: Any, name: str, version: Optional[int] = None, alias: Optional[str] = None,
                 timeout_s: float = 30.0) -> Dict[str, Any]:
    req = pb.GetManifestRequest(name=name)
    if version:
        req.version = int(version)
    else:
        req.alias = alias or "latest"
    return json.loads(stub.GetManifest(req, timeout=timeout_s).manifest_json)


def pull(channel: grpc.Channel, name: str, dest_root: str, version: Optional[int] = None,
         alias: Optional[str] = None, files: Optional[Sequence[str]] = None, chunk_size: int = 0,
         retries: int = 5) -> Tuple[str, Dict[str, Any]]:
    """Install a model version into ``dest_root/<name>/v<version>`` atomically; return (folder, manifest).

    Files are downloaded (resumably) into ``dest_root/<name>/.v<version>.partial``, each verified, then
    the folder is renamed into place. An installed, verified version is never touched: a corrupt or
    interrupted download can only leave a ``.partial`` folder behind, which the next pull resumes.
    """
    stub = ModelRegistryStub(channel)
    man = get_manifest(stub, name, version, alias)
    v = int(man["version"])
    final = os.path.join(dest_root, name, "v{}".format(v))
    if os.path.isfile(os.path.join(final, "manifest.json")):
        return final, man
    partial = os.path.join(dest_root, name, ".v{}.partial".format(v))
    os.makedirs(partial, exist_ok=True)
    wanted = [f for f in man["files"] if files is None or f["path"] in files]
    for f in wanted:
        target = os.path.join(partial, f["path"])
        if os.path.isfile(target) and os.path.getsize(target) == f["size"] and \
                _sha256_of(target).hexdigest() == f["sha256"]:
            continue
        download_file(stub, name, v, f["path"], target, int(f["size"]), f["sha256"], chunk_size=chunk_size,
                      retries=retries)
    with open(os.path.join(partial, "manifest.json"), "w") as fh:
        json.dump(man, fh, indent=2, sort_keys=True)
    if os.path.exists(final):  # a folder without manifest.json: an older interrupted install
        shutil.rmtree(final)
    os.replace(partial, final)
    return final, man


def submit_job(channel: grpc.Channel, kind: str, dataset: str, config: Optional[Dict[str, Any]] = None) -> Any:
    return TrainingStub(channel).SubmitJob(pb.SubmitJobRequest(kind=kind, dataset=dataset,
                                                               config_json=json.dumps(config or {})))


def wait_job(channel: grpc.Channel, job_id: str, on_update: Optional[Callable[[Any], None]] = None,
             timeout_s: Optional[float] = None) -> Any:
    """Follow ``WatchJob`` until the job ends; return its final ``Job`` message."""
    last = None
    for j in TrainingStub(channel).WatchJob(pb.JobRef(id=job_id), timeout=timeout_s):
        last = j
        if on_update is not None:
            on_update(j)
    if last is None:
        raise CosmoError("job {}: WatchJob ended without a state".format(job_id))
    return last


__all__: List[str] = ["connect", "download_file", "get_manifest", "pull", "submit_job", "wait_job",
                      "VerificationError"]
