"""edge.export + edge.runtime: a tiny real model (2 synthetic modalities, fine-tuned a few epochs) exported to
ONNX, checked against torch, loaded with ONNX Runtime (CPU here) and with the torch fallback."""
import os
import subprocess
import sys
import threading
from typing import Dict, Optional

import numpy as np
import pytest
import torch

from edge import runtime as rt_mod
from edge.export import MODEL_ONNX, export_finetuned
from edge.runtime import InputError, Runtime, choose_providers
from shared.data import make_synthetic
from shared.errors import CosmoError
from shared.experiment import prepare
from shared.manifest import MANIFEST, input_schema, new_manifest
from shared.models.encoders import encoder_spec
from shared.training.common import save_torch_atomic
from shared.config import config_dict
from shared.files import write_json
from shared.training.stage1 import build_encoders
from shared.training.stage2 import Stage2Config, finetune

pytest.importorskip("onnxruntime")

MODS = (("acc", 32, 3), ("gyro", 32, 2))
_BUILT = {}  # type: Dict[str, Dict[str, object]]
_LOCK = threading.Lock()


def build_model_dir(root: str, name: str = "tiny", version: int = 3, seed: int = 0) -> Dict[str, object]:
    """Write a complete edge model dir under ``root/name-vVERSION``: manifest.json, encoders.pt,
    finetuned.pt, model.onnx. Returns {"dir", "model", "raw" (a raw test MultimodalDataset), "manifest"}."""
    key = "{}/{}/{}/{}".format(root, name, version, seed)
    with _LOCK:
        if key in _BUILT:
            return _BUILT[key]
        torch.manual_seed(seed)
        ds = make_synthetic(num_subjects=6, windows_per_subject=16, num_classes=3, modalities=MODS,
                            informativeness=(1.0, 0.6), seed=seed)
        prep = prepare(ds, labels_per_class=8, seed=seed)
        specs = [ds.specs[m] for m in ds.modalities]
        encs = build_encoders(specs, [t for _, t, _ in MODS], (8, 8, 8), 0.0, 4)
        cfg = Stage2Config(epochs=2, t_iter=1, batch_size=8, gru_hidden=16, mlp_hidden=16, seed=seed, device="cpu",
                           fusion="concat")
        res = finetune(encs, prep.norm(prep.labeled), prep.norm(prep.split.val), cfg, quality=[0.7, 0.3],
                       progress=False)
        model = res["model"].cpu().eval()
        out = os.path.join(root, "{}-v{}".format(name, version))
        os.makedirs(out, exist_ok=True)
        man = new_manifest(name, input_schema(ds, prep.normalizer), ds.class_names, 16, {"dataset": "synthetic"})
        man["version"] = version
        man["quality"] = {"q": [0.7, 0.3], "modalities": list(ds.modalities)}
        save_torch_atomic({"format": "cosmo-har/encoders", "modalities": list(ds.modalities),
                           "encoders": [encoder_spec(e) for e in model.encoders],
                           "state_dicts": [{k: v.detach().cpu() for k, v in e.state_dict().items()}
                                           for e in model.encoders]}, os.path.join(out, "encoders.pt"))
        save_torch_atomic({"format": "cosmo-har/finetuned", "state_dict": model.state_dict(),
                           "config": config_dict(cfg), "manifest_version": version, "pretrained": False},
                          os.path.join(out, "finetuned.pt"))
        man["files"] = [export_finetuned(model, man, out)]
        write_json(os.path.join(out, MANIFEST), man)
        _BUILT[key] = {"dir": out, "model": model, "raw": prep.split.test, "manifest": man}
        return _BUILT[key]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_model_dir(str(tmp_path_factory.mktemp("edge_models")))


@pytest.fixture(scope="module")
def rt(built):
    return Runtime.load(built["dir"])


def raw_windows(built, n: Optional[int] = None) -> Dict[str, np.ndarray]:
    ds = built["raw"]
    return {m: ds.x[m][:n].copy() for m in ds.modalities}


