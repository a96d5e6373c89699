"""On-device personalization, measured without leakage: adapt on the first half of each user's recording
(time order, labels unseen), score on the second half only; settings chosen on the validation users,
applied unchanged to the test users; the same step applied to the best baseline.

The methods (``--methods``, by the accuracy table's names; default: **Cosmo-HAR**, the best baseline at
1 % labels **CPC**, **CPC + pseudo-labels**, CPC's encoders with Cosmo-HAR's stage 2, and **Cosmo-HAR,
fusion only**, its stage-1 ablation) are trained
exactly as ``benchmarks/accuracy.py`` trains them: HAPT, subject-wise split seed 0, per seed the same
labeled windows (``--setting``), unlabeled pool, stage-2 budget and epoch chosen on validation.
``--stage1-from`` reuses an accuracy run's pretrained encoders (the same seeds then give the same models:
each row records the accuracy run's test cell next to its own); without it, pretraining runs into
``--work``. Then for every validation and test subject, every candidate ``AdaptConfig`` of the grid
(BatchNorm mixing 0.25 / 0.5 / 1.0, with and without 5 epochs of confident self-training, with and without
the confidence gate; and self-training alone) adapts on the subject's first half and is scored on its
second half against the unadapted model. Per method, the candidate kept is the one with the best mean gain
over (validation subject, seed) pairs among those whose 95 % interval over those pairs lies above zero,
"no adaptation" when none does (an adaptation must show a gain on validation that noise does not explain:
with 3 validation subjects, a positive mean alone chose steps that lowered most test subjects); what the
looser rule (any positive mean) would have chosen is reported too. Reported for the test subjects: the
per-subject gain (mean over seeds) with its 95 % interval and how many subjects improved or worsened, and
second-half accuracy mean ± std over seeds with paired differences to the first method. Trained models
and scores are cached in ``--work`` (reruns resume). Writes ``personalize.json``, ``personalize.md`` and
``personalize.png`` into ``--out``.

    python -m benchmarks.personalize --stage1-from results/acc6 --seeds 0 1 2 3 4 --out docs/benchmarks/personalize
"""
import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import replace
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from benchmarks.accuracy import (OURS, CPC_SEMI, FUSION_ONLY, PRETRAINED, SETTINGS, STAGE1, _slug, budget,
                                 labeled_sets, methods_for, prepare_dataset, pretrained, seed_dir, stage2_path,
                                 train_method)
from benchmarks.report import add_study_flags, command_line, mean_std, paired, write_report
from shared.files import cached_json
from shared.hparams import STAGE2_PRESETS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRID = ([{"bn_mix": b, "self_train_epochs": e, "gate": g} for b, e, g in
         itertools.product((0.25, 0.5, 1.0), (0, 5), ("none", "confidence"))]
        + [{"bn_mix": 0.0, "self_train_epochs": 5, "gate": g} for g in ("none", "confidence")])
NONE = "none"  # the "no adaptation" choice
DEFAULT_METHODS = [OURS, "CPC", CPC_SEMI, FUSION_ONLY]


def key(c: Dict[str, Any]) -> str:
    return "bn{:g}_st{}_{}".format(c["bn_mix"], c["self_train_epochs"], c["gate"])


def halves(ds: Any, subject: int) -> Tuple[Any, Any]:
    """A subject's windows in recording order, split into the first half (adapt) and the second (score)."""
    idx = np.flatnonzero(ds.subjects == subject)
    k = len(idx) // 2
    return ds.subset(idx[:k]), ds.subset(idx[k:])


def score_subjects(model: torch.nn.Module, ds: Any) -> Dict[str, Any]:
    """Per subject of ``ds``: second-half accuracy unadapted and after each candidate adapted on the first
    half."""
    from shared.hparams import AdaptConfig
    from shared.training.adapt import adapt
    from shared.training import evaluate
    out = {}
    for s in np.unique(ds.subjects).tolist():
        first, second = halves(ds, s)
        row = {"windows": [len(first), len(second)], NONE: evaluate(model, second)["accuracy"]}
        for c in GRID:
            res = adapt(model, first, AdaptConfig(**c))
            row[key(c)] = evaluate(res["model"], second)["accuracy"]
        out[str(s)] = row
    return out


