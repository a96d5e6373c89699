"""edge.aligned + edge.index: a real aligned model folder (untrained AlignModel exported to ONNX, the real
MiniLM text encoder exported for ONNX Runtime, class prompts, a manifest with sha256) loaded by
AlignedRuntime; the SQLite window index: bounded, persisted, cosine search, model-version changes."""
import os
import threading
from collections import OrderedDict
from typing import Any, Dict

import numpy as np
import pytest
import torch

from edge.aligned import MAX_TEXT_CHARS, AlignedRuntime
from edge.index import WindowIndex
from edge.runtime import InputError
from shared.errors import CosmoError, DataError
from shared.manifest import MANIFEST, file_entry, new_manifest
from shared.files import write_json

pytest.importorskip("onnxruntime")

CLASSES = ["walking", "walking upstairs", "sitting", "lying"]
# the schema of tests/edge/test_runtime.py's tiny classifier, so Predict windows can be indexed too
SCHEMA = (("acc", 32, 3), ("gyro", 32, 2))
DIM = 384
_TEXT = {}  # type: Dict[str, str]
_LOCK = threading.Lock()


def text_folder(tmp_path_factory: Any) -> str:
    """The real MiniLM text encoder exported for ONNX Runtime, once per test session (slow)."""
    pytest.importorskip("transformers")
    with _LOCK:
        if "dir" not in _TEXT:
            from cloud.text_export import export_text_encoder
            from shared.text import MiniLMTextEncoder, TextEncoderUnavailable
            try:
                enc = MiniLMTextEncoder()
            except TextEncoderUnavailable as e:
                pytest.skip(str(e))
            folder = os.path.join(str(tmp_path_factory.mktemp("text_encoder")), "text")
            export_text_encoder(enc, folder)
            _TEXT["dir"] = folder
        return _TEXT["dir"]


def _schema(mean: float = 0.0, std: float = 1.0) -> "OrderedDict[str, Dict[str, Any]]":
    out = OrderedDict()
    for m, t, c in SCHEMA:
        out[m] = {"name": m, "channels": ["{}_{}".format(m, i) for i in range(c)], "rate_hz": 50.0, "units": "",
                  "window": t, "normalization": {"mean": [mean] * c, "std": [std] * c}}
    return out


def build_aligned_dir(root: str, text_dir: str, version: int = 1, seed: int = 0, name: str = "cosmo-aligned",
                      prompts_from_text: bool = True) -> Dict[str, Any]:
    """Write an aligned model version (the contract of cloud.align's export) under ``root/NAME-vVERSION``:
    an untrained conv1d AlignModel, the text encoder folder, class prompts, manifest with sha256."""
    import shutil

    from shared.export import export_onnx
    from shared.models.encoders import build_encoder
    from shared.text import OnnxTextEncoder
    from shared.training.align import AlignModel

    out = os.path.join(root, "{}-v{}".format(name, version))
    if os.path.isfile(os.path.join(out, MANIFEST)):
        return {"dir": out}
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    c = sum(ch for _, _, ch in SCHEMA)
    model = AlignModel(build_encoder("conv1d", window=32, in_channels=c, widths=(16, 16), out_steps=4), DIM).eval()
    export_onnx(model, [torch.zeros(1, 32, c)], os.path.join(out, "aligned_imu.onnx"), input_names=["imu"],
                output_names=["embedding"])
    torch.save({"state_dict": model.state_dict()}, os.path.join(out, "aligned_imu.pt"))
    shutil.copytree(text_dir, os.path.join(out, "text"))
    if prompts_from_text:
        prompts = OnnxTextEncoder(os.path.join(out, "text")).encode(["a person " + k for k in CLASSES])
    else:
        prompts = np.eye(len(CLASSES), DIM, dtype=np.float32)
    np.save(os.path.join(out, "class_prompts.npy"), prompts.astype(np.float32))
    man = new_manifest(name, _schema(), CLASSES, DIM, {"dataset": "test"})
    man["version"] = version
    man.update(kind="aligned", embedding_dim=DIM, imu_onnx="aligned_imu.onnx", imu_input="imu",
               imu_output="embedding", class_prompts="class_prompts.npy",
               text_encoder={"name": "sentence-transformers/all-MiniLM-L6-v2", "dim": DIM, "folder": "text",
                             "max_seq_length": 256})
    files = [file_entry(out, "aligned_imu.onnx", "onnx"), file_entry(out, "aligned_imu.pt", "torch"),
             file_entry(out, "class_prompts.npy", "prompts")]
    for f in sorted(os.listdir(os.path.join(out, "text"))):
        files.append(file_entry(out, "text/" + f, "text_encoder"))
    man["files"] = files
    write_json(os.path.join(out, MANIFEST), man)
    return {"dir": out, "model": model, "manifest": man}