def torch_reference(built, windows: Dict[str, np.ndarray], present: np.ndarray):
    man, model = built["manifest"], built["model"]
    xs = []
    for j, (m, d) in enumerate(man["input_schema"].items()):
        mean = np.asarray(d["normalization"]["mean"], np.float32)
        std = np.asarray(d["normalization"]["std"], np.float32)
        x = (windows[m] - mean) / std if m in windows else np.zeros((present.shape[0], d["window"], len(d["channels"])))
        x = np.where(present[:, j, None, None], x, 0.0).astype(np.float32)
        xs.append(torch.from_numpy(x))
    with torch.no_grad():
        logits, beta, emb = model.forward_with_embedding(xs, torch.from_numpy(present))
    return torch.softmax(logits, 1).numpy(), beta.numpy(), emb.numpy()


def test_export_writes_one_onnx_file_with_entry(built):
    entry = built["manifest"]["files"][0]
    assert entry["path"] == MODEL_ONNX and entry["kind"] == "onnx"
    assert entry["size"] == os.path.getsize(os.path.join(built["dir"], MODEL_ONNX)) and len(entry["sha256"]) == 64
    assert sorted(os.listdir(built["dir"])) == ["encoders.pt", "finetuned.pt", "manifest.json", "model.onnx"]
    import onnx

    m = onnx.load(os.path.join(built["dir"], MODEL_ONNX))
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [13]
    assert [i.name for i in m.graph.input] == ["acc", "gyro", "present"]
    assert [o.name for o in m.graph.output] == ["logits", "beta", "embedding"]


def test_export_mismatch_raises(built, tmp_path, monkeypatch):
    import edge.export as ex

    monkeypatch.setattr(ex, "ATOL", -1.0)  # nothing can pass
    with pytest.raises(CosmoError, match="differs from torch"):
        export_finetuned(built["model"], built["manifest"], str(tmp_path))
    assert not os.listdir(str(tmp_path))  # no file left behind