def run_method(disp: str, seed: int, data: Any, a: Any) -> Dict[str, Any]:
    """One method of one seed: trained as the accuracy benchmark trains it (model cached), then every
    validation and test subject scored unadapted and after each candidate (scores cached)."""
    from shared.training import evaluate
    train, val, test = data
    path = os.path.join(a.work, "{}_{}_seed{}".format(_slug(disp), _slug(a.setting), seed))
    if a.report_only and not os.path.isfile(path + ".json"):
        raise SystemExit("--report-only: no cached run of {!r} seed {} in {} (run it without --report-only)".format(
            disp, seed, a.work))

    def score() -> Dict[str, Any]:
        _, key_, kw = next(m for m in methods_for(train) if m[0] == disp)
        all_labeled, unl = labeled_sets(train, "hapt", seed)
        lab = train.subset(all_labeled[a.setting])
        enc, q = None, None
        if key_ in STAGE1 or key_ in PRETRAINED:
            root = seed_dir(a.stage1_from or a.work, "hapt", seed)
            enc, q = pretrained(key_, root, unl, train.num_classes, a.s1_epochs, seed, reuse_only=bool(a.stage1_from))
        t0 = time.time()
        if os.path.isfile(path + ".pt"):
            model = torch.load(path + ".pt", map_location="cpu", weights_only=False)
        else:
            from shared.training import Stage2Config
            cfg = budget(replace(Stage2Config(epochs=a.s2_epochs, fusion="concat"), seed=seed), len(lab),
                         a.s2_max_steps)
            model = train_method(key_, kw, enc, q, lab, val, cfg, unl)["model"]
            torch.save(model, path + ".pt")
        r = {"method": disp, "seed": seed, "train_s": time.time() - t0, "labeled": len(lab),
             "test_accuracy": evaluate(model, test)["accuracy"],
             "val": score_subjects(model, val), "test": score_subjects(model, test)}
        if a.stage1_from:  # the accuracy run's cell of the same method and seed, when it has one
            cell = stage2_path(seed_dir(a.stage1_from, "hapt", seed), a.setting, disp)
            if os.path.isfile(cell):
                with open(cell) as f:
                    r["accuracy_run_test_accuracy"] = json.load(f)["test"]["accuracy"]
        return r
    return cached_json(path + ".json", score)


def run(a: Any, data: Any) -> Dict[str, Any]:
    from tqdm import tqdm
    train, val, test = data
    os.makedirs(a.work, exist_ok=True)
    rows = {}  # type: Dict[str, Dict[str, Any]]
    with tqdm(total=len(a.methods) * len(a.seeds), desc="personalize", unit="run", disable=a.report_only) as bar:
        for seed in a.seeds:
            for m in a.methods:
                bar.set_postfix_str("{} seed {}".format(m, seed))
                rows["{}/{}".format(m, seed)] = run_method(m, seed, (train, val, test), a)
                bar.update(1)
    return {"rows": rows, "methods": a.methods, "grid": GRID, "seeds": a.seeds, "setting": a.setting,
            "dataset": "hapt", "val_subjects": len(np.unique(val.subjects))}


def _test_gain(rs: List[Dict[str, Any]], subjects: List[str], c: str) -> Dict[str, float]:
    """Per test subject: candidate ``c``'s second-half gain over no adaptation, points, mean over seeds."""
    return {s: float(np.mean([100 * (x["test"][s][c] - x["test"][s][NONE]) for x in rs])) for s in subjects}


def _gain_summary(gains: List[float]) -> Dict[str, Any]:
    """Per-subject gains (points): their mean with its 95 % interval, and how many subjects improved or worsened."""
    return {"subject_gain": paired([0.0] * len(gains), gains), "improved": sum(g > 0 for g in gains),
            "worsened": sum(g < 0 for g in gains)}


