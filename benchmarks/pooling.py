"""Stage 1's max-pooling: the encoder's ``nn.MaxPool1d(2)`` against a candidate replacement, ``MaxPool2``
(the same max over pairs as a reshape and ``amax``, without max_pool's index tensor), in the real
``pretrain`` on the same windows, side by side. The candidate lives here, not in the encoder: it did not
pay on this machine (docs/benchmarks/pooling), so the encoder keeps the standard operator.

For each repeat, both variants run ``shared.training.pretrain`` for ``--epochs`` epochs on the same
unlabeled windows (HAPT's packaged copy, ``--windows`` of them; seed 0), interleaved so that drift of a
shared machine hits both alike. Reports seconds per epoch (median over repeats, first epoch excluded),
their ratio, and checks that the two give the same encoder outputs for the same weights. Writes
``pooling.json``, ``pooling.md`` and ``pooling.png`` into ``--out``.

    python -m benchmarks.pooling --out docs/benchmarks/pooling
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List

import numpy as np
import torch
from torch import nn

from benchmarks.report import write_report
from shared.models import encoders as enc_mod

VARIANTS = ("MaxPool1d", "MaxPool2")


class MaxPool2(nn.Module):
    """``nn.MaxPool1d(2)`` over ``[B, C, T]`` as a reshape to pairs and a max over each pair: the same values
    (and gradients, but for exact ties), without the index tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1] // 2
        return x[..., :2 * n].reshape(x.shape[0], x.shape[1], n, 2).amax(-1)


def _with(encoder: nn.Module, variant: str) -> nn.Module:
    """``encoder`` with its pooling layers replaced by ``variant``'s (in place; returned)."""
    if variant == "MaxPool2":
        encoder.net = nn.Sequential(*[MaxPool2() if isinstance(m, nn.MaxPool1d) else m for m in encoder.net])
    return encoder


def _epoch_seconds(history: List[Dict[str, Any]]) -> List[float]:
    return [float(v) for v in np.diff([0.0] + [float(r["seconds"]) for r in history])]


def run(variant: str, ds: Any, epochs: int, batch: int) -> List[float]:
    from shared.training import Stage1Config, pretrain
    build = enc_mod.Conv1dEncoder.__init__

    def patched(self: Any, config: Any) -> None:  # what pretrain's encoders are built with
        build(self, config)
        _with(self, variant)
    enc_mod.Conv1dEncoder.__init__ = patched
    try:
        with tempfile.TemporaryDirectory() as out:
            res = pretrain(ds, Stage1Config(epochs=epochs, batch_size=batch, seed=0, device="cpu"), out,
                           resume=False, progress=False)
    finally:
        enc_mod.Conv1dEncoder.__init__ = build
    return _epoch_seconds(res["history"])


def encoder_steps(window: int, batch: int, repeats: int) -> Dict[str, float]:
    """Milliseconds of one forward + backward of a stage-1 conv1d encoder alone, per pooling (median of
    ``repeats`` rounds of 10 steps, the two interleaved)."""
    cfg = enc_mod.Conv1dEncoderConfig(in_channels=3, window=window)
    torch.manual_seed(0)
    slow = enc_mod.Conv1dEncoder(cfg)
    fast = _with(enc_mod.Conv1dEncoder(cfg), "MaxPool2")
    x = torch.randn(batch, window, 3)
    times = {"MaxPool1d": [], "MaxPool2": []}  # type: Dict[str, List[float]]
    for _ in range(repeats + 1):
        for name, m in (("MaxPool1d", slow), ("MaxPool2", fast)):
            t0 = time.perf_counter()
            for _ in range(10):
                m.zero_grad()
                m(x).sum().backward()
            times[name].append((time.perf_counter() - t0) * 100.0)  # ms per step
    return {k: statistics.median(v[1:]) for k, v in times.items()}  # the first round warms up


