"""Export the frozen MiniLM text encoder to ONNX, for edges that have ONNX Runtime but no ``transformers``.

The exported folder (read by ``shared.text.OnnxTextEncoder``)::

    text_encoder.onnx   transformer + mean pooling over non-padding tokens + L2 norm, opset 13, one file;
                        inputs input_ids / attention_mask / token_type_ids int64 [batch, seq],
                        output embedding float32 [batch, 384]
    vocab.txt           WordPiece vocabulary (for shared.tokenization.BertTokenizer)
    text_encoder.json   format, name, dim, max_seq_length, do_lower_case, file names, parity figure

``export_text_encoder`` checks parity before it publishes the folder: about ten varied sentences are
embedded by the torch encoder and by ONNX Runtime fed by the pure-Python tokenizer; a max abs difference
over 1e-4 raises. The folder is written under a temporary name and renamed, so a failed export leaves
nothing behind.
"""
import json
import os
import shutil
import tempfile
import time
from typing import Any, Dict, List

import numpy as np
import torch
from torch import nn

from shared.errors import ConfigError
from shared.export import export_onnx
from shared.text import (TEXT_ENCODER_FORMAT, TEXT_ENCODER_INPUTS, TEXT_ENCODER_JSON, TEXT_ENCODER_ONNX,
                         TEXT_ENCODER_VOCAB, MiniLMTextEncoder, OnnxTextEncoder)

PARITY_TOLERANCE = 1e-4

PARITY_SENTENCES = [
    "a person walking",
    "Someone is sitting down on a chair, then stands up again.",
    "lying in bed",
    "Café naïve résumé: the subject climbs 3 flights of stairs in 45.5 seconds!",
    "walking upstairs while carrying a heavy bag and talking on the phone " * 4,
    "跑步",
    "emoji 😀 and symbols #$%^&*()",
    "",
    "x",
    "supercalifragilisticexpialidocious " * 80,  # longer than max_seq_length: truncated
]


class _PooledTextModel(nn.Module):
    """Transformer -> mean over non-padding tokens -> L2 norm; ``[B, L]`` int64 ids -> ``[B, dim]``."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        tokens = self.transformer(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids)[0]
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        mean = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return mean / mean.norm(p=2, dim=1, keepdim=True).clamp(min=1e-12)


def _read_do_lower_case(model_dir: str) -> bool:
    path = os.path.join(model_dir, "tokenizer_config.json")
    try:
        with open(path, "r", encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError("{}: unreadable tokenizer config ({})".format(path, e)) from e
    value = cfg.get("do_lower_case", True)
    if not isinstance(value, bool):
        raise ConfigError("{}: do_lower_case is {!r}, not a bool".format(path, value))
    return value


def _set_attn_implementation(model: nn.Module, impl: str) -> str:
    """Switch a transformers model's attention kernel (eager traces cleanly); returns the previous one."""
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None) or "eager"
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    elif config is not None:
        config._attn_implementation = impl
    return previous


def export_text_encoder(encoder: MiniLMTextEncoder, folder: str, opset: int = 13) -> Dict[str, Any]:
    """Export ``encoder`` to ``folder`` (created; must not exist) and return the metadata written to
    ``folder/text_encoder.json``. Raises ``ConfigError`` when ONNX Runtime disagrees with torch by more
    than 1e-4 (max abs difference over the unit-norm embeddings)."""
    folder = os.path.abspath(folder)
    if os.path.exists(folder):
        raise ConfigError("text encoder export: {} already exists".format(folder))
    parent = os.path.dirname(folder)
    if not os.path.isdir(parent):
        os.makedirs(parent)
    vocab_src = os.path.join(encoder.model_dir, "vocab.txt")
    if not os.path.isfile(vocab_src):
        raise ConfigError("text encoder export: no vocabulary at {}".format(vocab_src))
    do_lower_case = _read_do_lower_case(encoder.model_dir)

    t0 = time.time()
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(folder) + "-", dir=parent)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the published folder is an ordinary one
        shutil.copyfile(vocab_src, os.path.join(tmp, TEXT_ENCODER_VOCAB))
        model = encoder.model.to("cpu")
        previous = _set_attn_implementation(model, "eager")
        try:
            wrapper = _PooledTextModel(model).eval()
            example = encoder.tokenizer(["a person walking", "someone sits down on a chair"], padding=True,
                                        return_tensors="pt")
            example = [example[n].to(torch.int64) for n in TEXT_ENCODER_INPUTS]
            axes = {n: {0: "batch", 1: "sequence"} for n in TEXT_ENCODER_INPUTS}
            axes["embedding"] = {0: "batch"}
            export_onnx(wrapper, example, os.path.join(tmp, TEXT_ENCODER_ONNX), input_names=list(TEXT_ENCODER_INPUTS),
                        output_names=["embedding"], opset=opset, dynamic_axes=axes)
        finally:
            _set_attn_implementation(model, previous)
            model.to(encoder.device)
        meta = {
            "format": TEXT_ENCODER_FORMAT,
            "name": encoder.name,
            "dim": int(encoder.dim),
            "max_seq_length": int(encoder.max_seq_length),
            "do_lower_case": do_lower_case,
            "onnx": TEXT_ENCODER_ONNX,
            "vocab": TEXT_ENCODER_VOCAB,
            "inputs": list(TEXT_ENCODER_INPUTS),
            "output": "embedding",
            "opset": int(opset),
        }  # type: Dict[str, Any]
        _write_json(os.path.join(tmp, TEXT_ENCODER_JSON), meta)
        diff = _parity(encoder, tmp, PARITY_SENTENCES)
        if not diff <= PARITY_TOLERANCE:
            raise ConfigError("text encoder export: ONNX Runtime differs from torch by {:.3g} (max abs) > {}".format(
                diff, PARITY_TOLERANCE))
        meta["parity_max_abs_diff"] = diff
        meta["export_seconds"] = round(time.time() - t0, 2)
        _write_json(os.path.join(tmp, TEXT_ENCODER_JSON), meta)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _parity(encoder: MiniLMTextEncoder, folder: str, sentences: List[str]) -> float:
    """Max abs difference between torch and ONNX Runtime embeddings (both bypass the caches)."""
    ref = np.asarray(encoder._embed(list(sentences)), np.float32)
    onnx_encoder = OnnxTextEncoder(folder, providers=["CPUExecutionProvider"])
    got = np.asarray(onnx_encoder._embed(list(sentences)), np.float32)
    return float(np.abs(ref - got).max())


def _write_json(path: str, obj: Dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
