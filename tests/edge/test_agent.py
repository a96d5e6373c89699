"""End to end on loopback: cloud-server publishes, edge-agent pulls, fine-tunes, serves and hot-swaps."""
import os
import threading
import time

import grpc
import pytest

from cloud.pipeline import run_pretrain
from cloud.server import CloudServer
from edge.agent import Agent
from edge.service import serve_inference
from shared.data import make_synthetic
from shared.experiment import prepare
from shared.rpc import InferenceStub, pb
from shared.training import Stage1Config, Stage2Config
from tests.util import wait_until

S1 = dict(epochs=2, batch_size=32, encoder_widths=(8, 8, 8), out_steps=4, proj_hidden=32, device="cpu")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    ds = make_synthetic(num_subjects=6, windows_per_subject=40, num_classes=3,
                        modalities=(("acc", 32, 3), ("gyro", 32, 3)), informativeness=(1.0, 0.5), seed=3)
    ds.save(str(root / "syn"))
    prep = prepare(ds, labels_per_class=4, seed=0, val_fraction=0.2, test_fraction=0.2)
    labels = root / "labels"
    for name, d in (("labeled", prep.labeled), ("val", prep.split.val), ("test", prep.split.test)):
        d.save(str(labels / name))
    srv = CloudServer(str(root / "cloud"), "127.0.0.1:0")
    port = srv.start()
    yield {"root": root, "srv": srv, "port": port, "labels": str(labels), "test": prep.split.test}
    srv.stop(grace=1)


def _publish(world, seed):
    out = str(world["root"] / "job{}".format(seed))
    res = run_pretrain(out, str(world["root"] / "syn.npz"), Stage1Config(seed=seed, **S1), labels_per_class=4,
                       name="tiny", progress=False)
    assert res["manifest"]["name"] == "tiny"
    return world["srv"].registry.publish_folder(out)


def _request(ds, idx):
    req = pb.PredictRequest()
    for m, a in ds.x.items():
        w = a[idx]
        req.windows.add(modality=m, shape=list(w.shape), data=w.ravel().tolist(), rate_hz=ds.specs[m].rate_hz)
    return req


def _wait(cond, timeout, what):
    wait_until(cond, timeout, what, every=0.1)


def _serving(agent):
    rt = agent.holder.get()
    return None if rt is None else int(rt.version)


def test_pull_finetune_serve_swap_report_rollback(world, tmp_path, monkeypatch):
    import edge.agent
    loads = []  # folders the agent loads a Runtime from: the verified one must be the one that serves
    original = edge.agent.Runtime.load

    def counting(folder, *a, **k):
        loads.append(os.path.basename(folder.rstrip("/")))
        return original(folder, *a, **k)
    monkeypatch.setattr(edge.agent.Runtime, "load", staticmethod(counting))
    ch = grpc.insecure_channel("127.0.0.1:{}".format(world["port"]))
    state = str(tmp_path / "state")
    cfg = Stage2Config(epochs=4, t_iter=2, batch_size=4, device="cpu")
    agent = Agent(state, world["labels"], channel=ch, model_name="tiny", config=cfg, edge_id="test-edge")
    server, port = serve_inference(agent.holder, "127.0.0.1:0")
    stub = InferenceStub(grpc.insecure_channel("127.0.0.1:{}".format(port)))
    with pytest.raises(grpc.RpcError) as e:
        stub.Predict(_request(world["test"], [0]))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,), kwargs={"backoff_max_s": 1.0}, daemon=True)
    runner.start()
    try:
        _publish(world, seed=0)
        _wait(lambda: _serving(agent) == 1, 180, "v1 to serve")
        test = world["test"]
        resp = stub.Predict(_request(test, list(range(8))))
        assert len(resp.predictions) == 8 and resp.model_version == 1
        assert abs(sum(resp.predictions[0].beta) - 1.0) < 1e-4

        def chunks():
            for k in range(3):  # 3 windows back to back, interleaved by modality
                for m, a in test.x.items():
                    yield pb.SamplesChunk(modality=m, data=a[k].ravel().tolist(), channels=a.shape[2],
                                          rate_hz=test.specs[m].rate_hz)
        outs = list(stub.StreamPredict(chunks()))
        assert len(outs) == 5  # 3 windows of T samples at a T/2 hop: starts 0, T/2, ..., 2T
        assert [o.window_index for o in outs] == list(range(5))

        # hot swap under load: no request may fail while v2 replaces v1
        failures, calls, versions = [], [0], set()

        def hammer():
            while not stop.is_set() and not done.is_set():
                try:
                    versions.add(stub.Predict(_request(test, [0, 1])).model_version)
                    calls[0] += 1
                except grpc.RpcError as err:
                    failures.append(err.code())
        done = threading.Event()
        th = threading.Thread(target=hammer, daemon=True)
        th.start()
        _publish(world, seed=1)
        _wait(lambda: _serving(agent) == 2, 180, "v2 to serve")
        time.sleep(0.3)
        done.set()
        th.join(10)
        assert not failures and calls[0] > 0 and versions == {1, 2}
        # loaded once per install (on a TX2: one TensorRT engine build), then served as verified
        assert loads.count(".v1.partial") == 1 and loads.count(".v2.partial") == 1, loads
        assert "v1" not in loads and "v2" not in loads, loads

        reports = world["srv"].registry.list_reports(name="tiny")
        assert {r["version"] for r in reports} == {1, 2}
        stages = {s["stage"] for s in reports[-1]["stages"]}
        assert {"download", "finetune", "export", "verify"} <= stages
        assert "val_accuracy" in reports[-1]["metrics"]
        fin = [st for st in reports[-1]["stages"] if st["stage"] == "finetune"][0]
        assert fin["energy_source"] and fin["energy_joules"] > 0 and fin["wall_seconds"] > 0

        # a corrupt download never replaces the serving model
        v3 = _publish(world, seed=2)
        path, _, _ = world["srv"].registry.open_blob("tiny", v3["version"], "encoders.pt")
        os.chmod(path, 0o644)
        with open(path, "r+b") as f:
            f.seek(100)
            f.write(b"\x00corrupt\x00")
        time.sleep(3.0)
        assert _serving(agent) == 2
        assert not os.path.exists(agent.finetuned_dir("tiny", 3))
    finally:
        stop.set()
        runner.join(15)
    # a restarted agent serves at once and does not redo a finished fine-tune
    again = Agent(state, world["labels"], channel=None, model_name="tiny", config=cfg)
    assert int(again.load_serving().version) == 2
    assert again.finetune(os.path.join(state, "models", "tiny", "v2"))["stages"] == []
    # rollback keeps the previous version on disk and serves it again
    prev = again.rollback()
    assert prev["version"] == 1 and int(again.load_serving().version) == 1
    server.stop(1)
