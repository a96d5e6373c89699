"""Embed in the aligned space and text-to-IMU Search on a real Inference server (127.0.0.1:0), with the tiny
classifier of test_runtime, a real aligned model folder (ONNX IMU encoder + the MiniLM text encoder in
ONNX Runtime) and a real SQLite index; the agent pulling the aligned model from a real cloud server."""
import json
import os
import threading
import time

import grpc
import numpy as np
import pytest

from edge.aligned import AlignedRuntime
from edge.index import WindowIndex
from edge.runtime import Runtime
from edge.service import AlignedHolder, ModelHolder, serve_inference
from shared import rpc
from shared.rpc import pb
from tests.edge.test_aligned import DIM, build_aligned_dir, imu_windows, text_folder
from tests.edge.test_runtime import build_model_dir, raw_windows
from tests.edge.test_service import code_and_details, request

pytest.importorskip("onnxruntime")
pytest.importorskip("grpc_health")
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("search"))
    text = text_folder(tmp_path_factory)
    clf = build_model_dir(root, version=3, seed=0)
    a1 = build_aligned_dir(root, text, version=1, seed=0)
    a2 = build_aligned_dir(root, text, version=2, seed=1)
    return {"root": root, "clf": clf, "rt": Runtime.load(clf["dir"]), "a1": a1, "art1": AlignedRuntime.load(a1["dir"]),
            "a2": a2}


@pytest.fixture(scope="module")
def served(world):
    index = WindowIndex(os.path.join(world["root"], "index.sqlite"), capacity=1000)
    aligned = AlignedHolder(index, world["art1"])
    holder = ModelHolder(world["rt"])
    server, port = serve_inference(holder, "127.0.0.1:0", max_batch=16, max_workers=4, aligned=aligned)
    channel = grpc.insecure_channel("127.0.0.1:{}".format(port))
    yield {"holder": holder, "aligned": aligned, "index": index, "stub": rpc.InferenceStub(channel),
           "target": "127.0.0.1:{}".format(port)}
    channel.close()
    server.stop(None)


def test_embed_in_aligned_and_classifier_space(world, served):
    stub, aligned, index = served["stub"], served["aligned"], served["index"]
    art = world["art1"]
    index.clear()
    w = raw_windows(world["clf"], 4)
    resp = stub.Embed(request(w), timeout=TIMEOUT)
    assert resp.space == "aligned" and resp.dim == DIM and len(resp.embeddings) == 4
    assert (resp.model_name, resp.model_version) == ("cosmo-aligned", 1)
    np.testing.assert_allclose(resp.embeddings[2].values, art.embed(w)[2], atol=1e-5)
    assert index.size == 4  # Embed indexes what it saw, labelled by the aligned zero-shot class
    hit = stub.Search(pb.SearchRequest(embedding=resp.embeddings[2].values, k=1), timeout=TIMEOUT).hits[0]
    assert hit.source == "Embed" and hit.predicted_activity == art.zero_shot(art.embed(w)[2:3])[0]

    aligned.swap(None)  # no aligned model: the classifier's embedding, as before
    try:
        resp = stub.Embed(request(w), timeout=TIMEOUT)
        assert resp.space == "classifier" and resp.dim == 16 and resp.model_name == "tiny"
        code, details = code_and_details(lambda: stub.Search(pb.SearchRequest(text="walking", k=1), timeout=TIMEOUT))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "no aligned model" in details
        info = stub.Info(pb.InfoRequest(), timeout=TIMEOUT)
        assert info.aligned_model == "" and info.index_size == 4
    finally:
        aligned.swap(art)
    assert index.size == 4  # the same model version again: the windows stay


def test_predict_then_search_by_text(world, served):
    stub, index = served["stub"], served["index"]
    art, rt = world["art1"], world["rt"]
    index.clear()
    w = raw_windows(world["clf"], 6)
    t0 = time.time()
    pred = stub.Predict(request(w), timeout=TIMEOUT)
    assert index.size == 6
    resp = stub.Search(pb.SearchRequest(text="walking upstairs", k=4), timeout=TIMEOUT)
    assert (resp.query, resp.index_size, resp.dim) == ("text", 6, DIM)
    assert (resp.model_name, resp.model_version) == ("cosmo-aligned", 1)
    assert resp.text_encoder == "sentence-transformers/all-MiniLM-L6-v2"
    assert len(resp.hits) == 4
    scores = [h.score for h in resp.hits]
    assert scores == sorted(scores, reverse=True)
    expected = np.sort(art.embed(w) @ art.encode_text("walking upstairs"))[::-1][:4]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    labels = {p.label_name for p in pred.predictions}
    for h in resp.hits:
        assert h.source == "Predict" and h.predicted_activity in labels and h.predicted_activity in rt.classes
        assert t0 - 1 <= h.time <= time.time() + 1 and h.window_id > 0
    assert len({h.window_id for h in resp.hits}) == 4

    info = stub.Info(pb.InfoRequest(), timeout=TIMEOUT)
    assert (info.aligned_model, info.aligned_version, info.index_size, info.index_capacity) == \
        ("cosmo-aligned", 1, 6, 1000)
    assert info.model_name == "tiny" and info.embedding_dim == 16


