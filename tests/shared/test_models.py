import numpy as np
import onnxruntime as ort
import pytest
import torch

from shared.errors import ConfigError
from shared.export import export_onnx, layout_2d
from shared.models import (CosmoClassifier, CosmoModel, ProjectionHead, QualityGuidedAttention, build_encoder,
                           encoder_config, list_encoders)

EXAMPLES = {
    "conv1d": dict(in_channels=5, window=64, widths=(16, 16, 8), out_steps=4),
    "conv3d": dict(joints=20, coords=3, window=40, widths=(8, 8, 8), out_steps=5),
    "mw2": dict(in_channels=6, window=200, hidden=16, norm="layer"),  # out: final GRU state [B, 1, hidden]
}
# extra configs swept like EXAMPLES (every selectable norm of mw2)
VARIANTS = [("mw2", dict(EXAMPLES["mw2"], norm=n)) for n in ("group", "instance")]
CASES = [(n, EXAMPLES[n]) for n in sorted(EXAMPLES)] + VARIANTS


def _input(name, cfg, batch):
    if name in ("conv1d", "mw2"):
        return torch.randn(batch, cfg["window"], cfg["in_channels"])
    return torch.randn(batch, cfg["window"], cfg["joints"] * cfg["coords"])


def test_every_registered_encoder_has_an_example():
    assert set(list_encoders()) == set(EXAMPLES)


@pytest.mark.parametrize("name,cfg", CASES, ids=["{}-{}".format(n, c.get("norm", "")).rstrip("-") for n, c in CASES])
def test_encoder_forward_backward_onnx(name, cfg, tmp_path):
    torch.manual_seed(0)
    enc = build_encoder(name, **cfg)
    x = _input(name, cfg, 4)
    h = enc(x)
    steps = cfg.get("out_steps", 1)  # mw2 has no out_steps key: it always returns one step
    assert enc.out_steps == steps
    assert h.shape == (4, steps, enc.out_features)
    assert enc.feature_dim == steps * enc.out_features
    h.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    enc.eval()
    path = str(tmp_path / "enc.onnx")
    export_onnx(enc, [_input(name, cfg, 2)], path, input_names=["x"], output_names=["h"])
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 8):
        xb = _input(name, cfg, batch)
        got = sess.run(None, {"x": xb.numpy()})[0]
        np.testing.assert_allclose(got, enc(xb).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cfg", [dict(in_channels=3, window=128),
                                 dict(in_channels=5, window=64, widths=(16, 16, 8), kernel=3, out_steps=4)])
