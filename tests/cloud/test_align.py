"""The cloud alignment experiment end to end on synthetic data, with a deterministic stand-in for the
frozen text encoder (the real MiniLM encoder is tested in tests/shared/test_text_and_mw2.py)."""
import hashlib
import json

import numpy as np

from cloud.align import run_align, summary
from shared.data import make_synthetic
from shared.text import TextEncoder
from shared.training.align import AlignConfig


class KeywordEncoder(TextEncoder):
    """Sentence -> prototype of the class name it mentions + a small sentence-specific perturbation."""

    def __init__(self, classes):
        super().__init__()
        rng = np.random.RandomState(3)
        self.protos = {c: rng.randn(24) for c in classes}

    @property
    def name(self):
        return "keyword-test"

    @property
    def dim(self):
        return 24

    def _embed(self, sentences):
        out = []
        for s in sentences:
            base = sum((p for c, p in self.protos.items() if c in s), np.zeros(24))
            noise = np.random.RandomState(int(hashlib.sha256(s.encode()).hexdigest()[:8], 16)).randn(24)
            out.append(base + 0.1 * noise)
        return np.stack(out)


def test_run_align_writes_results_and_beats_chance(tmp_path):
    ds = make_synthetic(num_subjects=10, windows_per_subject=40, num_classes=4, informativeness=(1.0, 1.0), seed=0)
    ds.save(str(tmp_path / "syn"))
    enc = KeywordEncoder(ds.class_names)
    cfg = AlignConfig(encoder="conv1d", encoder_config={"widths": [16, 16, 16], "out_steps": 4}, epochs=8,
                      batch_size=32, optimizer="adam", lr=3e-3, device="cpu")
    r = run_align(str(tmp_path / "out"), str(tmp_path / "syn.npz"), cfg, enc, holdout=[ds.class_names[3]],
                  pool=100, plot=True)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["zero_shot"]["accuracy"] == r["zero_shot"]["accuracy"]
    assert r["zero_shot_seen"]["accuracy"] > 0.6  # 4 classes: chance 0.25
    assert r["imu2text"]["pool"] == min(100, r["windows"]["test"])
    assert (tmp_path / "out" / "tsne_test.png").stat().st_size > 1000
    assert "zero-shot on activities never seen" in summary(r)


def test_cross_modal_retrieval_beats_random_init(tmp_path):
    from cloud.align import cross_modal_retrieval
    from shared.data.splits import Normalizer, subject_split
    from shared.training import Stage1Config, pretrain

    ds = make_synthetic(num_subjects=10, windows_per_subject=40, num_classes=4, informativeness=(1.0, 1.0), seed=0)
    ds.save(str(tmp_path / "syn"))
    split = subject_split(ds, seed=0)
    train = Normalizer.fit(split.train).apply(split.train)
    cfg = Stage1Config(epochs=6, batch_size=32, encoder_widths=(16, 16, 16), out_steps=4, proj_hidden=32,
                       device="cpu")
    pretrain(train, cfg, str(tmp_path / "s1"), progress=False)
    r = cross_modal_retrieval(str(tmp_path / "s1"), str(tmp_path / "syn.npz"), pool=64)
    assert r["pool"] == min(64, len(split.test)) and set(r["pretrained"]) == {"a->b", "b->a"}
    for k, m in r["pretrained"].items():
        assert m["pool"] == r["pool"] and 0.0 <= m["R@1"] <= m["R@10"] <= m["R@50"] <= 1.0
        assert m["MRR"] > r["random_init"][k]["MRR"]
