"""Stage-2 study on UCI HAPT: learning from the unlabeled windows in stage 2 (pseudo-labels with
consistency, FixMatch-style; ``Stage2Config.unlabeled_weight``), with and without modality dropout,
chosen on the validation subjects only.

Stage 1 is the default Cosmo-HAR pretraining, once per seed, on the pool of ``benchmarks/accuracy.py``
(training windows outside every labeled set below 100 %); pass ``--stage1-from`` an accuracy run's
``--out`` to reuse its encoders (the same pool and seeds give the same files). Every candidate of a seed
fine-tunes the same encoders on the same 1 % labels (ConcatAttn, Hopkins quality prior, the accuracy
benchmark's budget: 100 epochs capped at about 500 optimizer steps, or 2.5 times that for the candidates
named "x2.5 steps": the pseudo-labeled share still grows at the end of the shorter run), its epoch chosen
on validation, and draws its unlabeled windows from that pool. "EMA 0.99" candidates score and keep an
average of the weights (``Stage2Config.ema``); "aligned" ones align the pseudo-labels' class distribution
with the labeled windows' (``Stage2Config.align_distribution``).

The candidate kept is the one with the best mean **validation** accuracy over the sensor subsets (every
sensor present, and each one switched off in turn): the method has to serve both a full device and one
with a sensor gone (ties: the best mean validation accuracy with every sensor). Test accuracies with
every sensor and with each one off are reported for every candidate, with the paired difference (by seed)
to ``labels only`` and its 95 % interval; the choice never looks at the test subjects. Runs are cached
under ``--out`` (resumable; several processes can split ``--candidates``/``--seeds`` into one folder).
Writes ``semi.json``, ``semi.md`` and ``semi.png``.

    python -m benchmarks.semi --out results/semi --stage1-from results/accuracy --seeds 0 1 2 3 4
    python -m benchmarks.semi --out results/semi --quick        # a smoke run
"""
import argparse
import json
import os
import sys
import time
from collections import OrderedDict
from typing import Any, Dict, List

import numpy as np
import torch

from benchmarks.accuracy import budget, labeled_sets, prepare_dataset, pretrained, seed_dir, stage2_path
from benchmarks.report import add_study_flags, mean_std, paired, write_report
from shared.files import cached_json
from shared.training import Stage2Config, accuracy_without, evaluate, finetune, load_encoder_bundle

BASE_NAME = "labels only"
PSEUDO = {"unlabeled_weight": 1.0}
CANDIDATES = OrderedDict([
    (BASE_NAME, {}),
    ("pseudo 0.95", dict(PSEUDO, threshold=0.95)),
    ("pseudo 0.8", dict(PSEUDO, threshold=0.8)),
    ("pseudo 0.95 + drop", dict(PSEUDO, threshold=0.95, modality_dropout=0.3)),
    ("pseudo 0.8 + drop", dict(PSEUDO, threshold=0.8, modality_dropout=0.3)),
])
LONGER = 2.5  # "x2.5 steps": the stage-2 budget (epochs and step cap) times this
for _t in (0.95, 0.8):
    CANDIDATES["pseudo {} + drop, x{} steps".format(_t, LONGER)] = dict(PSEUDO, threshold=_t, modality_dropout=0.3)
# the weights averaged over steps (Stage2Config.ema) are scored and kept instead of the last ones
for _t in (0.95, 0.8):
    CANDIDATES["pseudo {} + drop, x{} steps, EMA 0.99".format(_t, LONGER)] = dict(
        PSEUDO, threshold=_t, modality_dropout=0.3, ema=0.99)
# distribution alignment of the pseudo-labels (Stage2Config.align_distribution)
for _t in (0.95, 0.8):
    CANDIDATES["pseudo {} + drop, x{} steps, aligned".format(_t, LONGER)] = dict(
        PSEUDO, threshold=_t, modality_dropout=0.3, align_distribution=True)
CANDIDATES["pseudo 0.8 + drop, x{} steps, aligned, EMA 0.99".format(LONGER)] = dict(
    PSEUDO, threshold=0.8, modality_dropout=0.3, align_distribution=True, ema=0.99)


def stage2_budget(name: str, epochs: int, max_steps: int) -> Dict[str, int]:
    """The stage-2 ``epochs`` and step cap of candidate ``name`` given the run's."""
    k = LONGER if "x{} steps".format(LONGER) in name else 1.0
    return {"epochs": int(round(k * epochs)), "max_steps": int(round(k * max_steps))}


def _slug(name: str) -> str:
    return name.replace(" + ", "_plus_").replace(", ", "_").replace(" ", "_").replace(".", "")


def _scores(model: torch.nn.Module, ds: Any) -> Dict[str, Any]:
    full = evaluate(model, ds)
    off = accuracy_without(model, ds)
    return {"accuracy": full["accuracy"], "macro_f1": full["macro_f1"], "without": off,
            "subsets": float(np.mean([full["accuracy"]] + list(off.values())))}