def test_conv1d_encoder_exports_its_2d_form_with_the_same_numbers(cfg, tmp_path):
    """export_onnx writes the conv1d encoder as 2-D ops (ONNX Runtime runs those faster): with trained
    BatchNorm statistics the 2-D form gives the 1-D form's numbers in torch and in ONNX Runtime, every
    exported convolution is 2-D, and the switch is off again afterwards."""
    import onnx
    torch.manual_seed(0)
    enc = build_encoder("conv1d", **cfg)
    with torch.no_grad():  # BatchNorm statistics away from (0, 1)
        enc(torch.randn(32, cfg["window"], cfg["in_channels"]) * 3.0 + 1.0)
    enc.eval()
    x = torch.randn(8, cfg["window"], cfg["in_channels"])
    with torch.no_grad():
        ref = enc(x).numpy()
        with layout_2d(enc):
            np.testing.assert_allclose(enc(x).numpy(), ref, rtol=1e-5, atol=1e-5)
    assert enc.as_2d is False
    path = str(tmp_path / "enc.onnx")
    export_onnx(enc, [x[:2]], path, input_names=["x"], output_names=["h"])
    assert enc.as_2d is False
    graph = onnx.load(path).graph
    kernels = {i.name: len(i.dims) for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == len(cfg.get("widths", (64, 64, 64, 32))) and all(kernels[n.input[1]] == 4 for n in convs)
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    enc.train()  # a training-mode BatchNorm has no 2-D form here: said, by name
    with pytest.raises(ConfigError, match="no 2-D form for BatchNorm1d"), layout_2d(enc):
        enc(x)


def test_unknown_encoder_and_keys_are_named():
    with pytest.raises(ConfigError, match="unknown encoder 'lstm'"):
        build_encoder("lstm")
    with pytest.raises(ConfigError, match="widht"):
        encoder_config("conv1d", widht=3)


def test_projection_head_is_unit_norm():
    head = ProjectionHead(32, 128, 64)
    r = head(torch.randn(6, 4, 8))
    assert r.shape == (6, 128)
    assert torch.allclose(r.norm(dim=1), torch.ones(6), atol=1e-5)


def test_attention_weights_follow_the_formula():
    torch.manual_seed(0)
    att = QualityGuidedAttention([6, 6], quality=[1.0, 3.0], lam=0.5)
    zs = [torch.randn(3, 6), torch.randn(3, 6)]
    beta, beta_attn = att(zs)
    scores = torch.stack([(torch.tanh(lin(z)) * z).sum(1) / 6 ** 0.5 for z, lin in zip(zs, att.proj)], 1)
    ref_attn = torch.softmax(scores, 1)
    ref = 0.5 * ref_attn + 0.5 * torch.tensor([0.25, 0.75])
    assert torch.allclose(beta_attn, ref_attn, atol=1e-6)
    assert torch.allclose(beta, ref / ref.sum(1, keepdim=True), atol=1e-6)


def test_attention_lambda_one_is_the_quality_prior():
    att = QualityGuidedAttention([4, 4, 4], quality=[1.0, 2.0, 1.0], lam=1.0)
    beta, _ = att([torch.randn(2, 4) for _ in range(3)])
    assert torch.allclose(beta, torch.tensor([[0.25, 0.5, 0.25]] * 2))


def test_missing_modality_renormalizes():
    att = QualityGuidedAttention([4, 4, 4], quality=[1.0, 1.0, 2.0], lam=0.8)
    present = torch.tensor([[True, True, False], [True, True, True]])
    beta, _ = att([torch.randn(2, 4) for _ in range(3)], present)
    assert float(beta[0, 2]) == 0.0
    assert torch.allclose(beta.sum(1), torch.ones(2))


@pytest.mark.parametrize("fusion", ["sum", "concat"])
def test_classifier_returns_logits_and_beta(fusion):
    torch.manual_seed(0)
    feats = [8, 8] if fusion == "sum" else [8, 5]
    clf = CosmoClassifier(4, feats, num_classes=3, quality=[0.3, 0.7], fusion=fusion)
    logits, beta = clf([torch.randn(2, 4, f) for f in feats])
    assert logits.shape == (2, 3) and beta.shape == (2, 2)
    assert torch.allclose(beta.sum(1), torch.ones(2), atol=1e-6)


def test_sum_fusion_needs_equal_widths():
    with pytest.raises(ConfigError, match="concat"):
        CosmoClassifier(4, [8, 5], num_classes=3, fusion="sum")


def test_cosmo_model_mixed_modalities_export(tmp_path):
    torch.manual_seed(0)
    imu = build_encoder("conv1d", in_channels=6, window=120, widths=(8, 8, 8, 8), out_steps=5)
    skel = build_encoder("conv3d", joints=20, coords=3, window=40, widths=(8, 8, 8), out_steps=5)
    model = CosmoModel([imu, skel], CosmoClassifier(5, [8, 8], 27, fusion="concat"), ["imu", "skeleton"]).eval()
    xs = [torch.randn(3, 120, 6), torch.randn(3, 40, 60)]
    path = str(tmp_path / "m.onnx")
    export_onnx(model, [xs], path, input_names=["imu", "skeleton"], output_names=["logits", "beta"])
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        xb = [torch.randn(batch, 120, 6), torch.randn(batch, 40, 60)]
        got = sess.run(None, {"imu": xb[0].numpy(), "skeleton": xb[1].numpy()})
        logits, beta = model(xb)
        np.testing.assert_allclose(got[0], logits.detach().numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[1], beta.detach().numpy(), rtol=1e-4, atol=1e-6)