def test_search_by_embedding_finds_the_window_first(world, served):
    stub, index = served["stub"], served["index"]
    art = world["art1"]
    index.clear()
    w = raw_windows(world["clf"], 5)
    stub.Predict(request(w), timeout=TIMEOUT)
    emb = art.embed(w)
    for i in (0, 3):
        resp = stub.Search(pb.SearchRequest(embedding=emb[i].tolist(), k=5), timeout=TIMEOUT)
        assert resp.query == "embedding" and len(resp.hits) == 5
        assert abs(resp.hits[0].score - 1.0) < 1e-4 and resp.hits[1].score < resp.hits[0].score
        stored = index.embedding(resp.hits[0].window_id)
        np.testing.assert_allclose(stored, emb[i], atol=1e-5)


def test_stream_predict_windows_are_indexed(world, served):
    stub, index = served["stub"], served["index"]
    index.clear()
    w = raw_windows(world["clf"], 1)
    chunks = [pb.SamplesChunk(modality=m, channels=a.shape[2], data=a[0, s:s + 16].ravel().tolist())
              for s in (0, 16) for m, a in w.items()]  # interleaved by time, so the window has both
    out = list(stub.StreamPredict(iter(chunks), timeout=TIMEOUT))
    assert len(out) == 1 and index.size == 1
    hit = stub.Search(pb.SearchRequest(text="sitting", k=1), timeout=TIMEOUT).hits[0]
    assert hit.source == "StreamPredict" and hit.predicted_activity == out[0].predictions[0].label_name


def test_bad_searches_are_invalid_argument_naming_the_field(world, served):
    stub, index = served["stub"], served["index"]
    index.clear()
    code, details = code_and_details(lambda: stub.Search(pb.SearchRequest(text="walking", k=1), timeout=TIMEOUT))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "index is empty" in details
    stub.Predict(request(raw_windows(world["clf"], 3)), timeout=TIMEOUT)
    good = [0.1] * DIM
    bad = [
        ("text", pb.SearchRequest(text="", k=1)),  # neither text nor embedding
        ("text", pb.SearchRequest(text="   ", k=1)),  # blank
        ("text", pb.SearchRequest(text="a" * 3000, k=1)),
        ("text", pb.SearchRequest(text="walk " * 300, k=1)),  # over the 256-token limit
        ("text", pb.SearchRequest(text="walking", embedding=good, k=1)),  # both
        ("k", pb.SearchRequest(text="walking", k=0)),
        ("k", pb.SearchRequest(text="walking", k=-2)),
        ("k", pb.SearchRequest(text="walking", k=4)),  # over the index size (3)
        ("embedding", pb.SearchRequest(embedding=[0.1] * (DIM - 1), k=1)),
        ("embedding", pb.SearchRequest(embedding=[0.0] * DIM, k=1)),
        ("embedding", pb.SearchRequest(embedding=[float("nan")] * DIM, k=1)),
    ]
    for field, req in bad:
        code, details = code_and_details(lambda req=req: stub.Search(req, timeout=TIMEOUT))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, code, details)
        assert details.startswith(field + ":"), details
    _, details = code_and_details(lambda: stub.Search(pb.SearchRequest(text="walking", k=4), timeout=TIMEOUT))
    assert details == "k: 4 is over the index size of 3 windows", details
    _, details = code_and_details(lambda: stub.Search(pb.SearchRequest(text="a" * 3000, k=1), timeout=TIMEOUT))
    assert details == "text: 3000 characters, over the limit of 2000", details
    # the server keeps serving
    assert len(stub.Search(pb.SearchRequest(text="walking", k=3), timeout=TIMEOUT).hits) == 3
    assert len(stub.Predict(request(raw_windows(world["clf"], 2)), timeout=TIMEOUT).predictions) == 2


