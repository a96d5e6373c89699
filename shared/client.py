"""Client helpers for the cloud registry: resumable, verified, atomic downloads of model versions.

Runs on the edge (Python 3.6, grpcio 1.48, protobuf 3.19) as well as in the cloud.
"""
import argparse
import hashlib
import json
import logging
import os
import queue
import random
import shutil
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import grpc

from .alloc import tune_for_large_messages
from .errors import CosmoError, DataError
from .files import start_writeback
from .manifest import check_file_path
from .rpc import ModelRegistryStub, TrainingStub, pb
from .rpc.auth import read_file, read_token
from .rpc.chunks import decode_chunk

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
            key: Optional[str] = None, options: Optional[Sequence[Tuple[str, Any]]] = None) -> grpc.Channel:
    """A channel to ``host:port`` (or ``unix:/path``); TLS when ``ca`` is given (mTLS with ``cert`` +
    ``key``), and a bearer token on every call when ``token`` is given. Unreadable files raise
    ``CosmoError`` naming the flag."""
    if (cert or key) and not ca:
        raise CosmoError("--tls-cert/--tls-key (a client certificate) need --tls-ca (the server's CA)")
    if bool(cert) != bool(key):
        raise CosmoError("a client certificate needs both --tls-cert and --tls-key")
    if ca:
        def read(p: Optional[str], flag: str) -> Optional[bytes]:
            return read_file(p, flag) if p else None
        creds = grpc.ssl_channel_credentials(read(ca, "--tls-ca"), read(key, "--tls-key"), read(cert, "--tls-cert"))
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    if token:
        channel = grpc.intercept_channel(channel, _BearerToken(token))
    return channel


def add_link_args(parser: argparse.ArgumentParser, flag: str, default: Optional[str], what: str) -> None:
    """The flags of a command that is a client of a daemon: ``flag`` (its address) and the credentials of
    that link, named the same in every CLI: ``--token-file``, ``--tls-ca``, ``--tls-cert``, ``--tls-key``."""
    parser.add_argument(flag, default=default, required=default is None,
                        help="host:port (or unix:/path) of {}".format(what))
    parser.add_argument("--token-file", help="send the bearer token in this file on every call")
    parser.add_argument("--tls-ca", help="connect with TLS, trusting this CA for the server's certificate")
    parser.add_argument("--tls-cert", help="with --tls-ca and --tls-key: this client certificate (mTLS)")
    parser.add_argument("--tls-key", help="the client certificate's private key")


def connect_link(a: argparse.Namespace, target: str) -> grpc.Channel:
    """``connect`` with the flags of ``add_link_args``."""
    return connect(target, token=read_token(a.token_file), ca=a.tls_ca, cert=a.tls_cert, key=a.tls_key)


def _sha256_of(path: str) -> "hashlib._Hash":
    h = hashlib.sha256()
    if os.path.exists(path):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h


def _chunks(stub: Any, req: Any, timeout_s: Optional[float]) -> Iterator[Tuple[int, Any]]:
    """(offset, data) of a Download; zero-copy views of the raw messages where the stub offers
    ``DownloadRaw`` (``ModelRegistryStub`` does), else read from ``Chunk`` messages."""
    raw = getattr(stub, "DownloadRaw", None)
    if raw is not None:
        for message in raw(req, timeout=timeout_s):
            offset, data, _, _ = decode_chunk(message)
            yield offset, data
    else:
        for chunk in stub.Download(req, timeout=timeout_s):
            yield chunk.offset, chunk.data