def imu_windows(n: int, seed: int = 0) -> Dict[str, np.ndarray]:
    rng = np.random.RandomState(seed)
    return {m: rng.randn(n, t, c).astype(np.float32) for m, t, c in SCHEMA}


@pytest.fixture(scope="module")
def aligned_dir(tmp_path_factory):
    return build_aligned_dir(str(tmp_path_factory.mktemp("aligned")), text_folder(tmp_path_factory))


@pytest.fixture(scope="module")
def art(aligned_dir):
    return AlignedRuntime.load(aligned_dir["dir"])


# ----------------------------------------------------------------------------------- runtime
def test_load_and_embed_matches_torch(aligned_dir, art):
    assert (art.name, art.version, art.dim) == ("cosmo-aligned", 1, DIM)
    assert art.provider == "CPUExecutionProvider" and art.modalities == ["acc", "gyro"]
    assert art.text_encoder_name == "sentence-transformers/all-MiniLM-L6-v2" and art.max_seq_length == 256
    w = imu_windows(5)
    emb = art.embed(w)
    assert emb.shape == (5, DIM) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():  # normalization is identity here (mean 0, std 1): concat along channels
        ref = aligned_dir["model"](torch.from_numpy(np.concatenate([w["acc"], w["gyro"]], axis=2))).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    np.testing.assert_allclose(art.embed({m: a[:1] for m, a in w.items()}), emb[:1], atol=1e-5)
    labels = art.zero_shot(emb)
    assert len(labels) == 5 and set(labels) <= set(CLASSES)
    assert art.zero_shot(art.prompts) == CLASSES  # a prompt is its own class


def test_text_encoding_and_its_limits(art):
    q = art.encode_text("walking upstairs")
    assert q.shape == (DIM,) and abs(float(np.linalg.norm(q)) - 1) < 1e-5
    sims = art.prompts @ q
    assert CLASSES[int(np.argmax(sims))] == "walking upstairs"
    for bad, why in (("", "empty"), ("   \n", "empty"), ("a" * (MAX_TEXT_CHARS + 1), "characters"),
                     ("walk " * 300, "tokens"), (None, "string")):
        with pytest.raises(InputError) as e:
            art.encode_text(bad)
        assert e.value.field == "text" and str(e.value).startswith("text:") and why in str(e.value), str(e.value)


def test_bad_windows_name_the_modality(art):
    w = imu_windows(2)
    cases = [("gyro", {"acc": w["acc"]}),  # every modality is required
             ("acc", {"acc": w["acc"][:, :31], "gyro": w["gyro"]}),
             ("gyro", {"acc": w["acc"], "gyro": w["gyro"][:, :, :1]}),
             ("magnet", dict(w, magnet=w["acc"]))]
    for field, windows in cases:
        with pytest.raises(InputError) as e:
            art.embed(windows)
        assert e.value.field == field and str(e.value).startswith(field + ":"), str(e.value)
    with pytest.raises(InputError, match="^acc: sampled at 100 Hz"):
        art.embed(w, {"acc": 100.0})


def test_corrupt_or_wrong_folders_are_refused(aligned_dir, tmp_path):
    import shutil

    bad = str(tmp_path / "bad")
    shutil.copytree(aligned_dir["dir"], bad)
    with open(os.path.join(bad, "class_prompts.npy"), "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02")
    with pytest.raises(DataError, match="class_prompts.npy: size or sha256"):
        AlignedRuntime.load(bad)
    import json
    with open(os.path.join(aligned_dir["dir"], MANIFEST)) as f:
        man = json.load(f)
    man["kind"] = "classifier"
    other = str(tmp_path / "other")
    shutil.copytree(aligned_dir["dir"], other)
    write_json(os.path.join(other, MANIFEST), man)
    with pytest.raises(DataError, match="not an aligned model"):
        AlignedRuntime.load(other)


