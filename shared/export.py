"""ONNX export for edges: opset 13 (TensorRT 8.2 on the TX2), one file, dynamic batch axis."""
import inspect
import io
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from torch import nn

OPSET = 13


def export_onnx(module: nn.Module, example: Sequence[torch.Tensor], path: Optional[str] = None,
                input_names: Optional[List[str]] = None, output_names: Optional[List[str]] = None,
                opset: int = OPSET, dynamic_axes: Optional[Dict[str, Dict[int, str]]] = None) -> bytes:
    """Export ``module`` (in eval mode) with a dynamic batch axis on every input and output.

    ``dynamic_axes`` (torch.onnx's form, ``{name: {axis: label}}``) replaces that default, e.g. to make a
    sequence axis dynamic too.

    Uses the TorchScript exporter (the only one in torch 1.10, and the one that targets opset 13);
    weights are embedded (no external data). 1-D conv encoders are exported in their 2-D form
    (``layout_2d``). Returns the model bytes and writes them to ``path``.
    """
    module = module.eval()
    input_names = input_names or ["x{}".format(i) for i in range(len(example))]
    output_names = output_names or ["y"]
    axes = dynamic_axes if dynamic_axes is not None else \
        {n: {0: "batch"} for n in list(input_names) + list(output_names)}
    kwargs = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:  # torch >= 2.5 defaults to dynamo
        kwargs["dynamo"] = False
    buf = io.BytesIO()
    with torch.no_grad(), layout_2d(module):
        torch.onnx.export(module, tuple(example), buf, opset_version=opset, input_names=input_names,
                          output_names=output_names, dynamic_axes=axes, do_constant_folding=True, **kwargs)
    data = buf.getvalue()
    if path:
        with open(path, "wb") as f:
            f.write(data)
    return data


@contextmanager
def layout_2d(module: nn.Module) -> Iterator[None]:
    """Within: every submodule with an ``as_2d`` switch (``Conv1dEncoder``) computes as 2-D ops, which
    ONNX Runtime runs faster; the numbers are the same (export checks compare against the 1-D form)."""
    subs = [(m, m.as_2d) for m in module.modules() if hasattr(m, "as_2d")]
    for m, _ in subs:
        m.as_2d = True
    try:
        yield
    finally:
        for m, before in subs:
            m.as_2d = before