class _Sink(object):
    """Appends received chunks to a file and hashes them, on two worker threads (one writes, one hashes;
    both release the GIL), so the network stream never waits for the disk or sha256 and the two overlap
    each other; at most ``depth`` chunks wait for each. Every ``WRITEBACK_BYTES`` written, the disk write
    of those bytes is started (``start_writeback``), so the final fsync does not wait for the whole file.
    ``close`` drains both, fsyncs, and re-raises a worker's error (a full disk, say)."""

    WRITEBACK_BYTES = 8 << 20

    def __init__(self, path: str, h: Any, depth: int = 8) -> None:
        self.f = open(path, "ab", buffering=0)
        self.written = self.synced = self.f.tell()
        self.error = None  # type: Optional[BaseException]
        self.queues = []  # type: List[queue.Queue]
        self.threads = []  # type: List[threading.Thread]
        for name, fn in (("download-write", self._write), ("download-hash", h.update)):
            q = queue.Queue(maxsize=depth)  # type: queue.Queue
            t = threading.Thread(target=self._run, args=(q, fn), name=name, daemon=True)
            t.start()
            self.queues.append(q)
            self.threads.append(t)

    def _run(self, q: "queue.Queue", fn: Callable[[Any], Any]) -> None:
        while True:
            data = q.get()
            if data is None:
                return
            if self.error is not None:
                continue  # keep draining so put() never blocks forever
            try:
                fn(data)
            except BaseException as e:  # reported by put()/close() on the receiving thread
                self.error = e

    def _write(self, data: Any) -> None:
        view = memoryview(data)
        while view:  # an unbuffered write may write less than asked
            view = view[self.f.write(view):]
        self.written += len(data)
        if self.WRITEBACK_BYTES and self.written - self.synced >= self.WRITEBACK_BYTES:
            start_writeback(self.f.fileno(), self.synced, self.written - self.synced)
            self.synced = self.written

    def put(self, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        for q in self.queues:
            q.put(data)

    def close(self) -> None:
        for q in self.queues:
            q.put(None)
        for t in self.threads:
            t.join()
        try:
            if self.error is None:
                os.fsync(self.f.fileno())
        finally:
            self.f.close()
        if self.error is not None:
            raise self.error


def download_file(stub: Any, name: str, version: int, file: str, dest: str, size: int, sha256: str,
                  chunk_size: int = 0, retries: int = 5, backoff_s: float = 0.5, timeout_s: Optional[float] = None,
                  on_chunk: Optional[Callable[[int, int], None]] = None) -> Dict[str, Any]:
    """Download ``file`` of ``name`` v``version`` to ``dest``, resuming from ``dest + ".part"``.

    After a dropped connection it asks again from the last byte it has (up to ``retries`` times with
    exponential backoff). The finished file is checked against ``size`` and ``sha256`` (raises
    ``VerificationError``; the partial file is removed so the next try starts clean) and only then
    renamed to ``dest``. Returns ``{"bytes_received", "resumed_from", "attempts"}``. The process's malloc is
    tuned for large messages on the first call (``shared.alloc``).
    """
    tune_for_large_messages()
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
        sink = _Sink(part, h)
        try:
            try:
                req = pb.DownloadRequest(name=name, version=version, file=file, offset=have, chunk_size=chunk_size)
                for offset, data in _chunks(stub, req, timeout_s):
                    if offset != have:
                        raise DataError("{}: chunk at offset {} while expecting {}".format(file, offset, have))
                    sink.put(data)
                    have += len(data)
                    received += len(data)
                    if on_chunk is not None:
                        on_chunk(have, size)
            finally:
                sink.close()  # everything received is on disk (fsynced) and hashed, also after an error
            if have < size:
                raise DataError("{}: stream ended at byte {} of {}".format(file, have, size))
            break
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if code not in RETRYABLE or attempt > retries:
                raise
            wait = backoff(backoff_s, attempt)
            log.warning("download %s interrupted at byte %d (%s); retrying in %.1f s", file, have, code, wait)
            time.sleep(wait)
    if have != size or h.hexdigest() != sha256:
        os.remove(part)
        raise VerificationError("{}: got {} bytes with sha256 {}, expected {} bytes with sha256 {}".format(
            file, have, h.hexdigest(), size, sha256))
    os.replace(part, dest)
    return {"bytes_received": received, "resumed_from": resumed_from, "attempts": attempt}


def backoff(base_s: float, attempt: int, cap_s: float = 30.0) -> float:
    """Seconds to wait before retry ``attempt`` (1, 2, ...): exponential, capped, with +-50 % jitter, so
    a fleet refused at once (RESOURCE_EXHAUSTED) does not come back at once."""
    return min(cap_s, base_s * (2 ** (attempt - 1))) * random.uniform(0.5, 1.5)


def get_manifest(stub: Any, name: str, version: Optional[int] = None, alias: Optional[str] = None,
                 timeout_s: float = 30.0, retries: int = 5, backoff_s: float = 0.5) -> Dict[str, Any]:
    """The manifest of a version (or alias, default ``latest``); retries a busy or unreachable server
    (RESOURCE_EXHAUSTED, UNAVAILABLE) ``retries`` times with jittered backoff."""
    req = pb.GetManifestRequest(name=name)
    if version:
        req.version = int(version)
    else:
        req.alias = alias or "latest"
    attempt = 0
    while True:
        attempt += 1
        try:
            return json.loads(stub.GetManifest(req, timeout=timeout_s).manifest_json)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if code not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE) or attempt > retries:
                raise
            time.sleep(backoff(backoff_s, attempt))


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
    v = _check_manifest(man, name)
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


def _check_manifest(man: Any, name: str) -> int:
    """The version of a manifest from the wire, after checking everything ``pull`` takes from it to name
    files: a rogue or spoofed server must not write outside the install folder. Returns the version."""
    if not isinstance(man, dict) or not isinstance(man.get("files"), list):
        raise DataError("manifest of {!r}: not an object with a 'files' list".format(name))
    v = man.get("version")
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise DataError("manifest of {!r}: field 'version' must be an int >= 1".format(name))
    for i, f in enumerate(man["files"]):
        if not isinstance(f, dict):
            raise DataError("manifest of {!r}: files[{}] is not an object".format(name, i))
        check_file_path(f.get("path"), "manifest files[{}].path".format(i))
        size, sha = f.get("size"), f.get("sha256")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise DataError("manifest of {!r}: files[{}].size must be an int >= 0".format(name, i))
        if not isinstance(sha, str) or len(sha) != 64:
            raise DataError("manifest of {!r}: files[{}].sha256 must be 64 hex digits".format(name, i))
    return v


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


__all__: List[str] = ["add_link_args", "connect", "connect_link", "download_file", "get_manifest", "pull",
                      "submit_job", "wait_job", "VerificationError"]