# ------------------------------------------------------------------------------------- index
def _vecs(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.RandomState(seed).randn(n, d).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_index_is_bounded_and_persisted(tmp_path):
    path = str(tmp_path / "index.sqlite")
    ix = WindowIndex(path, capacity=5)
    v = _vecs(8)
    ids = ix.add(v, ["a{}".format(i) for i in range(8)], "Predict", "m", 1, times=[100.0 + i for i in range(8)])
    assert ids == sorted(ids) and len(set(ids)) == 8
    assert ix.size == 5 and ix.capacity == 5 and ix.dim == 8
    hits = ix.search(v[7], 5)
    assert {h.window_id for h in hits} == set(ids[3:])  # the 3 oldest are gone
    assert hits[0].window_id == ids[7] and abs(hits[0].score - 1) < 1e-5
    assert hits[0].predicted_activity == "a7" and hits[0].time == 107.0 and hits[0].source == "Predict"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for i in range(3):  # an evicted window is not found even by its own embedding
        assert ix.search(v[i], 1)[0].window_id != ids[i]
    ix.close()

    again = WindowIndex(path, capacity=5)  # a restart reads the windows back
    assert again.size == 5 and (again.model_name, again.model_version, again.dim) == ("m", 1, 8)
    back = again.search(v[7], 5)  # same hits; scores equal up to float32 rounding (BLAS may sum in another order)
    assert [h._replace(score=0.0) for h in back] == [h._replace(score=0.0) for h in hits]
    assert np.allclose([h.score for h in back], [h.score for h in hits], atol=1e-6)
    more = again.add(v[:1], ["new"], "Embed", "m", 1)
    assert more[0] > ids[-1]  # ids are never reused
    assert again.size == 5 and ids[3] not in {h.window_id for h in again.search(v[0], 5)}
    again.close()
    assert WindowIndex.stored(path) == 5 and WindowIndex.stored(path + ".none") == 0
    smaller = WindowIndex(path, capacity=2)  # a smaller capacity drops the oldest at open
    assert smaller.size == 2 and {h.window_id for h in smaller.search(v[0], 2)} == {ids[7], more[0]}
    smaller.clear()
    assert smaller.size == 0
    smaller.close()
    assert WindowIndex(path, capacity=2).size == 0


def test_index_model_change_drops_old_windows(tmp_path):
    path = str(tmp_path / "index.sqlite")
    ix = WindowIndex(path, capacity=10)
    assert ix.set_model("m", 1, 8) == 0
    ix.add(_vecs(4), ["x"] * 4, "Predict", "m", 1)
    assert ix.set_model("m", 1, 8) == 0 and ix.size == 4  # same model: kept
    with pytest.raises(CosmoError, match="index holds m v1"):
        ix.add(_vecs(1), ["x"], "Predict", "m", 2)  # a request that started before the swap
    assert ix.set_model("m", 2, 8) == 4 and ix.size == 0
    ix.add(_vecs(2, seed=1), ["y"] * 2, "Embed", "m", 2)
    ix.close()
    ix = WindowIndex(path, capacity=10)
    assert ix.size == 2 and ix.model_version == 2
    assert ix.set_model("m", 3, 16) == 2 and ix.dim == 16 and ix.size == 0


def test_index_rejects_bad_queries_and_is_thread_safe(tmp_path):
    ix = WindowIndex(str(tmp_path / "i.sqlite"), capacity=50)
    ix.set_model("m", 1, 8)
    errors = []  # type: List[BaseException]

    def work(seed: int) -> None:
        try:
            for i in range(10):
                ix.add(_vecs(2, seed=seed * 100 + i), ["t"] * 2, "Predict", "m", 1)
                ix.search(_vecs(1, seed=seed)[0], 1)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and ix.size == 50
    with pytest.raises(InputError, match="^k: 0"):
        ix.search(_vecs(1)[0], 0)
    with pytest.raises(InputError, match="^k: 51"):
        ix.search(_vecs(1)[0], 51)
    with pytest.raises(InputError, match="^embedding: 7 values"):
        ix.search(np.ones(7, np.float32), 1)