def same_outputs(window: int) -> float:
    """max |difference| of a conv1d encoder's output with either pooling, same weights, train and eval."""
    cfg = enc_mod.Conv1dEncoderConfig(in_channels=3, window=window)
    torch.manual_seed(0)
    slow = enc_mod.Conv1dEncoder(cfg)
    fast = _with(enc_mod.Conv1dEncoder(cfg), "MaxPool2")
    fast.load_state_dict(slow.state_dict())
    x = torch.randn(16, window, 3)
    fast.eval()
    slow.eval()
    with torch.no_grad():
        return float((fast(x) - slow(x)).abs().max())


def markdown(r: Dict[str, Any]) -> str:
    s = r["summary"]
    lines = ["# Stage 1: MaxPool1d vs MaxPool2 ({} HAPT windows, batch {}, {} epochs x {} repeats, {} torch "
             "threads)".format(r["windows"], r["batch"], r["epochs"], r["repeats"], r["threads"]), "",
             "| pooling | s / epoch (median) | all epochs after the first |", "|---|---|---|"]
    for v in VARIANTS:
        lines.append("| {} | {:.2f} | {} |".format(v, s[v]["median_s"], ", ".join("{:.2f}".format(x) for x in s[v]["epochs_s"])))
    lines += ["", "MaxPool1d / MaxPool2 time per epoch: **{:.2f}x** (same run, interleaved); encoder outputs "
              "differ by at most {:.1e} with the same weights.".format(r["speedup"], r["max_abs_diff"]), "",
              "The encoder alone (forward + backward, batch {}): MaxPool1d {:.1f} ms, MaxPool2 {:.1f} ms per step "
              "(**{:.2f}x**).".format(r["batch"], r["encoder_step_ms"]["MaxPool1d"], r["encoder_step_ms"]["MaxPool2"],
                                      r["encoder_speedup"])]
    return "\n".join(lines) + "\n"


def plot(r: Dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, v in enumerate(VARIANTS):
        ys = r["summary"][v]["epochs_s"]
        ax.scatter([i] * len(ys), ys, alpha=0.6)
        ax.hlines(r["summary"][v]["median_s"], i - 0.2, i + 0.2)
    ax.set_xticks(range(len(VARIANTS)))
    ax.set_xticklabels(VARIANTS)
    ax.set_ylabel("stage-1 seconds per epoch")
    ax.set_ylim(bottom=0)
    ax.set_title("Stage 1 epoch time by pooling")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/pooling")
    ap.add_argument("--windows", type=int, default=2048, help="unlabeled HAPT windows per epoch")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--dataset", default="hapt", help="any load_named dataset (tests use synthetic)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from shared.data import Normalizer, load_named
    ds = load_named(a.dataset)
    ds = Normalizer.fit(ds).apply(ds)
    if a.windows < len(ds):
        ds = ds.subset(np.sort(np.random.RandomState(0).choice(len(ds), a.windows, replace=False)))
    ds = ds.with_labels(np.full(len(ds), -1, np.int64))
    window = next(iter(ds.x.values())).shape[1]
    epochs = {v: [] for v in VARIANTS}  # type: Dict[str, List[float]]
    for _ in range(a.repeats):
        for v in VARIANTS:
            epochs[v] += run(v, ds, a.epochs, a.batch)[1:]  # the first epoch warms caches and allocators
    summary = {v: {"median_s": statistics.median(xs), "epochs_s": xs} for v, xs in epochs.items()}
    steps = encoder_steps(window, a.batch, max(3, a.repeats))
    r = {"encoder_step_ms": steps, "encoder_speedup": steps["MaxPool1d"] / steps["MaxPool2"],
         "windows": len(ds), "dataset": a.dataset, "batch": a.batch, "epochs": a.epochs, "repeats": a.repeats,
         "threads": torch.get_num_threads(), "summary": summary,
         "speedup": summary["MaxPool1d"]["median_s"] / summary["MaxPool2"]["median_s"],
         "max_abs_diff": same_outputs(window), "host": os.uname().nodename, "torch": torch.__version__}
    write_report(a.out, "pooling", r, markdown, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
