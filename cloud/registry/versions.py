"""Versions of the registry: publish, read, aliases, pins, delete.

* ``publish`` first copies every file into the blob store (temp file, fsync, rename to its content
  address, fsync the folder; hashed on the way, so it is verified), then writes the version row, its
  file rows, the blobs' verification records and the alias moves in **one** SQLite transaction. A
  crash before the commit leaves no trace in the metadata; blobs written before it are orphans that
  ``gc`` removes, temp files are removed at the next start (``clean_tmp``). Readers see a version with
  all its files and aliases, or not at all.
* Version numbers come from a per-model counter incremented inside that transaction: monotonic and
  never reused, even after ``delete``.
* ``gc`` and the last step of ``publish`` both hold SQLite's write lock; ``publish`` checks, under that
  lock, that its blobs are still present and re-ingests them if a concurrent ``gc`` removed them.
* ``aliases`` are not frozen into the stored document: every read fills in the current ones.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from .blobs import _BlobVanished
from .errors import Conflict, InvalidArgument, NotFound, RegistryError
from .validation import (_check_alias, _check_name, _check_rel_path, _check_text, _check_version, _dumps, _plain_json,
                         _utc_now)

log = logging.getLogger("cloud.registry")


class Versions:
    """Model versions, aliases and pins (mixed into ``Registry``)."""

    _tx: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _read: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _conn: Callable[[], sqlite3.Connection]

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
                        try:
                            st = self.blob_path(e["sha256"]).stat()
                        except FileNotFoundError:
                            raise _BlobVanished(e["path"]) from None
                        if st.st_size != e["size"]:
                            raise _BlobVanished(e["path"])
                        self._record_verified(c, e["sha256"], st)  # _ingest hashed it just now
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

    def publish_folder(self, folder: str | os.PathLike[str],
                       aliases: Sequence[str] | str | None = ("latest",)) -> dict[str, Any]:
        """``publish`` the version written into ``folder`` (by the pipeline, an alignment export): its
        ``manifest.json`` (read with ``shared.manifest.read_manifest``: ``DataError`` naming the file when
        missing or not a manifest) and every file it lists with its kind, relative to ``folder``."""
        from shared.manifest import read_manifest
        man = read_manifest(str(folder))
        files = collections.OrderedDict(
            (f["path"], (os.path.join(str(folder), f["path"]), f["kind"])) for f in man["files"])
        return self.publish(man["name"], files, man, aliases=aliases)

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