def run_candidate(name: str, seed: int, data: Any, a: Any) -> Dict[str, Any]:
    """Stage 1 (shared by every candidate of ``seed``, cached) and the candidate's stage 2 (cached)."""
    train, val, test = data
    path = os.path.join(a.out, _slug(name), "seed{}.json".format(seed))
    if a.report_only and not os.path.isfile(path):
        raise SystemExit("--report-only: no cached run of {!r} seed {} in {} (run it without --report-only)".format(
            name, seed, a.out))
    all_labeled, unl = labeled_sets(train, "hapt", seed)
    lab = train.subset(all_labeled["1%"])
    root = seed_dir(a.stage1_from or a.out, "hapt", seed)
    enc, q = pretrained("cosmo", root, unl, train.num_classes, a.s1_epochs, seed, reuse_only=bool(a.stage1_from))
    b = stage2_budget(name, a.s2_epochs, a.s2_max_steps)
    cfg = budget(Stage2Config(**dict(CANDIDATES[name], epochs=b["epochs"], fusion="concat", seed=seed)),
                 len(lab), b["max_steps"])

    def stage2() -> Dict[str, Any]:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        t0 = time.time()
        res = finetune(load_encoder_bundle(enc), lab, val, cfg, quality=q, progress=False, unlabeled=unl)
        used = [h["pseudo_labeled"] for h in res["history"] if "pseudo_labeled" in h]
        return {"val": _scores(res["model"], val), "test": _scores(res["model"], test), "best_epoch": res["best_epoch"],
                "epochs": cfg.epochs, "seconds": time.time() - t0, "labeled": len(lab), "unlabeled": len(unl),
                "pseudo_labeled_last": used[-1] if used else None}
    return dict(cached_json(path, stage2), config=CANDIDATES[name], quality=q)


def baseline_tests(spec: str, seeds: List[int]) -> Dict[str, Any]:
    """``DIR:METHOD`` -> that method's 1 % test accuracies per seed from a ``benchmarks.accuracy`` run's
    ``--out`` (the same labels and split per seed as here)."""
    root, sep, method = spec.rpartition(":")
    if not sep or not root or not method:
        raise SystemExit("--baseline: expected DIR:METHOD (e.g. results/acc10:CPC), got {!r}".format(spec))
    tests = []
    for seed in seeds:
        path = stage2_path(seed_dir(root, "hapt", seed), "1%", method)
        if not os.path.isfile(path):
            raise SystemExit("--baseline: no 1 % run of {} at seed {} ({} is missing)".format(method, seed, path))
        with open(path) as f:
            tests.append(float(json.load(f)["test"]["accuracy"]))
    return {"method": method, "run": root, "test": tests}


def summarize(runs: Dict[str, Dict[int, Any]], seeds: List[int], modalities: List[str],
              base_name: str = BASE_NAME, baseline: Any = None) -> Dict[str, Any]:
    """Rows per candidate; differences paired by seed against ``base_name`` (when it ran): on test, and on
    the selection score itself (validation over the sensor subsets), so a lead can be told from noise.
    ``baseline`` (``baseline_tests``): each candidate's test accuracy is also paired with that method's."""
    rows = OrderedDict()  # type: Dict[str, Any]
    have = base_name in runs
    base = [runs[base_name][s]["test"]["accuracy"] for s in seeds] if have else None
    base_val = [runs[base_name][s]["val"]["subsets"] for s in seeds] if have else None
    for name, by_seed in runs.items():
        rs = [by_seed[s] for s in seeds]
        test = [r["test"]["accuracy"] for r in rs]
        rows[name] = {
            "config": rs[0]["config"],
            "val": mean_std([r["val"]["accuracy"] for r in rs]),
            "val_subsets": mean_std([r["val"]["subsets"] for r in rs]),
            "test": mean_std(test),
            "test_macro_f1": mean_std([r["test"]["macro_f1"] for r in rs]),
            "test_without": {m: mean_std([r["test"]["without"][m] for r in rs]) for m in modalities},
            "test_vs_base": paired(base, test) if have and name != base_name else None,
            "val_subsets_vs_base": paired(base_val, [r["val"]["subsets"] for r in rs])
            if have and name != base_name else None,
            "seconds": float(np.mean([r["seconds"] for r in rs])),
            "epochs": rs[0]["epochs"],
            "per_seed_test": test,
            "test_vs_baseline": paired(baseline["test"], test) if baseline else None,
        }
    chosen = max(rows, key=lambda n: (round(rows[n]["val_subsets"]["mean"], 9), rows[n]["val"]["mean"]))
    return {"seeds": seeds, "rows": rows, "chosen": chosen, "modalities": modalities, "base": base_name,
            "baseline": dict(baseline, test=mean_std(baseline["test"]), per_seed_test=baseline["test"])
            if baseline else None}


