"""The content-addressed blob store of the registry, and how it is verified without hashing on every send.

Layout under ``data_dir``::

    blobs/sha256/ab/abcdef01...    file contents, named by their full sha256 (hex), read-only (0444)
    blobs/tmp/ingest-<pid>-*       files being ingested (same filesystem, so the final rename is atomic)

Verification
------------
A blob is hashed when it is ingested (``publish``), and what that verification saw (size, mtime, ctime, inode)
is kept in the ``blobs`` table. ``read_chunks`` (Download) then sends a blob without hashing it as long
as its ``stat`` still matches that record; when it does not (the file was rewritten, replaced,
truncated; or it was never recorded, e.g. a data dir from schema 1) the whole blob is re-hashed before
the first byte goes out, and a mismatch is ``DataLoss`` (gRPC DATA_LOSS) and marks it bad. After the
last chunk the open file is ``fstat``-ed again, so a blob changed while it was being sent ends the
stream with ``DataLoss`` instead of a normal end. Corruption that changes neither size nor mtime (bit
rot under the filesystem) is found by ``scrub``, which re-hashes every blob (the daemon runs it in the
background, ``--scrub-interval-s``), marks bad ones, and is what a corrupted blob is served as until
then: the client checks the sha256 of the manifest and never installs it (``shared.client``).

Costs: a download from offset 0 or any resume reads only the bytes it sends (the old design hashed
every byte on the send thread, 35 % of the server's time); a re-verification reads the blob once.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from .errors import DataLoss, InvalidArgument, NotFound, OutOfRange
from .limits import DEFAULT_CHUNK_SIZE, HASH_BLOCK, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, SHA256_RE, TMP_MAX_AGE_S
from .validation import _check_name, _check_text, _check_version, _fsync_dir, _hash_file

log = logging.getLogger("cloud.registry")
TMP_PREFIX = "ingest-"


class _BlobVanished(Exception):
    """Internal: a blob ingested by publish was removed (by gc) before the commit."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BlobStore:
    """Blob files and their verification records (mixed into ``Registry``)."""

    blob_dir: Path
    tmp_dir: Path
    _conn: Callable[[], sqlite3.Connection]
    _tx: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _read: Callable[[], AbstractContextManager[sqlite3.Connection]]

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
        fd, tmp_name = tempfile.mkstemp(dir=str(self.tmp_dir), prefix="{}{}-".format(TMP_PREFIX, os.getpid()))
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

    def _record_verified(self, c: sqlite3.Connection, digest: str, st: os.stat_result) -> None:
        """Remember that the blob ``digest`` matched its sha256 with this ``stat`` (inside a transaction)."""
        c.execute("INSERT INTO blobs (sha256, size, mtime_ns, ctime_ns, inode, verified_at, bad) "
                  "VALUES (?, ?, ?, ?, ?, ?, 0) ON CONFLICT (sha256) DO UPDATE SET size = excluded.size, "
                  "mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns, inode = excluded.inode, "
                  "verified_at = excluded.verified_at, bad = 0", (digest,) + _fingerprint(st) + (time.time(),))

    def clean_tmp(self, max_age_s: float = TMP_MAX_AGE_S) -> int:
        """Remove ingest temp files left by dead processes (a publish killed mid-way), and any older than
        ``max_age_s`` seconds; return how many. Temp files of live processes are left alone, so this is
        safe while a job worker publishes. The daemon calls it at start-up."""
        removed = 0
        now = time.time()
        for p in self.tmp_dir.iterdir():
            parts = p.name[len(TMP_PREFIX):].split("-", 1) if p.name.startswith(TMP_PREFIX) else []
            owner = int(parts[0]) if parts and parts[0].isdigit() else None
            try:
                if (owner is not None and not _pid_alive(owner)) or now - p.stat().st_mtime > max_age_s:
                    p.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("registry: removed %d temp files of interrupted publishes", removed)
        return removed

    def gc(self, tmp_max_age_s: float = TMP_MAX_AGE_S) -> dict[str, int]:
        """Remove blobs no file row references, and ingest temp files older than ``tmp_max_age_s`` (s).

        Runs under SQLite's write lock, the same lock under which ``publish`` checks that its blobs are
        present before committing, so a blob a concurrent publish is about to reference is either kept
        or re-ingested by that publish. Returns counts: ``blobs_removed``, ``bytes_freed``, ``tmp_removed``.
        """
        removed = freed = 0
        with self._tx() as c:
            referenced = {r[0] for r in c.execute("SELECT DISTINCT sha256 FROM files")}
            c.execute("DELETE FROM blobs WHERE sha256 NOT IN (SELECT sha256 FROM files)")
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
        tmp_removed = self.clean_tmp(tmp_max_age_s)
        if removed or tmp_removed:
            log.info("registry gc: removed %d blobs (%d bytes), %d temp files", removed, freed, tmp_removed)
        return {"blobs_removed": removed, "bytes_freed": freed, "tmp_removed": tmp_removed}


    # -- downloads

    def _file_row(self, name: str, version: int, file: str) -> tuple[int, str, tuple[int, ...] | None, bool]:
        """(size, sha256, ``_fingerprint`` of its last good verification or None, bad) of one file."""
        _check_name(name)
        _check_version(version)
        _check_text(file, "file")
        with self._read() as c:
            row = c.execute("SELECT f.size, f.sha256, b.size, b.mtime_ns, b.ctime_ns, b.inode, b.bad FROM files f "
                            "LEFT JOIN blobs b ON b.sha256 = f.sha256 "
                            "WHERE f.name = ? AND f.version = ? AND f.path = ?", (name, version, file)).fetchone()
            if row is None:
                if not self._version_exists(c, name, version):  # type: ignore[attr-defined]
                    raise self._not_found_version(c, name, version)  # type: ignore[attr-defined]
                raise NotFound("model {!r} version {} has no file {!r}".format(name, version, file))
        seen = None if row[2] is None else tuple(int(x) for x in row[2:6])
        return int(row[0]), str(row[1]), seen, bool(row[6])

    def open_blob(self, name: str, version: int, file: str) -> tuple[Path, int, str]:
        """(blob path, size in bytes, sha256 hex) of one file of a version.

        Cheap: checks that the blob exists with the recorded size (``DataLoss`` otherwise) but does not
        hash it; ``verify_blob`` does, ``read_chunks`` does when the blob changed since it was verified.
        """
        path, size, digest, _ = self._stat_blob(name, version, file)
        return path, size, digest

    def _stat_blob(self, name: str, version: int, file: str) -> tuple[Path, int, str, bool]:
        """(path, size, sha256, trusted): ``trusted`` when the blob's stat equals its last good verification."""
        size, digest, seen, bad = self._file_row(name, version, file)
        path = self.blob_path(digest)
        label = _label(name, version, file)
        if bad:
            raise DataLoss("{}: blob {} failed verification (corrupted on disk); republish it".format(label, path))
        try:
            st = path.stat()
        except FileNotFoundError:
            raise DataLoss("{}: blob {} is missing on disk".format(label, path)) from None
        if st.st_size != size:
            raise DataLoss("{}: blob {} is {} bytes on disk, {} recorded".format(label, path, st.st_size, size))
        return path, size, digest, seen == _fingerprint(st)

    def verify_blob(self, name: str, version: int, file: str) -> None:
        """Re-hash one file's blob (reads ``size`` bytes) and record the result; ``DataLoss`` naming the
        file if it is missing, of the wrong size or does not match its sha256."""
        size, digest, _, _ = self._file_row(name, version, file)
        self._verify(self.blob_path(digest), size, digest, _label(name, version, file))

    def _verify(self, path: Path, size: int, digest: str, label: str) -> None:
        """Hash ``path``; record a match (its stat) or mark the blob bad and raise ``DataLoss``."""
        try:
            st = path.stat()
            got, n = _hash_file(path)
        except FileNotFoundError:
            raise DataLoss("{}: blob {} is missing on disk".format(label, path)) from None
        ok = n == size and got == digest
        with self._tx() as c:
            if ok:
                self._record_verified(c, digest, st)
            else:
                c.execute("UPDATE blobs SET bad = 1, verified_at = ? WHERE sha256 = ?", (time.time(), digest))
        if not ok:
            raise DataLoss("{}: blob {} is corrupted on disk (sha256 {}, {} bytes; recorded {}, {} bytes)".format(
                label, path, got, n, digest, size))

    def read_chunks(self, name: str, version: int, file: str, offset: int = 0,
                    chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> Chunks:
        """Chunks ``(offset, data)`` of one file from byte ``offset`` to its end, for Download (a ``Chunks``
        iterator that also carries the file's ``size`` and ``sha256``).

        ``chunk_size`` in bytes: ``None`` or 0 mean ``DEFAULT_CHUNK_SIZE``; it is raised to
        ``MIN_CHUNK_SIZE`` and clamped to ``MAX_CHUNK_SIZE``. Arguments, the file's existence and its size
        on disk are checked when this is called (``InvalidArgument``, ``NotFound``, ``OutOfRange`` for
        ``offset > size``, ``DataLoss``), and so is its content when it changed since its last
        verification (module docstring); ``offset == size`` yields nothing. A blob that changes while it
        is read ends with ``DataLoss`` after the last chunk instead of a normal end.
        """
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidArgument("offset", "{!r} must be an int >= 0 (bytes)".format(offset))
        chunk_size = clamp_chunk_size(chunk_size)
        path, size, digest, trusted = self._stat_blob(name, version, file)
        label = _label(name, version, file)
        if offset > size:
            raise OutOfRange("{}: offset {} is past the end of the file ({} bytes)".format(label, offset, size))
        if not trusted:
            self._verify(path, size, digest, label)
        return Chunks(path, size, digest, offset, chunk_size, label)

    def scrub(self, pause_s: float = 0.0, stop: Callable[[], bool] | None = None) -> dict[str, int]:
        """Re-hash every referenced blob (sleeping ``pause_s`` seconds between blobs, stopping early when
        ``stop()`` is true); record good ones, mark bad ones (Download then answers DATA_LOSS). Returns
        counts ``checked``, ``bad``, ``bytes``."""
        with self._read() as c:
            rows = c.execute("SELECT sha256, MAX(size), MIN(name), MIN(version), MIN(path) FROM files "
                             "GROUP BY sha256 ORDER BY sha256").fetchall()
        checked = bad = nbytes = 0
        for digest, size, name, version, path in rows:
            if stop is not None and stop():
                break
            try:
                self._verify(self.blob_path(digest), int(size), digest, _label(name, version, path))
            except DataLoss as e:
                bad += 1
                log.error("registry scrub: %s", e)
            checked += 1
            nbytes += int(size)
            if pause_s:
                time.sleep(pause_s)
        log.info("registry scrub: %d blobs (%d bytes) checked, %d bad", checked, nbytes, bad)
        return {"checked": checked, "bad": bad, "bytes": nbytes}


def clamp_chunk_size(chunk_size: int | None) -> int:
    """A Download chunk size in bytes: 0/None -> default, raised to the floor, clamped to the ceiling."""
    if chunk_size is None or chunk_size == 0:
        return DEFAULT_CHUNK_SIZE
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
        raise InvalidArgument("chunk_size", "{!r} must be an int >= 0 (bytes; 0: {} bytes)".format(
            chunk_size, DEFAULT_CHUNK_SIZE))
    return max(MIN_CHUNK_SIZE, min(chunk_size, MAX_CHUNK_SIZE))


def _fingerprint(st: os.stat_result) -> tuple[int, ...]:
    """What must stay equal for a verified blob to be trusted: size, mtime, ctime (chmod, link), inode."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _label(name: str, version: int, file: str) -> str:
    return "model {!r} version {} file {!r}".format(name, version, file)


class Chunks:
    """Iterator of ``(offset, data)`` chunks of one blob (``read_chunks``), with the file's ``size`` (bytes)
    and ``sha256``; ``data`` is a ``bytearray``. Ends with ``DataLoss`` instead of a normal end when the
    blob changed while read. The file is opened at once (``DataLoss`` if it is missing) and closed at the
    end, on an error, or by ``close``.

    ``read(nowait=True)`` reads only what is already in the page cache (``RWF_NOWAIT``) and raises
    ``BlockingIOError`` instead of waiting for the disk: an event loop can read cached blobs itself and
    hand only disk reads to a thread.
    """

    def __init__(self, path: Path, size: int, sha256: str, offset: int, chunk_size: int, label: str) -> None:
        self.path, self.size, self.sha256 = path, size, sha256
        self.pos, self.chunk_size, self.label = offset, chunk_size, label
        self.nowait_supported = hasattr(os, "RWF_NOWAIT")
        try:
            self._fd: int | None = os.open(str(path), os.O_RDONLY)
        except FileNotFoundError:
            raise DataLoss("{}: blob {} is missing on disk".format(label, path)) from None
        self._before = os.fstat(self._fd)

    def __iter__(self) -> Chunks:
        return self

    def __next__(self) -> tuple[int, bytearray]:
        item = self.read()
        if item is None:
            raise StopIteration
        return item

    def read(self, nowait: bool = False) -> tuple[int, bytearray] | None:
        """The next chunk, or ``None`` after the last (once the blob was checked unchanged)."""
        if self._fd is None:
            return None
        if self.pos >= self.size:
            self.finish()
            return None
        buf = bytearray(self.next_length())
        pos = self.pos
        n = self.readinto(buf, nowait)
        if n < len(buf):
            del buf[n:]
        return pos, buf

    def next_length(self) -> int:
        """How many bytes the next chunk holds (0 after the last)."""
        return max(0, min(self.chunk_size, self.size - self.pos))

    def readinto(self, buf: bytearray | memoryview, nowait: bool = False) -> int:
        """Read the next bytes of the blob (at most ``len(buf)``) into the writable buffer ``buf``, in place;
        returns how many (fewer only at the end of the blob). ``DataLoss`` if the file is shorter than
        recorded; ``nowait``: see the class. Call ``finish`` after the last chunk."""
        if self._fd is None:
            raise ValueError("{}: reader already closed".format(self.label))
        try:
            if nowait and self.nowait_supported:
                try:
                    n = os.preadv(self._fd, [buf], self.pos, os.RWF_NOWAIT)
                except OSError as e:
                    if isinstance(e, BlockingIOError):
                        raise
                    self.nowait_supported = False  # e.g. EOPNOTSUPP on this filesystem: read normally
                    raise BlockingIOError(str(e)) from None
            elif nowait:
                raise BlockingIOError("RWF_NOWAIT is not available")
            else:
                n = os.preadv(self._fd, [buf], self.pos)
            if n == 0 and len(buf):
                raise DataLoss("{}: blob {} is truncated at {} bytes".format(self.label, self.path, self.pos))
            self.pos += n
            return n
        except BaseException as e:
            if not isinstance(e, BlockingIOError):
                self.close()
            raise

    def finish(self) -> None:
        """Close the file after the last chunk; ``DataLoss`` if the blob changed on disk while it was read."""
        if self._fd is None:
            return
        after = os.fstat(self._fd)
        self.close()
        if _fingerprint(after) != _fingerprint(self._before):
            raise DataLoss("{}: blob {} changed on disk while it was sent".format(self.label, self.path))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
