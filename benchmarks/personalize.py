"""On-device personalization, measured without leakage: adapt on the first half of each user's recording
(time order, labels unseen), score on the second half only; settings chosen on the validation users,
applied unchanged to the test users; the same step applied to the best baseline.

For every seed (HAPT, subject-wise split seed 0, ``--label-rate`` labels sampled with that seed; paired by
seed across methods): **Cosmo** is stage 2 on the shipped stage-1 encoders (``--model``, the demo's
pulled version by default) and the **baseline** (``--baseline``, CMC by default: the best at 1 % labels in
the suite) is trained on the same labels; both select their epoch on validation. Then for every
validation and test subject, every candidate ``AdaptConfig`` of the grid (BatchNorm mixing 0.25 / 0.5 /
1.0, with and without 5 epochs of confident self-training, with and without the confidence gate; and
self-training alone) adapts on the subject's first half and is scored on its second half against the
unadapted model. The candidate with the best mean gain over (validation subject, seed) pairs is chosen per
method, "no adaptation" when none gains. Reported for the test subjects: the per-subject gain (mean over
seeds) with its 95 % interval and how many subjects improved or worsened, and second-half accuracy
mean ± std over seeds with paired differences. Trained models are cached in ``--work`` (reruns resume).
Writes ``personalize.json``, ``personalize.md`` and ``personalize.png`` into ``--out``.

    python -m benchmarks.personalize --seeds 0 1 2 3 4 --out docs/benchmarks/personalize
"""
import argparse
import itertools
import json
import os
import sys
import time
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from benchmarks.report import mean_std, paired, write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_MODEL = os.path.join(ROOT, "runs", "demo", "edge", "state", "models", "cosmo-hapt", "v1")
GRID = ([{"bn_mix": b, "self_train_epochs": e, "gate": g} for b, e, g in
         itertools.product((0.25, 0.5, 1.0), (0, 5), ("none", "confidence"))]
        + [{"bn_mix": 0.0, "self_train_epochs": 5, "gate": g} for g in ("none", "confidence")])
NONE = "none"  # the "no adaptation" choice


def key(c: Dict[str, Any]) -> str:
    return "bn{:g}_st{}_{}".format(c["bn_mix"], c["self_train_epochs"], c["gate"])


def halves(ds: Any, subject: int) -> Tuple[Any, Any]:
    """A subject's windows in recording order, split into the first half (adapt) and the second (score)."""
    idx = np.flatnonzero(ds.subjects == subject)
    k = len(idx) // 2
    return ds.subset(idx[:k]), ds.subset(idx[k:])


def train(method: str, a: Any, prep: Any, seed: int, q: List[float], path: str) -> torch.nn.Module:
    from shared.baselines import train_baseline
    from shared.training import Stage2Config, finetune, load_encoder_bundle
    if os.path.isfile(path):
        return torch.load(path, map_location="cpu", weights_only=False)
    lab, val = prep.norm(prep.labeled), prep.norm(prep.split.val)
    cfg = Stage2Config(seed=seed, epochs=a.epochs, device="cpu", **(a.stage2 or {}))
    if method == "cosmo":
        res = finetune(load_encoder_bundle(os.path.join(a.model, "encoders.pt")), lab, val, cfg, quality=q,
                       progress=False)
    else:
        res = train_baseline(a.baseline, lab, val, cfg, unlabeled=prep.norm(prep.unlabeled),
                             pretrain_config={"epochs": a.pretrain_epochs, "seed": seed} if a.baseline in ("cmc", "cpc")
                             else None)
    torch.save(res["model"], path)
    return res["model"]


def score_subjects(model: torch.nn.Module, ds: Any, subjects: List[int]) -> Dict[str, Any]:
    """Per subject: second-half accuracy unadapted and after each candidate adapted on the first half."""
    from shared.hparams import AdaptConfig
    from shared.training.adapt import adapt
    from shared.training import evaluate
    out = {}
    for s in subjects:
        first, second = halves(ds, s)
        row = {"windows": [len(first), len(second)], NONE: evaluate(model, second)["accuracy"]}
        for c in GRID:
            res = adapt(model, first, AdaptConfig(**c))
            row[key(c)] = evaluate(res["model"], second)["accuracy"]
        out[str(s)] = row
    return out


