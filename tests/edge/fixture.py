"""A served model folder for torch-free checks: ``python -m tests.edge.fixture DIR`` writes DIR/model (the tiny
real model of test_runtime: manifest, ONNX, weights), DIR/windows.npz (raw windows) and DIR/expected.json (the
probabilities ONNX Runtime gives for them here). Needs torch (it trains nothing, but builds the model)."""
import json
import os
import shutil
import sys

import numpy as np


def write_fixture(root: str) -> str:
    from edge.runtime import Runtime
    from tests.edge.test_runtime import build_model_dir, raw_windows
    built = build_model_dir(os.path.join(root, "build"), version=3, seed=0)
    shutil.copytree(built["dir"], os.path.join(root, "model"))
    windows = raw_windows(built, 8)
    np.savez(os.path.join(root, "windows.npz"), **windows)
    out = Runtime.load(os.path.join(root, "model")).predict(windows)
    with open(os.path.join(root, "expected.json"), "w") as f:
        json.dump({"proba": out["proba"].tolist()}, f)
    return root


if __name__ == "__main__":
    os.makedirs(sys.argv[1], exist_ok=True)
    print(write_fixture(sys.argv[1]))
