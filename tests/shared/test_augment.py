"""Stage-1 augmentations: each transform does what it says on real shapes, the plan of a time transform
is shared by every modality of a window, and the named configurations are valid."""
import argparse

import numpy as np
import pytest
import torch

from shared.data import make_synthetic
from shared.errors import ConfigError
from shared.experiment import prepare
from shared.hparams import STAGE1_PRESETS, Stage1Config
from shared.training import pretrain
from shared.training.augment import Augment, _resample, permute_slices, rotate, warped_time


def test_rotation_keeps_each_sensors_magnitude_and_skips_non_triaxial():
    torch.manual_seed(0)
    x = torch.randn(8, 64, 6)
    y = rotate(x, 45.0)
    assert not torch.allclose(x, y)
    mag = lambda t: t.reshape(8, 64, 2, 3).norm(dim=3)  # noqa: E731
    assert torch.allclose(mag(x), mag(y), atol=1e-5)
    # one rotation per window: the angle between two time steps of a sensor is kept
    cos = lambda t: torch.nn.functional.cosine_similarity(t[:, 0, :3], t[:, 1, :3], dim=1)  # noqa: E731
    assert torch.allclose(cos(x), cos(y), atol=1e-5)
    hr = torch.randn(8, 10, 1)
    assert torch.equal(rotate(hr, 45.0), hr)


def test_rotation_angle_is_bounded():
    torch.manual_seed(1)
    x = torch.zeros(256, 1, 3)
    x[:, 0, 0] = 1.0
    y = rotate(x, 20.0)
    angle = torch.rad2deg(torch.acos(y[:, 0, 0].clamp(-1, 1)))
    assert angle.max() <= 20.0 + 1e-3 and angle.max() > 10.0


def test_time_warp_at_unit_speed_is_the_identity_and_is_monotone():
    x = torch.randn(4, 128, 3)
    assert torch.allclose(_resample(x, warped_time(torch.ones(4, 5), 128)), x, atol=1e-5)
    torch.manual_seed(2)
    pos = warped_time((1 + 0.5 * torch.randn(4, 5)).clamp_min(0.1), 50)
    assert (pos[:, 1:] >= pos[:, :-1]).all() and torch.allclose(pos[:, 0], torch.zeros(4)) \
        and torch.allclose(pos[:, -1], torch.ones(4))


@pytest.mark.parametrize("t", [128, 10, 7])
def test_permutation_moves_whole_slices(t):
    x = torch.arange(2 * t, dtype=torch.float32).reshape(2, t, 1)
    order = torch.tensor([[2, 0, 1], [0, 1, 2]])
    y = permute_slices(x, order)
    assert sorted(y[0, :, 0].tolist()) == x[0, :, 0].tolist()  # the same steps, nothing lost or repeated
    assert torch.equal(y[1], x[1])  # the identity order
    b = [round(i * t / 3) for i in range(4)]
    assert y[0, :, 0].tolist() == x[0, b[2]:b[3], 0].tolist() + x[0, b[0]:b[1], 0].tolist() + x[0, b[1]:b[2], 0].tolist()


def test_augment_shares_time_plans_across_modalities_of_different_rates():
    """A window's two modalities (4 steps per step of the other) come out of permutation and masking
    still aligned in time."""
    torch.manual_seed(3)
    slow = torch.arange(16, dtype=torch.float32).repeat(6, 1).unsqueeze(2)  # [6, 16, 1]
    fast = torch.arange(64, dtype=torch.float32).div(4).floor().repeat(6, 1).unsqueeze(2)  # [6, 64, 1]
    ys = Augment(permute=4)([slow + 1, fast + 1])
    assert torch.equal(ys[1][:, ::4], ys[0])
    ys = Augment(mask=0.5)([slow + 1, fast + 1])
    zero_slow, zero_fast = ys[0][:, :, 0] == 0, ys[1][:, :, 0] == 0
    frac = zero_fast.float().mean(1)
    assert torch.allclose(frac, torch.full((6,), 0.5), atol=0.05)
    # the masked spans cover the same normalized time (to a step of the slower modality)
    centre = lambda z: (z.float() * torch.linspace(0, 1, z.shape[1])).sum(1) / z.float().sum(1)  # noqa: E731
    assert torch.allclose(centre(zero_slow), centre(zero_fast), atol=1 / 16)


def test_augment_with_everything_off_returns_the_input():
    xs = [torch.randn(3, 16, 3), torch.randn(3, 8, 1)]
    assert Augment()(xs) is xs or all(torch.equal(a, b) for a, b in zip(Augment()(xs), xs))


def test_every_preset_is_a_valid_config_and_paper_has_no_augmentation():
    for d in STAGE1_PRESETS.values():
        Stage1Config(**d).check()
    p = Stage1Config(**STAGE1_PRESETS["paper"])
    assert (p.input_views, p.jitter, p.scale, p.rotate, p.time_warp, p.permute, p.mask) == (1, 0, 0, 0, 0, 0, 0)
    assert p.fusion == "grid" and p.num_views == 9


@pytest.mark.parametrize("field,value", [("rotate", -1.0), ("rotate", 200.0), ("mask", 0.95), ("permute", 1),
                                         ("time_warp", -0.1)])
def test_augmentation_fields_out_of_range_name_the_field(field, value):
    with pytest.raises(ConfigError, match="'{}'".format(field)):
        Stage1Config(**{field: value}).check()


def test_cli_preset_then_config_then_flags(tmp_path):
    from cloud.flags import add_stage1_args
    from cloud.pipeline import stage1_config
    ap = argparse.ArgumentParser()
    add_stage1_args(ap)
    cfg = stage1_config(ap.parse_args(["--preset", "paper"]))
    assert (cfg.fusion, cfg.input_views, cfg.lr) == ("grid", 1, 0.01)
    (tmp_path / "c.yaml").write_text("lr: 0.02\nrotate: 10.0\n")
    cfg = stage1_config(ap.parse_args(["--preset", "paper", "--config", str(tmp_path / "c.yaml"), "--rotate", "5"]))
    assert (cfg.fusion, cfg.lr, cfg.rotate) == ("grid", 0.02, 5.0)
    assert stage1_config(ap.parse_args([])) == Stage1Config()


def test_stage1_trains_with_every_transform_on_three_modalities(tmp_path):
    ds = make_synthetic(num_subjects=4, windows_per_subject=30, num_classes=3,
                        modalities=(("a", 32, 3), ("b", 16, 3), ("hr", 4, 1)), informativeness=(1.0, 0.8, 0.3),
                        seed=4)
    prep = prepare(ds, labels_per_class=2, seed=0, val_fraction=0.25, test_fraction=0.25)
    cfg = Stage1Config(epochs=2, batch_size=16, encoder_widths=(8, 8), out_steps=2, proj_hidden=16, proj_dim=8,
                       num_views=4, rotate=15.0, time_warp=0.2, permute=4, mask=0.25, device="cpu")
    res = pretrain(prep.norm(prep.unlabeled), cfg, str(tmp_path), progress=False)
    assert all(np.isfinite(h["loss"]) for h in res["history"])