@pytest.mark.parametrize("n", [1, 8])
def test_onnx_runtime_matches_torch(built, rt, n):
    w = raw_windows(built, n)
    out = rt.predict(w)
    proba, beta, emb = torch_reference(built, w, np.ones((n, 2), bool))
    assert out["proba"].shape == (n, 3) and out["embedding"].shape == (n, 16) and rt.embedding_dim == 16
    np.testing.assert_allclose(out["proba"], proba, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(out["beta"], beta, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(out["embedding"], emb, rtol=1e-3, atol=1e-5)
    assert out["used"] == ["acc", "gyro"] and out["dropped"] == []
    np.testing.assert_array_equal(out["label"], proba.argmax(1))


def test_provider_read_back_and_require_gpu(built, rt):
    assert rt.provider == "CPUExecutionProvider" and rt.fallback == "onnxruntime"
    assert "CPUExecutionProvider" in rt.available_providers
    assert (rt.name, rt.version, rt.modalities, rt.classes) == ("tiny", 3, ["acc", "gyro"], built["raw"].class_names)
    with pytest.raises(CosmoError, match="--require-gpu: .*running on CPU"):
        Runtime.load(built["dir"], require_gpu=True)
    assert choose_providers(["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]) == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(CosmoError, match="none of the execution providers"):
        Runtime.load(built["dir"], providers=["CUDAExecutionProvider"])


def test_missing_and_flat_modality_are_dropped(built, rt):
    w = raw_windows(built, 6)
    only_acc = rt.predict({"acc": w["acc"]})
    assert only_acc["used"] == ["acc"] and only_acc["dropped"] == ["gyro"]
    np.testing.assert_array_equal(only_acc["beta"][:, 1], 0.0)
    np.testing.assert_allclose(only_acc["beta"].sum(1), 1.0, rtol=1e-5)
    proba, beta, _ = torch_reference(built, w, np.array([[True, False]] * 6))
    np.testing.assert_allclose(only_acc["proba"], proba, rtol=1e-3, atol=1e-5)

    flat = dict(w)
    flat["gyro"] = w["gyro"].copy()
    flat["gyro"][1::2] = 0.25  # sensor stuck in windows 1, 3, 5
    out = rt.predict(flat)
    assert out["present"][:, 1].tolist() == [True, False] * 3 and out["dropped"] == ["gyro"]
    assert out["used"] == ["acc", "gyro"]
    np.testing.assert_array_equal(out["beta"][1::2, 1], 0.0)
    assert (out["beta"][0::2, 1] > 0).all()
    np.testing.assert_allclose(out["beta"].sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["proba"][1::2], only_acc["proba"][1::2], rtol=1e-4, atol=1e-6)

    with pytest.raises(InputError, match="every modality is missing or flat"):
        rt.predict({"acc": np.zeros_like(w["acc"])})


def test_validate_names_modality_and_schema(built, rt):
    w = raw_windows(built, 2)
    cases = [
        ({"magnet": w["acc"]}, "magnet", "unknown modality"),
        ({"acc": w["acc"][0]}, "acc", r"shape \[32, 3\]"),
        ({"acc": w["acc"][:, :10]}, "acc", "shape"),
        ({"acc": w["acc"][:, :, :2]}, "acc", "shape"),
        ({"acc": w["acc"].astype(np.int32)}, "acc", "dtype int32"),
        ({"acc": np.where(np.arange(32)[None, :, None] == 3, np.nan, w["acc"])}, "acc", "NaN or Inf"),
        ({"acc": w["acc"], "gyro": w["gyro"][:1]}, "gyro", "batch of 1"),
        ({}, "windows", "no modality"),
    ]
    for windows, field, msg in cases:
        with pytest.raises(InputError, match=msg) as ei:
            rt.validate(windows)
        assert ei.value.field == field
        if field in ("acc", "gyro"):
            assert "expected" in str(ei.value) or "batch" in str(ei.value)
    with pytest.raises(InputError, match=r"acc: sampled at 25 Hz; expected float32 windows \[N, 32, 3\]"):
        rt.validate({"acc": w["acc"]}, rates={"acc": 25.0})
    rt.validate({"acc": w["acc"]}, rates={"acc": 50.0})


def test_torch_fallback_gives_same_predictions(built, rt, monkeypatch):
    monkeypatch.setattr(rt_mod, "_import_onnxruntime", lambda: None)
    tr = Runtime.load(built["dir"])
    assert tr.provider == "torch:cpu" and tr.fallback == "torch" and tr.embedding_dim == 16
    w = raw_windows(built, 8)
    w["gyro"][::3] = 1.0
    a, b = rt.predict(w), tr.predict(w)
    for k in ("proba", "beta", "embedding"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=1e-5)
    assert a["dropped"] == b["dropped"] == ["gyro"]
    with pytest.raises(CosmoError, match="--require-gpu"):
        Runtime.load(built["dir"], require_gpu=True)


def test_missing_files_raise_named_errors(built, tmp_path, monkeypatch):
    with pytest.raises(CosmoError, match="manifest not found"):
        Runtime.load(str(tmp_path))
    import shutil

    d = str(tmp_path / "m")
    shutil.copytree(built["dir"], d)
    os.remove(os.path.join(d, MODEL_ONNX))
    with pytest.raises(CosmoError, match="model.onnx: ONNX model not found"):
        Runtime.load(d)
    monkeypatch.setattr(rt_mod, "_import_onnxruntime", lambda: None)
    os.remove(os.path.join(d, "finetuned.pt"))
    with pytest.raises(CosmoError, match="finetuned.pt: fine-tuned weights not found"):
        Runtime.load(d)


def test_torch_fallback_loads_without_training_code(built):
    """The torch fallback reads a model file like the exporter does (``shared.models``): no training module
    is imported, so a device without ONNX Runtime serves without the training stack's code."""
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "from edge.runtime import Runtime\n"
            "rt = Runtime.load(sys.argv[1])\n"
            "assert rt.fallback == 'torch', rt.fallback\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('shared.training', 'edge.finetune', 'cloud')))\n"
            "assert not bad, bad\n")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    p = subprocess.run([sys.executable, "-c", code, built["dir"]], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
