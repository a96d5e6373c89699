"""Export the fine-tuned Cosmo model to one ONNX file for the edge runtime (opset 13, dynamic batch).

Graph (``model.onnx``):

* inputs: one per modality, named like the modality, normalized windows ``[B, T_j, C_j]`` float32; then
  ``present [B, M]`` float32 (1 = use the modality, 0 = missing or flat). A float mask rather than bool:
  it exports cleanly at opset 13 and TensorRT 8.2 takes float inputs without a cast plugin. Inside the
  graph ``present > 0.5`` is the model's bool mask; a missing modality's input is multiplied by 0 (so
  whatever the caller sent there cannot leak in) and its attention weight beta is 0, the rest renormalized.
* outputs: ``logits [B, K]``, ``beta [B, M]`` (rows sum to 1) and ``embedding [B, H]``: the GRU's last
  hidden state over the attention-fused feature map, i.e. the feature the classifier's MLP head reads
  (``CosmoModel.forward_with_embedding``).

The file is checked against torch with onnxruntime at batch 1 and 8, and at batch 8 with one modality
masked in half of the rows, before it is accepted.
"""
import os
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from torch import nn

from shared.contract import KIND_ONNX, MODEL_ONNX, MODEL_OUTPUTS, PRESENT
from shared.errors import CosmoError
from shared.export import export_onnx
from shared.manifest import file_entry

OUTPUTS = MODEL_OUTPUTS
RTOL, ATOL = 1e-3, 1e-4


class PresentMasked(nn.Module):
    """``forward(x_1, ..., x_M, present_float)`` -> ``(logits, beta, embedding)`` of a ``CosmoModel``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> Any:
        xs, present = list(inputs[:-1]), inputs[-1] > 0.5
        xs = [x * present[:, j].to(x.dtype)[:, None, None] for j, x in enumerate(xs)]
        return self.model.forward_with_embedding(xs, present)


def _examples(manifest: Dict[str, Any], batch: int, seed: int) -> List[np.ndarray]:
    rng = np.random.RandomState(seed)
    return [rng.randn(batch, int(d["window"]), len(d["channels"])).astype(np.float32)
            for d in manifest["input_schema"].values()]


def _torch_outputs(model: nn.Module, xs: Sequence[np.ndarray], present: np.ndarray) -> List[np.ndarray]:
    with torch.no_grad():
        outs = PresentMasked(model).eval()(*[torch.from_numpy(x) for x in xs], torch.from_numpy(present))
    return [o.numpy() for o in outs]


def export_finetuned(model: nn.Module, manifest: Dict[str, Any], out_dir: str,
                     batch_check: Sequence[int] = (1, 8)) -> Dict[str, Any]:
    """Write ``out_dir/model.onnx`` from the fine-tuned ``CosmoModel`` and check it against torch.

    ``manifest["input_schema"]`` gives the modalities (in the model's order), window lengths and channel
    counts. Returns the manifest file entry ``{path, kind: "onnx", size, sha256}``. Raises ``CosmoError``
    when onnxruntime is missing or its outputs differ from torch's (rtol 1e-3, atol 1e-4).
    """
    mods = list(manifest["input_schema"])
    clash = set(mods) & (set(OUTPUTS) | {PRESENT})
    if clash:
        raise CosmoError("export: modality names {} clash with the ONNX graph's own names {}".format(
            sorted(clash), [PRESENT] + list(OUTPUTS)))
    if len(mods) != len(model.encoders):
        raise CosmoError("export: manifest has {} modalities {}, the model {} encoders".format(
            len(mods), mods, len(model.encoders)))
    model = model.cpu().eval()
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, MODEL_ONNX)
    example = [torch.from_numpy(x) for x in _examples(manifest, 2, 0)]
    example.append(torch.ones(2, len(mods), dtype=torch.float32))
    tmp = path + ".tmp"
    export_onnx(PresentMasked(model), example, tmp, input_names=mods + [PRESENT], output_names=list(OUTPUTS))
    try:
        check_onnx(model, manifest, tmp, batch_check)
    except BaseException:
        os.remove(tmp)
        raise
    os.replace(tmp, path)
    return file_entry(out_dir, MODEL_ONNX, KIND_ONNX)


def check_onnx(model: nn.Module, manifest: Dict[str, Any], path: str, batch_check: Sequence[int] = (1, 8)) -> None:
    """Compare ``path`` run by onnxruntime (CPU) with ``model`` in torch; raise ``CosmoError`` on mismatch."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise CosmoError("export: onnxruntime is needed to check {} against torch ({})".format(path, e)) from e
    mods = list(manifest["input_schema"])
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    cases = [(b, None) for b in batch_check]
    if len(mods) > 1:  # the first modality masked in every other row
        cases.append((max(batch_check), 0))
    for i, (b, masked) in enumerate(cases):
        xs = _examples(manifest, b, 100 + i)
        present = np.ones((b, len(mods)), np.float32)
        if masked is not None:
            present[::2, masked] = 0.0
        ref = _torch_outputs(model, xs, present)
        feed = dict(zip(mods, xs))
        feed[PRESENT] = present
        got = sess.run(list(OUTPUTS), feed)
        for name, r, g in zip(OUTPUTS, ref, got):
            if r.shape != g.shape or not np.allclose(r, g, rtol=RTOL, atol=ATOL):
                err = float(np.abs(r - g).max()) if r.shape == g.shape else float("nan")
                raise CosmoError("export: ONNX output {!r} differs from torch at batch {}{} (shapes {} vs {}, "
                                 "max abs diff {:.3g})".format(name, b, "" if masked is None else
                                                               ", modality {!r} masked".format(mods[masked]),
                                                               g.shape, r.shape, err))
        if masked is not None and not np.all(got[1][::2, masked] == 0.0):
            raise CosmoError("export: beta of masked modality {!r} is not 0".format(mods[masked]))
