"""Tests of cloud.registry: real SQLite and real files under tmp_path."""
import hashlib
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from cloud.registry import (
    MIN_CHUNK_SIZE,
    RESTART_ERROR,
    SCHEMA_VERSION,
    Conflict,
    DataLoss,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Registry,
    RegistryError,
    Retention,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture()
def reg(tmp_path):
    r = Registry(tmp_path / "data")
    yield r
    r.close()


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _publish(reg, tmp_path, name="har", payload=b"weights-1", aliases=("latest",), extra=None):
    src = tmp_path / "src" / hashlib.sha256(payload).hexdigest()[:12]
    files = {"encoders.onnx": (_write(src / "enc.onnx", payload), "onnx"),
             "cfg/config.json": (_write(src / "config.json", b'{"a": 1}'), "config")}
    manifest = {"format": "cosmo-har/manifest", "classes": ["walk", "sit"], "feature_dim": 128}
    if extra:
        manifest.update(extra)
    return reg.publish(name, files, manifest, aliases=aliases)


def _versions(reg, name="har"):
    return [m["version"] for m in reg.list_versions(name)]


def _flip_byte(path, at=3):
    os.chmod(path, 0o644)  # blobs are stored read-only
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------- publish

def test_publish_two_versions_fills_manifest_and_moves_latest(reg, tmp_path):
    given = {"classes": ["a"], "version": 99}
    m1 = reg.publish("har", {"w.bin": (_write(tmp_path / "w1", b"one"), "state_dict")}, given)
    assert given == {"classes": ["a"], "version": 99}  # the caller's dict is not modified
    assert (m1["name"], m1["version"], m1["aliases"]) == ("har", 1, ["latest"])
    assert m1["files"] == [{"path": "w.bin", "kind": "state_dict", "size": 3,
                            "sha256": hashlib.sha256(b"one").hexdigest()}]
    assert m1["created_at"].endswith("Z") and m1["classes"] == ["a"]
    blob = reg.blob_path(m1["files"][0]["sha256"])
    assert blob.read_bytes() == b"one"
    assert blob.parent.name == m1["files"][0]["sha256"][:2] and blob.parent.parent == tmp_path / "data/blobs/sha256"
    assert (tmp_path / "data/registry.sqlite3").is_file() and reg.schema_version() == SCHEMA_VERSION

    m2 = _publish(reg, tmp_path, aliases=("latest", "stable"))
    assert m2["version"] == 2 and m2["aliases"] == ["latest", "stable"]
    assert [f["path"] for f in m2["files"]] == ["encoders.onnx", "cfg/config.json"]
    assert reg.resolve("har", "latest") == 2
    assert reg.get("har", version=1)["aliases"] == []
    assert reg.get("har", alias="stable") == reg.get("har", version=2)
    assert reg.get("har", version=2)["files"] == m2["files"]


def test_get_list_and_not_found(reg, tmp_path):
    _publish(reg, tmp_path)
    _publish(reg, tmp_path, name="other", payload=b"x")
    assert [(m["name"], m["version"]) for m in reg.list_versions()] == [("har", 1), ("other", 1)]
    assert reg.list_versions("nope") == []
    with pytest.raises(NotFound, match="'har' has no version 7"):
        reg.get("har", version=7)
    with pytest.raises(NotFound, match="model 'nope' not found"):
        reg.get("nope", version=1)
    with pytest.raises(NotFound, match="'har' has no alias 'stable'"):
        reg.get("har", alias="stable")
    with pytest.raises(NotFound, match="alias 'stable'"):
        reg.resolve("har", "stable")
    with pytest.raises(NotFound, match="no file 'missing.onnx'"):
        reg.open_blob("har", 1, "missing.onnx")
    with pytest.raises(ValueError, match="version/alias"):
        reg.get("har")
    with pytest.raises(ValueError, match="version/alias"):
        reg.get("har", version=1, alias="latest")


@pytest.mark.parametrize("name", ["", "-x", "a/b", "a b", "x" * 129, "é", None])
def test_invalid_model_names_rejected(reg, tmp_path, name):
    with pytest.raises(InvalidArgument, match="^name:") as e:
        reg.publish(name, {"w": (_write(tmp_path / "w", b"1"), "onnx")}, {})
    assert isinstance(e.value, ValueError) and e.value.field == "name"


@pytest.mark.parametrize("path", ["/abs.onnx", "../up.onnx", "a/../b", "a//b", "./a", "a\\b", "", "C:x"])
def test_invalid_file_paths_rejected(reg, tmp_path, path):
    with pytest.raises(ValueError, match=r"^files\[") as e:
        reg.publish("har", {path: (_write(tmp_path / "w", b"1"), "onnx")}, {})
    assert e.value.field == "files[{!r}]".format(path)
    assert reg.list_versions() == []


def test_other_invalid_arguments_name_the_field(reg, tmp_path):
    w = _write(tmp_path / "w", b"1")
    cases = [
        (dict(files={}), "files"),
        (dict(files={"a": (tmp_path / "missing", "onnx")}), "files['a'].local_path"),
        (dict(files={"a": (w, "")}), "files['a'].kind"),
        (dict(files={"a": w}), "files['a']"),
        (dict(aliases=("bad alias",)), "aliases"),
        (dict(aliases=("123",)), "aliases"),
        (dict(manifest={"quality": [0.5, float("nan")]}), "manifest.quality[1]"),
        (dict(manifest={"x": object()}), "manifest.x"),
    ]
    for kwargs, field in cases:
        args = dict(files={"a": (w, "onnx")}, manifest={}, aliases=("latest",))
        args.update(kwargs)
        with pytest.raises(InvalidArgument) as e:
            reg.publish("har", args["files"], args["manifest"], aliases=args["aliases"])
        assert e.value.field == field, (kwargs, str(e.value))
        assert str(e.value).startswith(field + ":")
    with pytest.raises(InvalidArgument, match="^alias:"):
        reg.resolve("har", "")
    with pytest.raises(InvalidArgument, match="^version:"):
        reg.get("har", version=0)


def test_concurrent_publishers_get_distinct_monotonic_versions(reg, tmp_path):
    srcs = [_write(tmp_path / "src{}".format(i), b"w%d" % i) for i in range(8)]
    got, errors = [], []

    def work(i):
        try:
            got.append(reg.publish("har", {"w": (srcs[i], "onnx")}, {})["version"])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(got) == list(range(1, 9))
    assert reg.resolve("har", "latest") == 8


# ------------------------------------------------------------------------------ aliases, delete

def test_delete_refused_while_aliased_or_pinned(reg, tmp_path):
    _publish(reg, tmp_path, payload=b"a")
    _publish(reg, tmp_path, payload=b"b")
    assert reg.set_alias("har", "stable", 1) is None
    with pytest.raises(Conflict, match="version 1 .*'stable'"):
        reg.delete("har", 1)
    with pytest.raises(Conflict, match="'latest'"):
        reg.delete("har", 2)
    assert reg.set_alias("har", "stable", 2) == 1
    reg.pin("har", 1)
    assert reg.is_pinned("har", 1)
    with pytest.raises(Conflict, match="version 1 is pinned"):
        reg.delete("har", 1)
    reg.unpin("har", 1)
    reg.delete("har", 1)
    assert _versions(reg) == [2]
    with pytest.raises(NotFound, match="no version 1"):
        reg.delete("har", 1)
    with pytest.raises(NotFound, match="no version 1"):
        reg.set_alias("har", "stable", 1)
    with pytest.raises(NotFound):
        reg.pin("har", 1)


def test_version_numbers_never_reused_after_delete(reg, tmp_path):
    for p in (b"a", b"b", b"c"):
        _publish(reg, tmp_path, payload=p)
    reg.set_alias("har", "latest", 2)
    reg.delete("har", 3)
    assert _versions(reg) == [1, 2]
    assert _publish(reg, tmp_path, payload=b"d")["version"] == 4
    reg.set_alias("har", "latest", 1)
    reg.delete("har", 2)
    reg.delete("har", 4)
    reg.remove_alias("har", "latest")
    reg.delete("har", 1)
    assert reg.list_versions("har") == []
    assert _publish(reg, tmp_path, payload=b"e")["version"] == 5
    with pytest.raises(NotFound, match="alias 'nope'"):
        reg.remove_alias("har", "nope")


def test_alias_moves_are_atomic_for_concurrent_readers(reg, tmp_path):
    _publish(reg, tmp_path, payload=b"a")
    _publish(reg, tmp_path, payload=b"b")
    reg.set_alias("har", "stable", 1)
    stop = threading.Event()
    seen, errors = set(), []

    def reader():
        try:
            while not stop.is_set():
                seen.add(reg.resolve("har", "stable"))
                m = reg.get("har", alias="stable")
                assert "stable" in m["aliases"]
        except Exception as e:
            errors.append(e)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    try:
        for i in range(150):
            reg.set_alias("har", "stable", 1 + i % 2)
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert not errors, errors[:3]
    assert seen <= {1, 2} and seen


# ------------------------------------------------------------------------------------ crashes

@pytest.mark.parametrize("when", ["before_insert", "after_insert"])
def test_failure_mid_publish_leaves_no_version(reg, tmp_path, monkeypatch, when):
    _publish(reg, tmp_path, payload=b"a")
    before = reg.list_versions()
    original = Registry._insert_version

    def boom(self, c, *args):
        if when == "after_insert":
            original(self, c, *args)  # rows written inside the transaction, then the crash
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(Registry, "_insert_version", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _publish(reg, tmp_path, payload=b"orphan", aliases=("latest", "stable"))
    monkeypatch.undo()
    assert reg.list_versions() == before
    assert reg.resolve("har", "latest") == 1
    with pytest.raises(NotFound):
        reg.resolve("har", "stable")
    orphan = reg.blob_path(hashlib.sha256(b"orphan").hexdigest())
    assert orphan.is_file()  # the blob was written before the transaction
    assert reg.gc(tmp_max_age_s=0)["blobs_removed"] == 1
    assert not orphan.exists()
    assert _publish(reg, tmp_path, payload=b"b")["version"] == 2
    reg.verify_blob("har", 1, "encoders.onnx")  # gc kept referenced blobs
    reg.verify_blob("har", 2, "encoders.onnx")


def test_process_killed_mid_transaction_leaves_no_version(tmp_path):
    data = tmp_path / "data"
    with Registry(data) as reg:
        _publish(reg, tmp_path, payload=b"a")
    src = _write(tmp_path / "w2", b"never committed")
    child = textwrap.dedent("""
        import os, sys
        from cloud.registry import Registry
        original = Registry._insert_version
        def die(self, c, *args):
            original(self, c, *args)
            os._exit(17)  # no rollback, no cleanup: like a kill -9 before COMMIT
        Registry._insert_version = die
        Registry(sys.argv[1]).publish("har", {"w": (sys.argv[2], "onnx")}, {})
    """)
    r = subprocess.run([sys.executable, "-c", child, str(data), str(src)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 17, r.stderr
    with Registry(data) as reg:
        assert _versions(reg) == [1] and reg.resolve("har", "latest") == 1
        assert _publish(reg, tmp_path, payload=b"b")["version"] == 2


def test_gc_during_publish_reingests_vanished_blob(reg, tmp_path, monkeypatch):
    original = Registry._ingest

    def ingest_then_gc(self, local, field):
        out = original(self, local, field)
        if not getattr(self, "_gc_done", False):
            self._gc_done = True
            assert self.gc(tmp_max_age_s=0)["blobs_removed"] == 1  # not referenced yet
        return out

    monkeypatch.setattr(Registry, "_ingest", ingest_then_gc)
    m = reg.publish("har", {"w": (_write(tmp_path / "w", b"content"), "onnx")}, {})
    reg.verify_blob("har", m["version"], "w")


# ----------------------------------------------------------------------------- blobs, reading

def test_corrupted_blob_detected(reg, tmp_path):
    m = _publish(reg, tmp_path, payload=bytes(range(256)) * 40)
    reg.verify_blob("har", 1, "encoders.onnx")
    path, size, digest = reg.open_blob("har", 1, "encoders.onnx")
    assert (size, digest) == (m["files"][0]["size"], m["files"][0]["sha256"])
    _flip_byte(path, at=5000)
    with pytest.raises(DataLoss, match="'encoders.onnx'"):
        reg.verify_blob("har", 1, "encoders.onnx")
    # the blob changed since it was verified: re-hashed before the first byte goes out, from any offset
    for offset in (0, 8000, size):
        with pytest.raises(DataLoss, match="'encoders.onnx'"):
            reg.read_chunks("har", 1, "encoders.onnx", offset)
    # once found bad it stays refused, whatever its stat looks like now
    with pytest.raises(DataLoss, match="failed verification"):
        reg.read_chunks("har", 1, "encoders.onnx")
    _publish(reg, tmp_path, payload=bytes(range(256)) * 40)  # same content again: the blob is repaired
    reg.verify_blob("har", 1, "encoders.onnx")


def test_missing_or_truncated_blob_is_data_loss(reg, tmp_path):
    _publish(reg, tmp_path)
    path, _, _ = reg.open_blob("har", 1, "cfg/config.json")
    os.chmod(path, 0o644)
    path.write_bytes(b"{}")
    with pytest.raises(DataLoss, match="'cfg/config.json'.*bytes on disk"):
        reg.read_chunks("har", 1, "cfg/config.json")
    path.unlink()
    with pytest.raises(DataLoss, match="'cfg/config.json'.*missing"):
        reg.verify_blob("har", 1, "cfg/config.json")
    # republishing the same content repairs the blob store
    _publish(reg, tmp_path)
    reg.verify_blob("har", 1, "cfg/config.json")


@pytest.mark.parametrize("offset", [0, 1, 999, MIN_CHUNK_SIZE, 3 * MIN_CHUNK_SIZE - 1, 3 * MIN_CHUNK_SIZE])
def test_read_chunks_from_offset_returns_the_remainder(reg, tmp_path, offset):
    data = os.urandom(3 * MIN_CHUNK_SIZE)
    _publish(reg, tmp_path, payload=data)
    got = list(reg.read_chunks("har", 1, "encoders.onnx", offset, 1000))  # raised to the floor
    assert b"".join(b for _, b in got) == data[offset:]
    pos = offset
    for off, b in got:
        assert off == pos and 0 < len(b) <= MIN_CHUNK_SIZE
        pos += len(b)
    whole = list(reg.read_chunks("har", 1, "encoders.onnx", offset, 0))  # 0: the default, 1 MiB
    assert len(whole) == (offset < len(data)) and b"".join(b for _, b in whole) == data[offset:]


def test_unchanged_blob_is_served_without_hashing_and_a_blob_changed_mid_send_is_data_loss(reg, tmp_path,
                                                                                         monkeypatch):
    import cloud.registry.blobs as blobs
    data = os.urandom(4 * MIN_CHUNK_SIZE)
    _publish(reg, tmp_path, payload=data)
    calls = []
    monkeypatch.setattr(blobs, "_hash_file", lambda p: calls.append(p) or (_ for _ in ()).throw(AssertionError))
    assert b"".join(b for _, b in reg.read_chunks("har", 1, "encoders.onnx", 0, MIN_CHUNK_SIZE)) == data
    assert calls == []  # verified at publish; size, mtime and inode unchanged: no re-hash
    monkeypatch.undo()
    path, _, _ = reg.open_blob("har", 1, "encoders.onnx")
    it = reg.read_chunks("har", 1, "encoders.onnx", 0, MIN_CHUNK_SIZE)
    next(it)
    _flip_byte(path, at=3 * MIN_CHUNK_SIZE)  # rewritten while being sent
    with pytest.raises(DataLoss, match="changed on disk while it was sent"):
        list(it)


def test_scrub_finds_corruption_that_keeps_size_and_mtime(reg, tmp_path):
    _publish(reg, tmp_path, payload=bytes(range(256)) * 40)
    path, _, _ = reg.open_blob("har", 1, "encoders.onnx")
    st = path.stat()
    _flip_byte(path, at=100)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot: same size, same mtime
    assert reg.scrub() == {"checked": 2, "bad": 1, "bytes": 10240 + len(b'{"a": 1}')}
    with pytest.raises(DataLoss, match="failed verification"):
        reg.read_chunks("har", 1, "encoders.onnx")
    _publish(reg, tmp_path, payload=bytes(range(256)) * 40)  # republishing repairs it
    assert b"".join(b for _, b in reg.read_chunks("har", 1, "encoders.onnx")) == bytes(range(256)) * 40


def test_read_chunks_offset_errors(reg, tmp_path):
    _publish(reg, tmp_path, payload=b"12345")
    with pytest.raises(OutOfRange, match="offset 6 .*5 bytes"):
        reg.read_chunks("har", 1, "encoders.onnx", 6)
    assert list(reg.read_chunks("har", 1, "encoders.onnx", 5)) == []
    with pytest.raises(InvalidArgument, match="^offset:"):
        reg.read_chunks("har", 1, "encoders.onnx", -1)
    with pytest.raises(InvalidArgument, match="^chunk_size:"):
        reg.read_chunks("har", 1, "encoders.onnx", 0, -5)
    with pytest.raises(NotFound, match="no version 3"):
        reg.read_chunks("har", 3, "encoders.onnx")


def test_identical_content_is_stored_once(reg, tmp_path):
    _publish(reg, tmp_path, payload=b"same")
    _publish(reg, tmp_path, payload=b"same")
    blobs = [p for p in (tmp_path / "data/blobs/sha256").rglob("*") if p.is_file()]
    assert len(blobs) == 2  # encoders + config, shared by both versions
    assert reg.gc()["blobs_removed"] == 0


# ------------------------------------------------------------------------------------- events

def _drain(sub):
    out = []
    while True:
        try:
            out.append(sub.get(timeout=0))
        except queue.Empty:
            return out


def test_events_for_publish_alias_and_delete(reg, tmp_path):
    sub = reg.subscribe()
    only_other = reg.subscribe("other")
    _publish(reg, tmp_path, payload=b"a")
    _publish(reg, tmp_path, payload=b"b")
    reg.set_alias("har", "stable", 1)
    reg.set_alias("har", "stable", 1)  # no move, no event
    reg.set_alias("har", "stable", 2)
    reg.delete("har", 1)
    reg.remove_alias("har", "stable")
    evs = [(e["kind"], e["name"], e["version"], e["alias"]) for e in _drain(sub)]
    assert evs == [("PUBLISHED", "har", 1, None), ("ALIAS_MOVED", "har", 1, "latest"),
                   ("PUBLISHED", "har", 2, None), ("ALIAS_MOVED", "har", 2, "latest"),
                   ("ALIAS_MOVED", "har", 1, "stable"), ("ALIAS_MOVED", "har", 2, "stable"),
                   ("DELETED", "har", 1, None), ("ALIAS_MOVED", "har", None, "stable")]
    assert only_other.empty()
    reg.unsubscribe(sub)
    assert sub.get(timeout=0) is None  # closed and drained
    _publish(reg, tmp_path, payload=b"c")
    assert sub.qsize() == 0


def test_slow_subscriber_drops_oldest_and_never_blocks(reg, tmp_path):
    sub = reg.subscribe(maxsize=3)
    _publish(reg, tmp_path, payload=b"a")
    reg.set_alias("har", "s1", 1)
    reg.set_alias("har", "s2", 1)
    reg.set_alias("har", "s3", 1)  # 5 events into a queue of 3
    evs = _drain(sub)
    assert [e["alias"] for e in evs] == ["s1", "s2", "s3"]
    assert [e["dropped"] for e in evs] == [2, 0, 0] and sub.dropped_total == 2
    assert [e["seq"] for e in evs] == sorted(e["seq"] for e in evs)


def test_events_from_another_registry_object_or_process_arrive(reg, tmp_path):
    sub = reg.subscribe("har")
    jobs = reg.subscribe_jobs()
    with Registry(tmp_path / "data") as other:  # stands for a job-runner worker process
        _publish(other, tmp_path, payload=b"from-worker")
        job = other.create_job("pretrain", "synthetic", "{}")
    first = sub.get(timeout=10)  # picked up by the tailer thread within event_poll_s
    assert (first["kind"], first["version"]) == ("PUBLISHED", 1)
    assert sub.get(timeout=10)["kind"] == "ALIAS_MOVED"
    assert jobs.get(timeout=10)["job"]["id"] == job["id"]
    reg.set_alias("har", "stable", 1)  # local changes still arrive, once, in commit order
    ev = sub.get(timeout=10)
    assert (ev["kind"], ev["alias"]) == ("ALIAS_MOVED", "stable") and ev["seq"] > first["seq"]
    assert sub.empty()


def test_no_events_for_a_rolled_back_publish_and_bounded_log(reg, tmp_path, monkeypatch):
    sub = reg.subscribe()
    monkeypatch.setattr(Registry, "_insert_version", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        _publish(reg, tmp_path)
    monkeypatch.undo()
    assert sub.empty()
    reg.retention = Retention(events_keep=5)
    _publish(reg, tmp_path)
    for i in range(10):
        reg.set_alias("har", "a{}".format(i), 1)
    assert len(_drain(sub)) == 12
    assert reg._conn().execute("SELECT COUNT(*) FROM events").fetchone()[0] == 5


def test_events_pruned_before_delivery_count_as_dropped(tmp_path, monkeypatch):
    with Registry(tmp_path / "data", event_poll_s=1000) as reg, \
            Registry(tmp_path / "data", retention=Retention(events_keep=2)) as other:
        sub = reg.subscribe()
        _publish(other, tmp_path)  # 2 events
        for i in range(4):
            other.set_alias("har", "a{}".format(i), 1)  # 4 more; the log keeps the last 2
        reg._pump()  # what the tailer thread does every event_poll_s
        evs = _drain(sub)
        assert [e["alias"] for e in evs] == ["a2", "a3"] and [e["dropped"] for e in evs] == [4, 0]


def test_subscriber_wakes_up_on_event_from_another_thread(reg, tmp_path):
    sub = reg.subscribe()
    t = threading.Thread(target=_publish, args=(reg, tmp_path))
    t.start()
    assert sub.get(timeout=10)["kind"] == "PUBLISHED"
    assert sub.get(timeout=10)["kind"] == "ALIAS_MOVED"
    t.join()
    with pytest.raises(queue.Empty):
        sub.get(timeout=0.01)


# ----------------------------------------------------------------------------------- reports

def test_reports_stored_and_listed(reg, tmp_path):
    _publish(reg, tmp_path)
    _publish(reg, tmp_path, payload=b"b")
    stages = [{"stage": "finetune", "wall_seconds": 12.5, "energy_joules": 30.0, "energy_source": "estimate"}]
    r1 = reg.report_metrics("jetson-1", "har", 1, stages, {"val_accuracy": 0.9}, "jetson-tx2", "CUDAExecutionProvider")
    r2 = reg.report_metrics("jetson-2", "har", 2, [], {"test_macro_f1": 1}, "", "")
    assert r2 > r1
    got = reg.list_reports("har", 1)
    assert len(got) == 1 and got[0]["id"] == r1 and got[0]["stages"] == stages
    assert got[0]["metrics"] == {"val_accuracy": 0.9} and got[0]["device"] == "jetson-tx2"
    assert [r["id"] for r in reg.list_reports()] == [r1, r2] == [r["id"] for r in reg.list_reports("har")]
    assert reg.list_reports("other") == []
    with pytest.raises(InvalidArgument, match="^edge_id:"):
        reg.report_metrics("", "har", 1, [], {}, "d", "CPU")
    with pytest.raises(InvalidArgument, match=r"^metrics\['acc'\]:"):
        reg.report_metrics("e", "har", 1, [], {"acc": float("inf")}, "d", "CPU")
    with pytest.raises(InvalidArgument, match=r"^stages\[0\]:"):
        reg.report_metrics("e", "har", 1, ["x"], {}, "d", "CPU")
    with pytest.raises(NotFound, match="no version 9"):
        reg.report_metrics("e", "har", 9, [], {}, "d", "CPU")
    with pytest.raises(NotFound, match="'ghost' not found"):
        reg.report_metrics("e", "ghost", 1, [], {}, "d", "CPU")


# -------------------------------------------------------------------------------------- jobs

def test_jobs_lifecycle(reg):
    sub = reg.subscribe_jobs()
    job = reg.create_job("pretrain", "synthetic", '{"epochs": 2}')
    assert job["state"] == "QUEUED" and len(job["id"]) == 32 and job["progress"] is None
    assert job["created_at"] == job["updated_at"]
    assert reg.claim_next_job()["id"] == job["id"]
    assert reg.claim_next_job() is None
    j = reg.update_job(job["id"], progress={"stage": "pretrain", "epoch": 1, "epochs": 2})
    assert j["state"] == "RUNNING" and j["progress"]["epoch"] == 1
    j = reg.update_job(job["id"], state="SUCCEEDED", model_name="har", model_version=3)
    assert (j["state"], j["model_name"], j["model_version"]) == ("SUCCEEDED", "har", 3)
    with pytest.raises(Conflict, match="already SUCCEEDED"):
        reg.update_job(job["id"], state="RUNNING")
    assert [e["job"]["state"] for e in _drain(sub)] == ["QUEUED", "RUNNING", "RUNNING", "SUCCEEDED"]
    with pytest.raises(NotFound, match="job 'nope'"):
        reg.get_job("nope")
    with pytest.raises(NotFound, match="job 'nope'"):
        reg.update_job("nope", state="RUNNING")
    with pytest.raises(InvalidArgument, match="^colour:"):
        reg.update_job(job["id"], colour="red")
    with pytest.raises(InvalidArgument, match="^state:"):
        reg.update_job(job["id"], state="DONE")
    with pytest.raises(InvalidArgument, match="^config_json:"):
        reg.create_job("pretrain", "synthetic", "{not json")
    assert reg.create_job("quality", "hapt", {"k": 1})["config_json"] == '{"k":1}'


def test_jobs_persist_across_restart_and_recover(tmp_path):
    data = tmp_path / "data"
    with Registry(data) as reg:
        done = reg.create_job("pretrain", "synthetic", "{}")
        reg.update_job(done["id"], state="RUNNING")
        reg.update_job(done["id"], state="FAILED", error="out of memory")
        running = reg.create_job("pretrain", "hapt", "{}")
        reg.update_job(running["id"], state="RUNNING")
        queued = reg.create_job("quality", "hapt", "{}")
        assert reg.recover_jobs() == {"failed": [], "requeued": [queued["id"]]}  # own RUNNING job kept
    with Registry(data) as reg:  # "restart"
        assert reg.get_job(done["id"])["error"] == "out of memory"
        assert [j["id"] for j in reg.list_jobs()] == [done["id"], running["id"], queued["id"]]
        assert reg.recover_jobs() == {"failed": [running["id"]], "requeued": [queued["id"]]}
        j = reg.get_job(running["id"])
        assert (j["state"], j["error"]) == ("FAILED", RESTART_ERROR)
        assert [j["id"] for j in reg.list_jobs(["QUEUED"])] == [queued["id"]]
        assert reg.recover_jobs(requeue_queued=False)["failed"] == [queued["id"]]
        assert reg.list_jobs("QUEUED") == [] and len(reg.list_jobs(["FAILED"])) == 3


# ------------------------------------------------------------------------------------ restart

def test_reopened_registry_lists_the_same_versions(tmp_path):
    data = tmp_path / "data"
    with Registry(data) as reg:
        _publish(reg, tmp_path, payload=b"a", extra={"quality": {"acc": 0.5}})
        _publish(reg, tmp_path, payload=b"b")
        reg.set_alias("har", "stable", 1)
        reg.pin("har", 1)
        before = reg.list_versions()
    with Registry(data) as reg:
        assert reg.list_versions() == before
        assert reg.is_pinned("har", 1) and before[0]["quality"] == {"acc": 0.5}
        assert _publish(reg, tmp_path, payload=b"c")["version"] == 3
        assert b"".join(b for _, b in reg.read_chunks("har", 1, "encoders.onnx")) == b"a"


def test_newer_schema_is_refused(tmp_path):
    data = tmp_path / "data"
    with Registry(data) as reg:
        reg._conn().execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(RegistryError, match="schema_version 99"):
        Registry(data)


def test_closed_registry_refuses_calls(tmp_path):
    reg = Registry(tmp_path / "data")
    sub = reg.subscribe()
    reg.close()
    assert sub.get(timeout=0) is None
    with pytest.raises(RegistryError, match="closed"):
        reg.list_versions()


def test_retention_bounds_jobs_reports_and_events(tmp_path):
    with Registry(tmp_path / "data", retention=Retention(jobs_keep=2, reports_keep=3, events_keep=4)) as reg:
        _publish(reg, tmp_path)
        for i in range(5):
            reg.report_metrics("edge-{}".format(i), "har", 1, [], {"acc": 0.5}, "cpu", "CPUExecutionProvider")
        assert [r["edge_id"] for r in reg.list_reports()] == ["edge-2", "edge-3", "edge-4"]  # bounded on insert
        jobs = [reg.create_job("pretrain", "synthetic") for _ in range(4)]
        for j in jobs[:3]:
            reg.update_job(j["id"], state="SUCCEEDED")
        pruned = reg.prune()
        assert pruned["jobs"] == [jobs[0]["id"]]  # the 2 newest finished jobs stay; the queued one too
        assert [j["id"] for j in reg.list_jobs()] == [j["id"] for j in jobs[1:]]
        assert reg._conn().execute("SELECT COUNT(*) FROM events").fetchone()[0] <= 4
        # by age: everything finished is older than a tiny max age
        reg.retention = Retention(jobs_max_age_s=1e-9, reports_max_age_s=1e-9, events_max_age_s=1e-9)
        time.sleep(1.1)
        pruned = reg.prune()
        assert sorted(pruned["jobs"]) == sorted(j["id"] for j in jobs[1:3]) and pruned["reports"] == 3
        assert [j["state"] for j in reg.list_jobs()] == ["QUEUED"]  # active jobs are never pruned


def test_temp_files_of_a_killed_publish_are_cleaned_at_start(tmp_path):
    import subprocess
    import sys
    with Registry(tmp_path / "data") as reg:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        (reg.tmp_dir / "ingest-{}-abc".format(dead)).write_bytes(b"half a blob")
        mine = reg.tmp_dir / "ingest-{}-xyz".format(os.getpid())  # a live publish: left alone
        mine.write_bytes(b"in progress")
        assert reg.clean_tmp() == 1
        assert sorted(p.name for p in reg.tmp_dir.iterdir()) == [mine.name]


def test_chunks_read_from_the_page_cache_without_waiting_or_say_so(reg, tmp_path):
    data = os.urandom(3 * MIN_CHUNK_SIZE)
    _publish(reg, tmp_path, payload=data)
    chunks = reg.read_chunks("har", 1, "encoders.onnx", 0, MIN_CHUNK_SIZE)
    got = [chunks.read(nowait=True)]  # just written: in the page cache
    chunks.nowait_supported = False  # a filesystem without RWF_NOWAIT: the caller must use a thread
    with pytest.raises(BlockingIOError):
        chunks.read(nowait=True)
    got += list(chunks)  # blocking reads go on where the cached one stopped
    assert b"".join(b for _, b in got) == data and chunks.read() is None


def test_publish_folder_publishes_what_its_manifest_lists(reg, tmp_path):
    """A version folder (pipeline or alignment output) is published from its manifest: every listed file
    with its kind; a folder without a manifest is one DataError naming the file."""
    import json

    from shared.errors import DataError
    folder = tmp_path / "version"
    _write(folder / "w.bin", b"weights")
    _write(folder / "sub" / "m.onnx", b"onnx")
    man = {"format": "cosmo-har/manifest", "name": "har", "version": 0, "input_schema": {}, "classes": ["a"],
           "files": [{"path": "w.bin", "kind": "state_dict"}, {"path": "sub/m.onnx", "kind": "onnx"}]}
    (folder / "manifest.json").write_text(json.dumps(man))
    pub = reg.publish_folder(str(folder), aliases=("latest", "stable"))
    assert [(f["path"], f["kind"], f["size"]) for f in pub["files"]] == [("w.bin", "state_dict", 7),
                                                                       ("sub/m.onnx", "onnx", 4)]
    assert reg.resolve("har", "stable") == pub["version"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty/manifest.json: manifest not found"):
        reg.publish_folder(str(tmp_path / "empty"))
