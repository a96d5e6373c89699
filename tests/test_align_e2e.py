"""Issue 5 end to end: the cloud daemon runs an ``align`` job on a small real HAPT subset (MiniLM text
embeddings, MW2 encoder), publishes the aligned IMU encoder and the text encoder as ONNX, an edge pulls
the version over gRPC, and its Inference service answers Embed and Search (text and embedding)."""
import json

import grpc
import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from cloud.server import CloudServer  # noqa: E402
from shared.client import pull, submit_job, wait_job  # noqa: E402
from shared.rpc import ModelRegistryStub, TrainingStub, pb  # noqa: E402

JOB = {"encoder": "mw2", "encoder_config": {"padding": "same", "norm": "layer", "hidden": 64}, "epochs": 2,
       "batch_size": 64, "max_windows": 192, "model_name": "aligned-e2e"}


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    data = tmp_path_factory.mktemp("cloud")
    srv = CloudServer(str(data), "127.0.0.1:0", max_jobs=1, max_queued=2)
    ch = grpc.insecure_channel("127.0.0.1:{}".format(srv.start()))
    yield srv, ch
    ch.close()
    srv.stop(grace=1)


def _invalid(ch, config):
    with pytest.raises(grpc.RpcError) as e:
        TrainingStub(ch).SubmitJob(pb.SubmitJobRequest(kind="align", dataset="hapt", config_json=json.dumps(config)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return e.value.details()


def test_align_job_rejects_bad_config_by_name(cloud):
    _, ch = cloud
    assert "holdout" in _invalid(ch, {"holdout": "walking"})
    assert "objectiv" in _invalid(ch, {"objectiv": "x"})
    assert "max_windows" in _invalid(ch, {"max_windows": -1})
    assert "batch_size" in _invalid(ch, {"batch_size": 1})


@pytest.fixture(scope="module")
def published(cloud):
    _, ch = cloud
    job = submit_job(ch, "align", "hapt", JOB)
    seen = []
    final = wait_job(ch, job.id, on_update=seen.append, timeout_s=900)
    assert final.state == pb.Job.SUCCEEDED, final.error
    assert any(j.progress.stage == "align" and j.progress.epoch >= 1 for j in seen)
    assert final.model_name == "aligned-e2e" and final.model_version == 1
    return final


def test_align_job_publishes_onnx_imu_and_text_encoders(cloud, published):
    _, ch = cloud
    man = json.loads(ModelRegistryStub(ch).GetManifest(
        pb.GetManifestRequest(name="aligned-e2e", alias="latest")).manifest_json)
    kinds = {f["path"]: f["kind"] for f in man["files"]}
    assert kinds["aligned_imu.onnx"] == "onnx" and kinds["text/text_encoder.onnx"] == "onnx"
    assert kinds["text/vocab.txt"] == "vocab" and kinds["class_prompts.npy"] == "array"
    assert man["kind"] == "aligned" and man["embedding_dim"] == 384
    assert man["text_encoder"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert man["metrics"]["onnx_max_abs_diff"] < 1e-4
    assert list(man["input_schema"]) == ["acc", "gyro"] and len(man["classes"]) == 6
    assert man["lineage"]["config"]["encoder"] == "mw2"
    for k in ("imu2text", "text2imu"):
        assert 0.0 <= man["metrics"][k]["MRR"] <= 1.0 and man["metrics"][k]["pool"] > 0


def test_edge_pulls_and_serves_embed_and_search(cloud, published, tmp_path):
    _, ch = cloud
    folder, man = pull(ch, "aligned-e2e", str(tmp_path / "edge"))
    assert man["version"] == published.model_version
    from shared.data import load_named
    from shared.data.splits import subject_split

    test = subject_split(load_named("hapt"), seed=0).test
    idx = np.random.RandomState(0).choice(len(test), 24, replace=False)
    _edge_checks(folder, test.subset(np.sort(idx)), tmp_path)


def _request(ds, idx=None):
    idx = np.arange(len(ds)) if idx is None else np.asarray(idx)
    return pb.PredictRequest(windows=[pb.ModalityWindows(modality=m, shape=list(ds.x[m][idx].shape),
                                                         data=ds.x[m][idx].ravel().tolist()) for m in ds.modalities])


def _edge_checks(folder, windows, tmp_path):
    from edge.aligned import AlignedRuntime
    from edge.index import WindowIndex
    from edge.service import AlignedHolder, ModelHolder, serve_inference
    from shared.rpc import InferenceStub

    rt = AlignedRuntime.load(folder)
    aligned = AlignedHolder(WindowIndex(str(tmp_path / "index.sqlite"), capacity=100), rt)
    server, port = serve_inference(ModelHolder(), "127.0.0.1:0", aligned=aligned)
    ch = grpc.insecure_channel("127.0.0.1:{}".format(port))
    try:
        stub = InferenceStub(ch)
        emb = stub.Embed(_request(windows))
        assert emb.space == "aligned" and emb.dim == 384 and len(emb.embeddings) == len(windows)
        e = np.array([list(v.values) for v in emb.embeddings])
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
        # the served embedding is the aligned model's (raw windows in, normalization done on the device)
        np.testing.assert_allclose(e, rt.embed({m: windows.x[m] for m in windows.modalities}), atol=1e-5)
        hits = stub.Search(pb.SearchRequest(text="a person walking upstairs", k=5))
        assert hits.index_size == len(windows) and len(hits.hits) == 5 and hits.query == "text"
        scores = [h.score for h in hits.hits]
        assert scores == sorted(scores, reverse=True)
        assert all(h.predicted_activity in rt.classes and h.source == "Embed" for h in hits.hits)
        own = stub.Search(pb.SearchRequest(embedding=e[7].tolist(), k=1)).hits[0]
        assert own.score == pytest.approx(1.0, abs=1e-4)
        with pytest.raises(grpc.RpcError) as bad:
            stub.Search(pb.SearchRequest(text="walking", k=len(windows) + 1))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "k" in bad.value.details()
    finally:
        ch.close()
        server.stop(0)
