"""Run the edge's code on the Jetson TX2 software stack (Python 3.6, torch 1.10, numpy 1.19).

Usage (an interpreter with that stack; e.g. .venv36 plus NVIDIA's or PyPI's torch 1.10 wheel):

    python3.6 scripts/check_tx2_stack.py MODEL_DIR LABELS_DIR FINETUNED_PT EXPECTED_TEST_ACCURACY

It imports every module of ``shared`` and ``edge``, loads the encoder bundle written by the cloud's
(newer) torch, loads the fine-tuned state dict, checks the test accuracy it gives against the figure
the newer stack reported, and runs a short stage-2 fine-tune and a stage-1 epoch with this torch.
"""
import importlib
import os
import pkgutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv):
    import numpy as np
    import torch

    import edge
    import shared
    print("python {}, torch {}, numpy {}".format(sys.version.split()[0], torch.__version__, np.__version__))
    for pkg in (shared, edge):
        for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            importlib.import_module(m.name)
    print("imported every module of shared/ and edge/")
    from shared.data import make_synthetic
    from shared.data.dataset import MultimodalDataset
    from shared.manifest import read_manifest, schema_normalizer
    from shared.training import Stage1Config, Stage2Config, evaluate, finetune, load_encoder_bundle, pretrain
    from shared.training.stage2 import build_model

    model_dir, labels_dir, finetuned, expected = argv[0], argv[1], argv[2], float(argv[3])
    man = read_manifest(model_dir)
    norm = schema_normalizer(man)
    encoders = load_encoder_bundle(os.path.join(model_dir, "encoders.pt"))
    print("loaded encoders.pt written by the cloud's torch")
    test = norm.apply(MultimodalDataset.load(os.path.join(labels_dir, "test.npz")))
    ck = torch.load(finetuned, map_location="cpu")
    cfg = Stage2Config(**ck["config"])
    model = build_model(encoders, test.modalities, test.num_classes, man["quality"]["q"], cfg)
    model.load_state_dict(ck["state_dict"])
    acc = evaluate(model, test)["accuracy"]
    print("fine-tuned model on the test windows: accuracy {:.4f} (newer stack: {:.4f})".format(acc, expected))
    assert abs(acc - expected) < 1e-3, "accuracy differs from the newer stack's"
    lab = norm.apply(MultimodalDataset.load(os.path.join(labels_dir, "labeled.npz")))
    val = norm.apply(MultimodalDataset.load(os.path.join(labels_dir, "val.npz")))
    t0 = time.time()
    res = finetune(load_encoder_bundle(os.path.join(model_dir, "encoders.pt")), lab, val,
                   Stage2Config(epochs=4, t_iter=2, device="cpu"), quality=man["quality"]["q"], progress=False)
    print("stage 2, 4 epochs (both phases) with this torch: val accuracy {:.4f} in {:.1f} s".format(
        res["val"]["accuracy"], time.time() - t0))
    ds = make_synthetic(num_subjects=4, windows_per_subject=32, num_classes=3)
    out = pretrain(ds, Stage1Config(epochs=1, batch_size=32, encoder_widths=(8, 8, 8), out_steps=4, device="cpu"),
                   "/tmp/tx2_stage1_check", resume=False, progress=False)
    print("stage 1, 1 epoch with this torch: loss {:.4f}".format(out["history"][-1]["loss"]))
    print("TX2 stack check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