def test_predict_without_every_aligned_modality_still_answers(world, served):
    stub, index = served["stub"], served["index"]
    index.clear()
    w = raw_windows(world["clf"], 2)
    resp = stub.Predict(request({"acc": w["acc"]}), timeout=TIMEOUT)  # the aligned model needs gyro too
    assert len(resp.predictions) == 2 and index.size == 0  # not indexed, not failed
    code, details = code_and_details(lambda: stub.Embed(request({"acc": w["acc"]}), timeout=TIMEOUT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("gyro: missing"), details


def test_index_survives_a_restart(world, served):
    stub, index = served["stub"], served["index"]
    index.clear()
    stub.Predict(request(raw_windows(world["clf"], 6)), timeout=TIMEOUT)
    before = stub.Search(pb.SearchRequest(text="lying down", k=6), timeout=TIMEOUT)
    # a second server process stand-in: a fresh index object on the same file and a fresh runtime
    again = AlignedHolder(WindowIndex(index.path, capacity=1000), AlignedRuntime.load(world["a1"]["dir"]))
    server, port = serve_inference(ModelHolder(), "127.0.0.1:0", max_workers=2, aligned=again)
    channel = grpc.insecure_channel("127.0.0.1:{}".format(port))
    try:
        after = rpc.InferenceStub(channel).Search(pb.SearchRequest(text="lying down", k=6), timeout=TIMEOUT)
        assert [(h.window_id, h.predicted_activity, h.source, h.time) for h in after.hits] == \
            [(h.window_id, h.predicted_activity, h.source, h.time) for h in before.hits]
        np.testing.assert_allclose([h.score for h in after.hits], [h.score for h in before.hits], atol=1e-5)
        info = rpc.InferenceStub(channel).Info(pb.InfoRequest(), timeout=TIMEOUT)  # no classifier: still answers
        assert info.aligned_model == "cosmo-aligned" and info.index_size == 6 and info.model_name == ""
    finally:
        channel.close()
        server.stop(None)
        again.index.close()


def test_new_aligned_version_clears_the_index(world, served):
    stub, aligned, index = served["stub"], served["aligned"], served["index"]
    stub.Predict(request(raw_windows(world["clf"], 3)), timeout=TIMEOUT)
    assert index.size > 0
    aligned.swap(AlignedRuntime.load(world["a2"]["dir"]))
    try:
        assert index.size == 0 and index.model_version == 2
        code, details = code_and_details(lambda: stub.Search(pb.SearchRequest(text="walking", k=1), timeout=TIMEOUT))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "cosmo-aligned v2" in details
        stub.Predict(request(raw_windows(world["clf"], 2)), timeout=TIMEOUT)
        resp = stub.Search(pb.SearchRequest(text="walking", k=2), timeout=TIMEOUT)
        assert resp.model_version == 2 and resp.index_size == 2
    finally:
        aligned.swap(world["art1"])
    assert index.size == 0  # back to v1: v2's windows are dropped too


# ----------------------------------------------------------------------------- agent + CLI
def test_agent_pulls_installs_and_follows_the_aligned_model(world, tmp_path):
    from cloud.server import CloudServer
    from edge.agent import Agent
    from shared.client import connect

    srv = CloudServer(str(tmp_path / "cloud"), "127.0.0.1:0")
    port = srv.start()

    def publish(folder):
        with open(os.path.join(folder, "manifest.json")) as f:
            man = json.load(f)
        files = {e["path"]: (os.path.join(folder, e["path"]), e["kind"]) for e in man["files"]}
        return srv.registry.publish("cosmo-aligned", files, man)

    state = str(tmp_path / "state")
    try:
        publish(world["a1"]["dir"])
        agent = Agent(state, "", channel=connect("127.0.0.1:{}".format(port)), aligned_model="cosmo-aligned",
                      index_capacity=7)
        res = agent.update_aligned()
        assert res["version"] == 1 and agent.aligned.get().version == 1
        assert agent.state()["aligned"]["version"] == 1 and agent.aligned.index.capacity == 7

        stop = threading.Event()
        runner = threading.Thread(target=agent.run, args=(stop,), kwargs={"poll_state_s": 0.2}, daemon=True)
        runner.start()
        try:
            publish(world["a2"]["dir"])  # the agent follows the new version
            end = time.time() + 60
            while time.time() < end and (agent.aligned.get() is None or agent.aligned.get().version != 2):
                time.sleep(0.2)
            assert agent.aligned.get().version == 2 and agent.state()["aligned"]["version"] == 2
        finally:
            stop.set()
            runner.join(10)
        agent.aligned.index.close()

        # a restarted agent loads the installed aligned model from its state
        again = Agent(state, "", aligned_model="cosmo-aligned", index_capacity=7)
        assert again.load_aligned().version == 2
        server, eport = serve_inference(again.holder, "127.0.0.1:0", max_workers=2, aligned=again.aligned)
        channel = grpc.insecure_channel("127.0.0.1:{}".format(eport))
        try:
            stub = rpc.InferenceStub(channel)
            info = stub.Info(pb.InfoRequest(), timeout=TIMEOUT)
            assert (info.aligned_model, info.aligned_version, info.index_capacity) == ("cosmo-aligned", 2, 7)
            emb = stub.Embed(request(imu_windows(9)), timeout=TIMEOUT)
            assert emb.space == "aligned" and len(emb.embeddings) == 9
            assert stub.Info(pb.InfoRequest(), timeout=TIMEOUT).index_size == 7  # bounded
        finally:
            channel.close()
            server.stop(None)
            again.aligned.index.close()
    finally:
        srv.stop(grace=1)


def test_search_cli_prints_hits(world, served, capsys):
    from edge.cli import main as edge_main

    stub, index = served["stub"], served["index"]
    index.clear()
    stub.Predict(request(raw_windows(world["clf"], 4)), timeout=TIMEOUT)
    assert edge_main(["search", "--server", served["target"], "--text", "walking upstairs", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 hits of 4 indexed windows" in out and out.count("score") == 3 and "from Predict" in out
    assert edge_main(["search", "--server", served["target"], "--text", "", "-k", "3"]) == 1
    assert "INVALID_ARGUMENT: text:" in capsys.readouterr().err