def run(a: Any) -> Dict[str, Any]:
    from shared.data import load_named
    from shared.experiment import prepare
    from shared.manifest import read_manifest
    man = read_manifest(a.model)
    q = list((man.get("quality") or {}).get("q") or [1.0] * len(man["input_schema"]))
    ds = load_named(a.dataset)
    os.makedirs(a.work, exist_ok=True)
    methods = ["cosmo", a.baseline]
    rows = {}  # type: Dict[str, Dict[str, Any]]
    for seed in a.seeds:
        prep = prepare(ds, label_rate=a.label_rate, seed=seed, split_seed=0)
        val, test = prep.norm(prep.split.val), prep.norm(prep.split.test)
        for m in methods:
            cache = os.path.join(a.work, "{}_{}_seed{}.json".format(m, a.label_rate, seed))
            if os.path.isfile(cache):
                with open(cache) as f:
                    rows["{}/{}".format(m, seed)] = json.load(f)
                continue
            t0 = time.time()
            model = train(m, a, prep, seed, q, os.path.join(a.work, "{}_{}_seed{}.pt".format(m, a.label_rate, seed)))
            r = {"method": m, "seed": seed, "train_s": time.time() - t0,
                 "val": score_subjects(model, val, prep.split.val_subjects),
                 "test": score_subjects(model, test, prep.split.test_subjects)}
            with open(cache, "w") as f:
                json.dump(r, f)
            rows["{}/{}".format(m, seed)] = r
            print("{} seed {}: trained and scored in {:.0f} s".format(m, seed, time.time() - t0), flush=True)
    return {"rows": rows, "methods": methods, "grid": GRID, "seeds": a.seeds, "label_rate": a.label_rate,
            "dataset": a.dataset}