def summarize(r: Dict[str, Any]) -> Dict[str, Any]:
    out = {}  # type: Dict[str, Any]
    for m in r["methods"]:
        rs = [r["rows"]["{}/{}".format(m, s)] for s in r["seeds"]]
        cands = [key(c) for c in r["grid"]]
        val_pairs = {c: [100 * (row[c] - row[NONE]) for x in rs for row in x["val"].values()] for c in cands}
        val_ci = {c: paired([0.0] * len(g), g) for c, g in val_pairs.items()}
        val_gain = {c: val_ci[c]["mean"] for c in cands}  # points
        best = max(cands, key=lambda c: val_gain[c])
        sure = [c for c in cands if val_ci[c]["ci_low"] > 0]
        chosen = max(sure, key=lambda c: val_gain[c]) if sure else NONE
        subjects = sorted(rs[0]["test"], key=int)
        per_subject = _test_gain(rs, subjects, chosen)
        loose = best if val_gain[best] > 0 else NONE  # the looser rule: any positive mean on validation
        loose_gains = list(_test_gain(rs, subjects, loose).values())
        before = [100 * float(np.mean([x["test"][s][NONE] for s in subjects])) for x in rs]
        after = [100 * float(np.mean([x["test"][s][chosen] for s in subjects])) for x in rs]
        out[m] = {"val_gain_points": val_gain, "val_gain_ci": val_ci, "chosen": chosen,
                  "loose_rule": dict(_gain_summary(loose_gains), chosen=loose),
                  "per_subject_gain": per_subject, **_gain_summary(list(per_subject.values())),
                  "test_accuracy": mean_std([100 * x["test_accuracy"] for x in rs]),
                  "accuracy_run_test_accuracy": [100 * x["accuracy_run_test_accuracy"] for x in rs
                                                 if "accuracy_run_test_accuracy" in x],
                  "second_half_accuracy": {"unadapted": mean_std(before), "personalized": mean_std(after),
                                           "gain": paired(before, after), "per_seed": [before, after]}}
    first = r["methods"][0]
    out["first_minus_others"] = {
        m: {k: paired(out[m]["second_half_accuracy"]["per_seed"][i], out[first]["second_half_accuracy"]["per_seed"][i])
            for i, k in enumerate(("unadapted", "personalized"))} for m in r["methods"][1:]}
    return out


def _ci(d: Dict[str, float]) -> str:
    return "{:+.1f} [{:+.1f}, {:+.1f}]".format(d["mean"], d["ci_low"], d["ci_high"])


def markdown(r: Dict[str, Any]) -> str:
    s, ms = r["summary"], r["methods"]
    lines = ["# On-device personalization (HAPT, {} labels, {} seeds paired)".format(r["setting"], len(r["seeds"])), "",
             "`{}`, {}. Each method trained as `benchmarks/accuracy.py` trains it (same labels, pool, budget and "
             "validation-based epoch per seed). Adapt on the first half of each subject's windows (time order, labels "
             "unseen), score the second half; settings chosen on the {} validation subjects (pooled over seeds), "
             "applied unchanged to the test subjects.".format(r["command"], r["date"], r["val_subjects"]), "",
             "| method | chosen on validation | test second halves: unadapted | personalized | gain (95 % CI) | "
             "per-subject gain (95 % CI) | subjects improved / worsened | whole test set, unadapted |",
             "|---|---|---|---|---|---|---|---|"]
    for m in ms:
        t = s[m]
        acc = t["second_half_accuracy"]
        lines.append("| {} | {} | {:.1f} ± {:.1f} | {:.1f} ± {:.1f} | {} | {} | {} / {} of {} | {:.1f} ± {:.1f} |".format(
            m, t["chosen"], acc["unadapted"]["mean"], acc["unadapted"]["std"], acc["personalized"]["mean"],
            acc["personalized"]["std"], _ci(acc["gain"]), _ci(t["subject_gain"]), t["improved"], t["worsened"],
            len(t["per_subject_gain"]), t["test_accuracy"]["mean"], t["test_accuracy"]["std"]))
    lines.append("")
    for m in ms[1:]:
        d = s["first_minus_others"][m]
        lines.append("{} − {} on the same second halves, paired by seed: unadapted {}, personalized {} points.".format(
            ms[0], m, _ci(d["unadapted"]), _ci(d["personalized"])))
    same = [m for m in ms if s[m]["accuracy_run_test_accuracy"]]
    if same:
        lines += ["", "Whole-test-set accuracy against the accuracy run's cell of the same seed (the same "
                  "configuration, encoders and labels): " + "; ".join(
                      "{} {}".format(m, ", ".join("{:.2f}/{:.2f}".format(x, y) for x, y in zip(
                          [100 * r["rows"]["{}/{}".format(m, sd)]["test_accuracy"] for sd in r["seeds"]],
                          s[m]["accuracy_run_test_accuracy"]))) for m in same) + "."]
    lines += [""] + ["{}: the looser rule (any positive mean gain on validation) would have chosen {}: per-subject "
                     "test gain {}, {} / {} subjects improved / worsened.".format(
                         m, s[m]["loose_rule"]["chosen"], _ci(s[m]["loose_rule"]["subject_gain"]),
                         s[m]["loose_rule"]["improved"], s[m]["loose_rule"]["worsened"]) for m in ms]
    lines += ["", "Validation gain of every candidate (points, mean [95 % CI] over validation subject × seed):", "",
              "| candidate | " + " | ".join(ms) + " |", "|---|" + "---|" * len(ms)]
    for c in s[ms[0]]["val_gain_points"]:
        lines.append("| {} | ".format(c) + " | ".join(_ci(s[m]["val_gain_ci"][c]) for m in ms) + " |")
    lines += ["", "Per test subject (gain in points of the chosen candidate, mean over seeds):", "",
              "| subject | " + " | ".join(ms) + " |", "|---|" + "---|" * len(ms)]
    for subj in s[ms[0]]["per_subject_gain"]:
        lines.append("| {} | ".format(subj) + " | ".join("{:+.1f}".format(s[m]["per_subject_gain"][subj])
                                                        for m in ms) + " |")
    return "\n".join(lines) + "\n"