def markdown(r: Dict[str, Any]) -> str:
    def pct(m: Dict[str, float]) -> str:
        return "{:.1f} ± {:.1f}".format(100 * m["mean"], 100 * m["std"])
    mods, base, bl = r["modalities"], r.get("base", BASE_NAME), r.get("baseline")
    lines = ["# Stage 2 with unlabeled windows (UCI HAPT, 1 % labels, subject-wise split)", "",
             "Seeds {}: each its own 1 % labels and stage-1 encoders ({}, {} epochs), "
             "shared by every candidate of the seed; stage 2: ConcatAttn, Hopkins quality prior, {} epochs capped "
             "at about {} optimizer steps (x{} for the candidates so named), epoch chosen on validation; unlabeled windows from the stage-1 pool. "
             "Chosen on the mean **validation** accuracy over the sensor subsets (all present, each one off; ties: "
             "validation accuracy with all): **{}**. Differences are paired by seed against `{}`, 95 % t "
             "interval. Ran on CPU ({} s of stage-2 training in all runs).".format(
                 r["seeds"], "those of `{}`".format(r["args"]["stage1_from"]) if r["args"].get("stage1_from")
                 else "Cosmo-HAR's default stage 1", r["args"]["s1_epochs"], r["args"]["s2_epochs"], r["args"]["s2_max_steps"], LONGER, r["chosen"],
                 base, int(r["seconds"])), "",
             "| candidate | stage-2 settings | epochs | val | val, sensor subsets | val, sensor subsets − {} [95 % CI] "
             "| test | test macro-F1 | ".format(base) + " | ".join("test, {} off".format(m) for m in mods) +
             " | test − {} [95 % CI] | ".format(base) + ("test − {} [95 % CI] | ".format(bl["method"]) if bl else "") +
             "s per run |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(mods) + "---|" * (2 + bool(bl))]

    def diff(d: Any) -> str:
        return "{:+.1f} [{:+.1f}, {:+.1f}]".format(100 * d["mean"], 100 * d["ci_low"], 100 * d["ci_high"]) if d else "–"
    for name, row in r["rows"].items():
        cfg = ", ".join("{}={}".format(k, v) for k, v in row["config"].items()) or "labeled windows alone"
        lines.append("| {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {}{:.0f} |".format(
            name, " (chosen)" if name == r["chosen"] else "", cfg, row["epochs"], pct(row["val"]), pct(row["val_subsets"]),
            diff(row.get("val_subsets_vs_base")), pct(row["test"]), pct(row["test_macro_f1"]),
            " | ".join(pct(row["test_without"][m]) for m in mods), diff(row.get("test_vs_base")),
            diff(row.get("test_vs_baseline")) + " | " if bl else "", row["seconds"]))
    if bl:
        lines += ["", "{} (the baseline paired above): {} on test, from the 1 % runs of `{}` (same labels and split "
                  "per seed).".format(bl["method"], pct(bl["test"]), bl["run"])]
    return "\n".join(lines) + "\n"


def plot(r: Dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(r["rows"])
    series = [("val_subsets", "validation, sensor subsets"), ("test", "test, all sensors")]
    series += [(m, "test, {} off".format(m)) for m in r["modalities"]]
    x = np.arange(len(names))
    w = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, (k, label) in enumerate(series):
        cells = [r["rows"][n]["test_without"][k] if k in r["modalities"] else r["rows"][n][k] for n in names]
        ax.bar(x + (i - (len(series) - 1) / 2) * w, [100 * c["mean"] for c in cells], w,
               yerr=[100 * c["std"] for c in cells], capsize=2, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=15, fontsize=8)
    ax.set_ylim(40, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("HAPT, 1 % labels: stage 2 with unlabeled windows (chosen on validation: {})".format(r["chosen"]))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/semi")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    ap.add_argument("--stage1-from", help="an accuracy run's --out whose HAPT stage-1 encoders to reuse")
    ap.add_argument("--s2-max-steps", type=int, default=500, help="as benchmarks.accuracy --s2-max-steps")
    ap.add_argument("--paired-with", default=BASE_NAME, choices=list(CANDIDATES),
                    help="the candidate every other is compared with, paired by seed (default: %(default)s)")
    ap.add_argument("--baseline", metavar="DIR:METHOD",
                    help="also pair each candidate's test accuracy with METHOD's 1 %% runs in benchmarks.accuracy's "
                    "--out DIR (e.g. results/acc10:CPC; the same seeds must have run there)")
    add_study_flags(ap, "seed 0, 2 stage-1 and 6 stage-2 epochs: a smoke run")
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.s1_epochs, a.s2_epochs = [0], 2, 6
    bl = baseline_tests(a.baseline, a.seeds) if a.baseline else None  # a bad --baseline fails before training
    if a.threads:
        torch.set_num_threads(a.threads)
    from tqdm import tqdm

    train, val, test, _ = prepare_dataset("hapt")
    runs = OrderedDict()  # type: Dict[str, Dict[int, Any]]
    with tqdm(total=len(a.candidates) * len(a.seeds), desc="semi", unit="run", disable=a.report_only) as bar:
        for name in a.candidates:
            runs[name] = OrderedDict()
            for seed in a.seeds:
                bar.set_postfix_str("{} seed {}".format(name, seed))
                runs[name][seed] = run_candidate(name, seed, (train, val, test), a)
                bar.update(1)
    if a.no_report:
        return 0
    r = summarize(runs, a.seeds, list(train.modalities), a.paired_with, bl)
    r.update(args=vars(a), seconds=sum(x["seconds"] for by in runs.values() for x in by.values()))
    write_report(a.out, "semi", r, markdown, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
