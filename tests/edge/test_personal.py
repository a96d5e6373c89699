"""On-device personalization: the user's windows kept by the service (bounded, owner-only, surviving a
restart, never another schema's), and `edge-agent personalize` adapting the serving model, verified, swapped
in, and rolled back; with a real Inference server, real ONNX Runtime and the tiny real model."""
import logging
import os
import stat

import grpc
import numpy as np
import pytest

from edge.agent import Agent
from edge.personal import UserWindows, base_folder, personalize, read_user_windows
from edge.service import EdgeServer, ModelHolder
from shared import rpc
from shared.errors import CosmoError, DataError
from shared.hparams import AdaptConfig
from shared.manifest import read_manifest, schema_normalizer
from shared.models.finetuned import load_finetuned
from shared.rpc import pb
from shared.training.stage2 import predict
from tests.edge.test_runtime import build_model_dir, raw_windows

pytest.importorskip("onnxruntime")


def _one(w, i):
    return {m: a[i:i + 1] for m, a in w.items()}


def test_user_windows_are_bounded_private_and_survive_a_restart(tmp_path, caplog):
    state = str(tmp_path / "s")
    w = {"acc": np.random.RandomState(0).randn(10, 32, 3).astype(np.float32),
         "gyro": np.random.RandomState(1).randn(10, 32, 2).astype(np.float32)}
    uw = UserWindows(state, capacity=4, flush_every=3)
    for i in range(6):
        uw.add(_one(w, i), ["acc", "gyro"])
    uw.add({"acc": w["acc"][:1]}, ["acc", "gyro"])  # a stream with one sensor: not kept
    assert len(uw) == 4
    got = uw.arrays()
    np.testing.assert_array_equal(got["acc"], w["acc"][2:6])  # the newest four, oldest first
    assert os.path.isfile(uw.path) and stat.S_IMODE(os.stat(uw.path).st_mode) == 0o600  # flushed at 3 and 6
    again = UserWindows(state, capacity=3)
    np.testing.assert_array_equal(again.arrays()["gyro"], w["gyro"][3:6])
    np.testing.assert_array_equal(read_user_windows(state)["acc"], w["acc"][2:6])
    again.add({"acc": np.zeros((1, 64, 3), np.float32), "gyro": np.zeros((1, 64, 2), np.float32)}, ["acc", "gyro"])
    assert len(again) == 1  # another model's window shape: the old ones are dropped
    with open(uw.path, "wb") as f:
        f.write(b"not an npz")
    with caplog.at_level(logging.WARNING):
        assert len(UserWindows(state, capacity=4)) == 0
    assert "unreadable" in caplog.text
    with pytest.raises(DataError, match="no stored windows"):
        read_user_windows(state)
    with pytest.raises(CosmoError, match="--personal-windows"):
        UserWindows(state, capacity=0)


@pytest.fixture()
def agent(tmp_path):
    built = build_model_dir(str(tmp_path / "m"), version=3, seed=0)
    labels = tmp_path / "labels"
    built["raw"].save(str(labels / "val"))
    ag = Agent(str(tmp_path / "state"), str(labels))
    ag.swap_to(built["dir"])
    return ag, built


def test_personalize_verifies_swaps_and_rolls_back(agent):
    ag, built = agent
    user = {m: a * 1.5 + 0.3 for m, a in raw_windows(built).items()}  # this user's sensors read differently
    res = personalize(ag, AdaptConfig(bn_mix=1.0, gate="none"), windows=user)
    assert res["adapted"] and res["windows"] == len(user["acc"])
    folder = res["folder"]
    assert folder.startswith(os.path.join(ag.state_dir, "personalized", "tiny", "v3"))
    assert ag.state()["serving"]["path"] == os.path.abspath(folder) and ag.holder.get().model_dir == folder
    man = read_manifest(folder)
    assert man["personalization"]["base"] == built["dir"] and base_folder(folder) == built["dir"]
    assert abs(res["onnx_val_accuracy"] - res["val_accuracy"]) <= 0.01
    # what serves is the adapted model: ONNX agrees with the adapted torch model, not with the original
    adapted = load_finetuned(os.path.join(folder, "finetuned.pt"), os.path.join(folder, "encoders.pt"),
                             ["acc", "gyro"], 3)
    norm = schema_normalizer(man)
    from shared.data.dataset import make_dataset
    from shared.manifest import schema_specs
    ds = norm.apply(make_dataset(user, schema_specs(man), np.zeros(len(user["acc"]), np.int64),
                                 np.zeros(len(user["acc"]), np.int64), man["classes"]))
    want = predict(adapted, ds)["proba"]
    got = ag.holder.get().predict(user)["proba"]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    original = predict(built["model"], ds)["proba"]
    assert np.abs(original - want).max() > 1e-3
    # a second personalization starts again from the fine-tuned model, not from the adapted one
    res2 = personalize(ag, AdaptConfig(bn_mix=0.5, gate="none"), windows=user)
    assert read_manifest(res2["folder"])["personalization"]["base"] == built["dir"]
    prev = ag.rollback()
    assert prev["path"] == os.path.abspath(built["dir"])
    assert ag.load_serving().model_dir == built["dir"]


def test_personalize_leaves_the_serving_model_when_it_does_not_adapt(agent):
    ag, built = agent
    few = {m: a[:5] for m, a in raw_windows(built).items()}
    res = personalize(ag, AdaptConfig(bn_mix=0.5, min_windows=32), windows=few)
    assert not res["adapted"] and "too few windows" in res["reason"]
    assert ag.state()["serving"]["path"] == os.path.abspath(built["dir"])
    with pytest.raises(DataError, match="no stored windows"):
        personalize(ag, AdaptConfig(bn_mix=0.5))
    with pytest.raises(DataError, match="user windows do not fit tiny v3: .*gyro"):
        personalize(ag, AdaptConfig(bn_mix=0.5), windows={"acc": few["acc"], "gyro": few["gyro"][:, :, :1]})


def test_stream_predict_windows_are_kept_for_personalization(tmp_path):
    built = build_model_dir(str(tmp_path / "m"), version=3, seed=0)
    from edge.runtime import Runtime
    uw = UserWindows(str(tmp_path / "state"), capacity=100)
    server = EdgeServer(ModelHolder(Runtime.load(built["dir"])), "127.0.0.1:0", user_windows=uw)
    port = server.start()
    try:
        ch = grpc.insecure_channel("127.0.0.1:{}".format(port))
        raw = raw_windows(built, 3)
        series = {m: np.concatenate(list(a)) for m, a in raw.items()}  # 96 samples: windows at 0, 16, ..., 64
        chunks = [pb.SamplesChunk(modality=m, data=s[i:i + 16].ravel().tolist(), channels=s.shape[1], rate_hz=50.0)
                  for i in range(0, 96, 16) for m, s in series.items()]  # the sensors interleaved, as they stream
        n = len(list(rpc.InferenceStub(ch).StreamPredict(iter(chunks), timeout=10)))
        ch.close()
    finally:
        server.stop(None)
    assert n == 5 and len(uw) == 5
    np.testing.assert_allclose(read_user_windows(uw.path.rsplit("/personal/", 1)[0])["acc"][0], series["acc"][:32])