def plot(r: Dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s, ms = r["summary"], r["methods"]
    subjects = list(s[ms[0]]["per_subject_gain"])
    x = np.arange(len(subjects))
    w = 0.8 / len(ms)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for k, m in enumerate(ms):
        ax.bar(x + (k - (len(ms) - 1) / 2) * w, [s[m]["per_subject_gain"][j] for j in subjects], w,
               label="{} ({})".format(m, s[m]["chosen"]))
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
    ap.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                    help="by the accuracy table's names; the first is compared with the others (default: {})".format(
                        ", ".join(DEFAULT_METHODS)))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--setting", default="1%", help="the label setting of benchmarks.accuracy (HAPT; default 1%%)")
    ap.add_argument("--stage1-from", help="an accuracy run's --out whose pretrained encoders to reuse")
    ap.add_argument("--s2-max-steps", type=int, default=1250, help="as benchmarks.accuracy --s2-max-steps")
    ap.add_argument("--work", default=os.path.join(ROOT, "results", "personalize"), help="cached models and scores")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "personalize"))
    add_study_flags(ap, "seeds 0 and 1, 2 pretraining and 6 stage-2 epochs: a smoke run")
    ap.set_defaults(s2_epochs=STAGE2_PRESETS["cosmo-har"]["epochs"])  # the accuracy table's budget
    a = ap.parse_args(argv)
    if a.quick:
        a.seeds, a.s1_epochs, a.s2_epochs = [0, 1], 2, 6
    if len(a.seeds) < 2:
        print("personalize: --seeds: at least 2 (paired intervals)", file=sys.stderr)
        return 2
    settings = [n for n, _, _ in SETTINGS["hapt"]]
    if a.setting not in settings:  # before loading the data set
        print("personalize: --setting: unknown {!r} (known: {})".format(a.setting, ", ".join(settings)), file=sys.stderr)
        return 2
    data = prepare_dataset("hapt")[:3]
    known = [m[0] for m in methods_for(data[0])]
    bad = [m for m in a.methods if m not in known]
    if bad:
        print("personalize: --methods: unknown {} (known: {})".format(", ".join(bad), ", ".join(known)), file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    r = run(a, data)
    if a.no_report:
        return 0
    r["summary"] = summarize(r)
    r["command"] = command_line("benchmarks.personalize", argv)
    r["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    write_report(a.out, "personalize", r, markdown, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
