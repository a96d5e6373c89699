"""Graceful sensor loss: the paper's Cosmo stage 2 against the same stage 2 trained with modality dropout
and selected on validation over sensor subsets ("Cosmo, robust"), on the same shipped stage-1 encoders and
the same labeled windows, paired by seed.

For every seed, both configurations fine-tune from ``--model`` (a pulled registry version: encoders.pt +
manifest.json) on ``--labels`` (labeled.npz, val.npz, test.npz; default: the demo's) and are scored on the
test windows with every sensor, and with each sensor switched off in turn (zeroed and masked, exactly as
the edge serves a sensor that is off). Reports mean ± std over seeds and the paired difference with its
95 % confidence interval (t distribution). Writes ``sensor_loss.json``, ``sensor_loss.md`` and
``sensor_loss.png`` into ``--out``.

    python -m benchmarks.sensor_loss --seeds 0 1 2 3 4 --out docs/benchmarks/sensor_loss
"""
import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

import numpy as np


from benchmarks.report import command_line, mean_std, paired, write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_MODEL = os.path.join(ROOT, "runs", "demo", "edge", "state", "models", "cosmo-hapt", "v1")
DEMO_LABELS = os.path.join(ROOT, "runs", "demo", "edge", "labels")
CONFIGS = {"cosmo": {}, "cosmo_robust": {"modality_dropout": 0.3, "selection": "subsets"}}


def single_modal_data(model: str, labels: str) -> Tuple[Any, Any, Any, int]:
    """The labeled, validation and test windows of ``labels`` normalized as ``model`` serves them, and the
    encoders' ``out_steps``: what every SingleModal run of the benchmark trains and scores on (read once)."""
    from edge.finetune import load_split
    from shared.manifest import read_manifest, schema_normalizer
    man = read_manifest(model)
    norm = schema_normalizer(man)
    lab, val, test = (norm.apply(load_split(labels, n)) for n in ("labeled", "val", "test"))
    return lab, val, test, int(man["encoders"][0]["out_steps"]) if man.get("encoders") else 8


def single_modal(data: Tuple[Any, Any, Any, int], seed: int, epochs: int, modality: str) -> float:
    """Test accuracy of the SingleModal baseline of ``modality`` on the same labeled windows (the reference a
    model with the other sensors off must reach); ``data`` from ``single_modal_data``."""
    from shared.baselines import train_baseline
    from shared.training import Stage2Config, evaluate
    lab, val, test, out_steps = data
    res = train_baseline("single_modal", lab, val, Stage2Config(seed=seed, epochs=epochs, device="cpu"),
                         modality=modality, out_steps=out_steps)
    return float(evaluate(res["model"], test)["accuracy"])


def run(model: str, labels: str, seeds: List[int], epochs: int) -> Dict[str, Any]:
    from edge.finetune import run_finetune
    from shared.training.stage2 import Stage2Config
    rows = []
    single = {}  # type: Dict[str, List[float]]
    data = single_modal_data(model, labels)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for name, over in CONFIGS.items():
                t0 = time.time()
                m = run_finetune(model, labels, os.path.join(tmp, "{}_{}".format(name, seed)),
                                 Stage2Config(seed=seed, epochs=epochs, device="cpu", **over), progress=False)
                row = {"config": name, "seed": seed, "val": m["val"]["accuracy"], "test": m["test"]["accuracy"],
                       "without": m["test_without"], "seconds": time.time() - t0}
                print(json.dumps(row), flush=True)
                rows.append(row)
            for m in rows[-1]["without"]:
                single.setdefault(m, []).append(100.0 * single_modal(data, seed, epochs, m))
    modalities = list(rows[0]["without"])
    cases = ["all"] + ["without_" + m for m in modalities]

    def score(r: Dict[str, Any], case: str) -> float:
        return 100.0 * (r["test"] if case == "all" else r["without"][case[len("without_"):]])
    table = {}
    for case in cases:
        per = {name: [score(r, case) for r in rows if r["config"] == name] for name in CONFIGS}
        table[case] = {name: dict(mean_std(v), per_seed=v) for name, v in per.items()}
        table[case]["robust_minus_cosmo"] = paired(per["cosmo"], per["cosmo_robust"])
        if case != "all" and len(modalities) == 2:  # one sensor off: the other one's SingleModal is the bar
            left = [m for m in modalities if m != case[len("without_"):]][0]
            ref = single[left]
            table[case]["single_modal"] = dict(mean_std(ref), modality=left, per_seed=ref)
            table[case]["robust_minus_single"] = paired(ref, per["cosmo_robust"])
    return {"rows": rows, "table": table, "modalities": modalities, "configs": CONFIGS, "single_modal": single}