def summarize(r: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for m in r["methods"]:
        rs = [r["rows"]["{}/{}".format(m, s)] for s in r["seeds"]]
        cands = [key(c) for c in r["grid"]]
        val_gain = {c: float(np.mean([row[c] - row[NONE] for x in rs for row in x["val"].values()])) for c in cands}
        best = max(cands, key=lambda c: val_gain[c])
        chosen = best if val_gain[best] > 0 else NONE
        subjects = sorted(rs[0]["test"], key=int)
        per_subject = {s: float(np.mean([100 * (x["test"][s][chosen] - x["test"][s][NONE]) for x in rs]))
                       for s in subjects}
        gains = list(per_subject.values())
        zero = [0.0] * len(gains)
        before = [100 * float(np.mean([x["test"][s][NONE] for s in subjects])) for x in rs]
        after = [100 * float(np.mean([x["test"][s][chosen] for s in subjects])) for x in rs]
        out[m] = {"val_gain_points": {c: 100 * v for c, v in val_gain.items()}, "chosen": chosen,
                  "per_subject_gain": per_subject, "subject_gain": paired(zero, gains),
                  "improved": sum(g > 0 for g in gains), "worsened": sum(g < 0 for g in gains),
                  "second_half_accuracy": {"unadapted": mean_std(before), "personalized": mean_std(after),
                                           "gain": paired(before, after), "per_seed": [before, after]}}
    base = r["methods"][1]
    out["cosmo_minus_baseline"] = {
        k: paired(out[base]["second_half_accuracy"]["per_seed"][i], out["cosmo"]["second_half_accuracy"]["per_seed"][i])
        for i, k in enumerate(("unadapted", "personalized"))}
    return out


def markdown(r: Dict[str, Any]) -> str:
    s = r["summary"]
    lines = ["# On-device personalization ({}, {:g} % labels, {} seeds paired)".format(
                 r.get("dataset", "hapt"), 100 * r["label_rate"], len(r["seeds"])), "",
             "`{}`, {}. Adapt on the first half of each subject's windows (time order, labels unseen), score the "
             "second half; settings chosen on the {} validation subjects (pooled over seeds), applied unchanged to "
             "the test subjects.".format(r["command"], r["date"], r["val_subjects"]), "",
             "| method | chosen on validation | test second halves: unadapted | personalized | gain (95 % CI) | "
             "per-subject gain (95 % CI) | subjects improved / worsened |", "|---|---|---|---|---|---|---|"]
    for m in r["methods"]:
        t = s[m]
        acc, g, sg = t["second_half_accuracy"], t["second_half_accuracy"]["gain"], t["subject_gain"]
        lines.append("| {} | {} | {:.1f} ± {:.1f} | {:.1f} ± {:.1f} | {:+.1f} [{:+.1f}, {:+.1f}] | {:+.1f} [{:+.1f}, "
                     "{:+.1f}] | {} / {} of {} |".format(
                         "Cosmo" if m == "cosmo" else m.upper(), t["chosen"], acc["unadapted"]["mean"],
                         acc["unadapted"]["std"], acc["personalized"]["mean"], acc["personalized"]["std"], g["mean"],
                         g["ci_low"], g["ci_high"], sg["mean"], sg["ci_low"], sg["ci_high"], t["improved"],
                         t["worsened"], len(t["per_subject_gain"])))
    d = s["cosmo_minus_baseline"]
    lines += ["", "Cosmo − {} on the same second halves, paired by seed: unadapted {:+.1f} [{:+.1f}, {:+.1f}], "
              "personalized {:+.1f} [{:+.1f}, {:+.1f}] points.".format(
                  r["methods"][1].upper(), d["unadapted"]["mean"], d["unadapted"]["ci_low"], d["unadapted"]["ci_high"],
                  d["personalized"]["mean"], d["personalized"]["ci_low"], d["personalized"]["ci_high"]), "",
              "Validation gain of every candidate (points, mean over validation subject × seed):", "",
              "| candidate | " + " | ".join("Cosmo" if m == "cosmo" else m.upper() for m in r["methods"]) + " |",
              "|---|" + "---|" * len(r["methods"])]
    for c in s[r["methods"][0]]["val_gain_points"]:
        lines.append("| {} | ".format(c) + " | ".join("{:+.2f}".format(s[m]["val_gain_points"][c])
                                                     for m in r["methods"]) + " |")
    lines += ["", "Per test subject (gain in points, mean over seeds):", "",
              "| subject | " + " | ".join("Cosmo" if m == "cosmo" else m.upper() for m in r["methods"]) + " |",
              "|---|" + "---|" * len(r["methods"])]
    for subj in s[r["methods"][0]]["per_subject_gain"]:
        lines.append("| {} | ".format(subj) + " | ".join("{:+.1f}".format(s[m]["per_subject_gain"][subj])
                                                        for m in r["methods"]) + " |")
    return "\n".join(lines) + "\n"


def plot(r: Dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = r["summary"]
    subjects = list(s[r["methods"][0]]["per_subject_gain"])
    x = np.arange(len(subjects))
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for k, m in enumerate(r["methods"]):
        ax.bar(x + (k - 0.5) * 0.38, [s[m]["per_subject_gain"][j] for j in subjects], 0.38,
               label="{} ({})".format("Cosmo" if m == "cosmo" else m.upper(), s[m]["chosen"]))
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(subjects)
    ax.set_xlabel("test subject")
    ax.set_ylabel("second-half accuracy gain, points")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEMO_MODEL, help="a pulled version with encoders.pt (default: the demo's)")
    ap.add_argument("--baseline", default="cmc", help="the baseline personalized the same way (default cmc)")
    ap.add_argument("--dataset", default="hapt", help="the dataset --model was pretrained on (split seed 0)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--label-rate", type=float, default=0.01)
    ap.add_argument("--epochs", type=int, default=100, help="stage-2 epochs, every method")
    ap.add_argument("--pretrain-epochs", type=int, default=10, help="the baseline's pretraining epochs (CMC, CPC)")
    ap.add_argument("--work", default=os.path.join(ROOT, "results", "personalize"), help="cached models and scores")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "personalize"))
    ap.add_argument("--stage2-json", default="{}", help="more Stage2Config fields for every method, as JSON")
    a = ap.parse_args(argv)
    a.stage2 = json.loads(a.stage2_json)
    if not os.path.isfile(os.path.join(a.model, "encoders.pt")):
        print("personalize: --model {}: no encoders.pt; run `bash scripts/demo.sh` first or pass --model".format(
            a.model), file=sys.stderr)
        return 2
    if len(a.seeds) < 2:
        print("personalize: --seeds: at least 2 (paired intervals)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    r = run(a)
    r["summary"] = summarize(r)
    r["val_subjects"] = len(next(iter(r["rows"].values()))["val"])
    r["command"] = "python -m benchmarks.personalize " + " ".join(argv if argv is not None else sys.argv[1:])
    r["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    write_report(a.out, "personalize", r, markdown, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