def markdown(r: Dict[str, Any]) -> str:
    lines = ["# Graceful sensor loss", "", "`{}`, {} ({} seeds, paired; same stage-1 model and labeled windows "
             "for every seed: the seed changes initialization and augmentation).".format(
                 r["command"], r["date"], len(r["seeds"])), "",
             "Configurations: **cosmo** = the paper's stage 2; **cosmo_robust** = the same with "
             "`modality_dropout 0.3` (a training window loses one sensor with probability 0.3) and "
             "`selection subsets` (the epoch kept is best on validation averaged over every sensor subset).",
             "", "| test accuracy, % | cosmo | cosmo_robust | robust − cosmo (95 % CI) |", "|---|---|---|---|"]
    for case, t in r["table"].items():
        d = t["robust_minus_cosmo"]
        lines.append("| {} | {:.1f} ± {:.1f} | {:.1f} ± {:.1f} | {:+.1f} [{:+.1f}, {:+.1f}] |".format(
            "every sensor" if case == "all" else case.replace("_", " "), t["cosmo"]["mean"], t["cosmo"]["std"],
            t["cosmo_robust"]["mean"], t["cosmo_robust"]["std"], d["mean"], d["ci_low"], d["ci_high"]))
    lines.append("")
    refs = [(c, t) for c, t in r["table"].items() if "single_modal" in t]
    if refs:
        lines += ["With one sensor off, the bar is the SingleModal baseline of the sensor left, trained on the same "
                  "labeled windows with the same seeds:", "",
                  "| test accuracy, % | SingleModal of the sensor left | cosmo_robust | robust − SingleModal (95 % CI) |",
                  "|---|---|---|---|"]
        for case, t in refs:
            sm, d = t["single_modal"], t["robust_minus_single"]
            lines.append("| {} | {} {:.1f} ± {:.1f} | {:.1f} ± {:.1f} | {:+.1f} [{:+.1f}, {:+.1f}] |".format(
                case.replace("_", " "), sm["modality"], sm["mean"], sm["std"], t["cosmo_robust"]["mean"],
                t["cosmo_robust"]["std"], d["mean"], d["ci_low"], d["ci_high"]))
        lines.append("")
    return "\n".join(lines)


def plot(r: Dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cases = list(r["table"])
    x = np.arange(len(cases))
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, (name, color) in enumerate((("cosmo", "tab:gray"), ("cosmo_robust", "tab:blue"))):
        means = [r["table"][c][name]["mean"] for c in cases]
        stds = [r["table"][c][name]["std"] for c in cases]
        ax.bar(x + (k - 0.5) * 0.38, means, 0.38, yerr=stds, capsize=3, color=color, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(["every sensor" if c == "all" else c.replace("_", " ") for c in cases])
    ax.set_ylabel("test accuracy, % (mean ± std over seeds)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEMO_MODEL, help="a pulled version with encoders.pt (default: the demo's)")
    ap.add_argument("--labels", default=DEMO_LABELS, help="labeled/val/test windows (default: the demo's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "sensor_loss"))
    a = ap.parse_args(argv)
    for path, flag in ((os.path.join(a.model, "encoders.pt"), "--model"), (os.path.join(a.labels, "test.npz"),
                                                                         "--labels")):
        if not os.path.exists(path):
            print("sensor_loss: {} {}: not found; run `bash scripts/demo.sh` first or pass {}".format(
                flag, path, flag), file=sys.stderr)
            return 2
    if len(a.seeds) < 2:
        print("sensor_loss: --seeds: give at least 2 seeds (the differences are paired by seed)", file=sys.stderr)
        return 2
    r = run(a.model, a.labels, a.seeds, a.epochs)
    r.update({"command": command_line("benchmarks.sensor_loss", argv),
              "date": time.strftime("%Y-%m-%d"), "seeds": a.seeds, "epochs": a.epochs,
              "model": os.path.relpath(a.model, ROOT), "labels": os.path.relpath(a.labels, ROOT)})
    write_report(a.out, "sensor_loss", r, markdown, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
