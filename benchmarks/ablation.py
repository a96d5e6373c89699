"""Ablation on UCI HAPT: Cosmo (stage 1 + stage 2) against the same stage 2 from random encoders.

Fair by construction:
* same subject split (split seed 0), same labeled windows per (setting, seed), same stage-2 epoch
  budget, same quality prior, model selection on the validation subjects only;
* each arm picks its own encoder learning rate on the validation split (grid ``--encoder-lrs``) for
  each label setting and seed;
* stage 1 runs once per seed on the training windows that are unlabeled in *every* label setting of
  that seed (the union of the labeled sets is held out), so no labeled window is ever pretrained on.

Also a linear probe (logistic regression on frozen features, C chosen on validation) of the frozen
pretrained encoders against frozen random encoders.

Writes ``results.json``, ``report.md`` and ``ablation.png`` into ``--out``; every run is cached there so
an interrupted benchmark resumes where it stopped.

    python -m benchmarks.ablation --out results/ablation            # the full table (about 1 h here)
    python -m benchmarks.ablation --out results/ablation-quick --quick
"""
import argparse
import os
import sys
import time
from collections import OrderedDict
from functools import partial
from typing import Any, Dict, List

import numpy as np
import torch


from cloud.quality import encoder_features, score_quality
from shared.data.hapt import load_hapt
from shared.data.splits import Normalizer, sample_labels, subject_split
from shared.training import (Stage1Config, Stage2Config, build_encoders, evaluate, finetune,
                             load_encoder_bundle, pretrain)
from shared.files import cached_json, write_json

SETTINGS = [("1/class", None, 1), ("5/class", None, 5), ("1%", 0.01, None), ("5%", 0.05, None)]


def linear_probe(encs: List[torch.nn.Module], lab: Any, val: Any, test: Any) -> Dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    def feats(ds: Any) -> np.ndarray:
        f = encoder_features(encs, ds)
        return np.concatenate([v.reshape(len(v), e.out_steps, -1).mean(1) for v, e in zip(f.values(), encs)], 1)
    xl, xv, xt = feats(lab), feats(val), feats(test)
    mu, sd = xl.mean(0), xl.std(0) + 1e-6
    best = None
    for c in (0.01, 0.1, 1.0, 10.0):
        clf = LogisticRegression(C=c, max_iter=5000).fit((xl - mu) / sd, lab.labels)
        acc = float((clf.predict((xv - mu) / sd) == val.labels).mean())
        if best is None or acc > best[0]:
            best = (acc, c, clf)
    assert best is not None
    pred = best[2].predict((xt - mu) / sd)
    from shared.metrics import accuracy_f1
    m = accuracy_f1(test.labels, pred, test.num_classes)
    return {"C": best[1], "val_accuracy": best[0], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/ablation")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--s1-epochs", type=int, default=Stage1Config().epochs)
    ap.add_argument("--s2-epochs", type=int, default=Stage2Config().epochs)
    ap.add_argument("--encoder-lrs", type=float, nargs="+", default=[1e-4, 1e-3, 3e-3])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--hapt", help="HAPT.pkl.gz or UCI HAPT folder (default: the packaged copy)")
    ap.add_argument("--settings", nargs="*", help="only these label settings (names as in the table; none: "
                    "stage 1 only); for running seeds and settings as parallel processes into one --out")
    ap.add_argument("--no-report", action="store_true", help="run and cache, but write no report")
    ap.add_argument("--quick", action="store_true", help="1 seed, 2 settings, short training: a smoke run")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    settings = SETTINGS if a.settings is None else [st for st in SETTINGS if st[0] in a.settings]
    if a.quick:
        a.seeds, a.s1_epochs, a.s2_epochs, a.encoder_lrs = [0], 3, 10, [1e-3]
        settings = [SETTINGS[0], SETTINGS[2]]
    from tqdm import tqdm

    os.makedirs(a.out, exist_ok=True)
    t_start = time.time()
    ds = load_hapt(a.hapt)
    split = subject_split(ds, seed=0)
    norm = Normalizer.fit(split.train)
    train, val, test = norm.apply(split.train), norm.apply(split.val), norm.apply(split.test)
    s1cfg = Stage1Config(epochs=a.s1_epochs)
    specs, windows = list(train.specs.values()), [x.shape[1] for x in train.x.values()]
    runs = OrderedDict()  # type: Dict[str, Any]
    total = len(a.seeds) * len(settings) * (2 * len(a.encoder_lrs) + 2)
    bar = tqdm(total=total, desc="ablation", unit="run")
    for seed in a.seeds:
        all_labeled = OrderedDict((name, sample_labels(train.labels, train.num_classes, rate=rate, per_class=k,
                                                       seed=seed)) for name, rate, k in SETTINGS)
        labeled = OrderedDict((name, all_labeled[name]) for name, _, _ in settings)
        held = np.unique(np.concatenate(list(all_labeled.values())))
        mask = np.ones(len(train), bool)
        mask[held] = False
        unl = train.subset(np.flatnonzero(mask))
        unl = unl.with_labels(np.full(len(unl), -1, np.int64))
        s1dir = os.path.join(a.out, "seed{}".format(seed), "stage1")
        enc_path = os.path.join(s1dir, "encoders.pt")
        s1 = cached_json(os.path.join(s1dir, "summary.json"), partial(_stage1, unl, s1cfg, seed, s1dir))
        q = cached_json(os.path.join(s1dir, "quality.json"), partial(_quality, enc_path, unl, train.num_classes, seed))
        for name, idx in labeled.items():
            lab = train.subset(idx)
            for arm in ("pretrained", "random"):
                encs = partial(_encoders, arm, enc_path, seed, specs, windows, s1cfg)
                key = "{}|{}|{}".format(name, arm, seed)
                probe_path = os.path.join(a.out, "seed{}".format(seed), "probe_{}_{}.json".format(
                    name.replace("/", "per").replace("%", "pct"), arm))
                runs[key + "|probe"] = cached_json(probe_path, lambda: linear_probe(encs(), lab, val, test))  # noqa: B023
                bar.update(1)
                best = None
                for lr in a.encoder_lrs:
                    cfg = Stage2Config(epochs=a.s2_epochs, encoder_lr=lr, seed=seed, fusion="concat")
                    path = os.path.join(a.out, "seed{}".format(seed), "s2_{}_{}_lr{:g}.json".format(
                        name.replace("/", "per").replace("%", "pct"), arm, lr))
                    r = cached_json(path, lambda: _stage2(encs(), lab, val, test, cfg, q["q"]))  # noqa: B023
                    bar.update(1)
                    if best is None or r["val"]["accuracy"] > best["val"]["accuracy"]:
                        best = dict(r, encoder_lr=lr)
                runs[key] = best
        runs["stage1|{}".format(seed)] = s1
        runs["quality|{}".format(seed)] = q
    bar.close()
    if a.no_report or not settings:
        return 0
    report = _report(runs, settings, a, time.time() - t_start)
    write_json(os.path.join(a.out, "results.json"), {"args": vars(a), "runs": runs, "table": report["table"]})
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write(report["markdown"])
    _plot(report["table"], os.path.join(a.out, "ablation.png"))
    print(report["markdown"])
    return 0


def _encoders(arm: str, enc_path: str, seed: int, specs: Any, windows: Any, s1cfg: Stage1Config
              ) -> List[torch.nn.Module]:
    """The pretrained encoders, or freshly initialized ones of the same architecture (seeded)."""
    if arm == "pretrained":
        return load_encoder_bundle(enc_path)
    torch.manual_seed(1000 + seed)
    return build_encoders(specs, windows, s1cfg.encoder_widths, s1cfg.encoder_dropout, s1cfg.out_steps)


def _quality(enc_path: str, unl: Any, num_classes: int, seed: int) -> Dict[str, Any]:
    return score_quality(encoder_features(load_encoder_bundle(enc_path), unl), num_classes, seed=seed).to_json()


def _stage1(unl: Any, cfg: Stage1Config, seed: int, out: str) -> Dict[str, Any]:
    from dataclasses import replace
    res = pretrain(unl, replace(cfg, seed=seed), out, progress=False)
    return {"seconds": res["seconds"], "loss": res["history"][-1]["loss"], "windows": len(unl)}


def _stage2(encs: List[torch.nn.Module], lab: Any, val: Any, test: Any, cfg: Stage2Config, q: List[float]
            ) -> Dict[str, Any]:
    res = finetune(encs, lab, val, cfg, quality=q, progress=False)
    t = evaluate(res["model"], test)
    return {"val": {k: res["val"][k] for k in ("accuracy", "macro_f1")},
            "test": {k: t[k] for k in ("accuracy", "macro_f1")}, "best_epoch": res["best_epoch"],
            "seconds": res["seconds"], "labeled": len(lab),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"}


def _ms(v: List[float]) -> str:
    return "{:.1f} ± {:.1f}".format(100 * np.mean(v), 100 * np.std(v))


def _report(runs: Dict[str, Any], settings: Any, a: Any, seconds: float) -> Dict[str, Any]:
    table = []
    for name, _, _ in settings:
        row = {"setting": name}  # type: Dict[str, Any]
        for arm in ("pretrained", "random"):
            rs = [runs["{}|{}|{}".format(name, arm, s)] for s in a.seeds]
            ps = [runs["{}|{}|{}|probe".format(name, arm, s)] for s in a.seeds]
            row[arm] = {"accuracy": [r["test"]["accuracy"] for r in rs], "macro_f1": [r["test"]["macro_f1"] for r in rs],
                        "encoder_lr": [r["encoder_lr"] for r in rs], "labeled": rs[0]["labeled"],
                        "probe_accuracy": [p["accuracy"] for p in ps], "probe_macro_f1": [p["macro_f1"] for p in ps]}
        table.append(row)
    lines = ["# Ablation on UCI HAPT (acc + gyro, 6 activities, subject-wise split)", "",
             "Test accuracy / macro-F1 in %, mean ± std over seeds {}; stage 1: {} epochs, stage 2: {} epochs; "
             "encoder learning rate per arm, setting and seed chosen on validation from {}; stage 2 ran on {}.".format(
                 a.seeds, a.s1_epochs, a.s2_epochs, a.encoder_lrs, ", ".join(sorted(
                     {r.get("device", "?") for k, r in runs.items() if k.count("|") == 2 and "device" in r}))), "",
             "| labels | windows | Cosmo acc | Cosmo F1 | random-init acc | random-init F1 | gain (acc) | "
             "encoder lr per seed, Cosmo / random |", "|---|---|---|---|---|---|---|---|"]
    for r in table:
        p, q = r["pretrained"], r["random"]
        gain = 100 * (np.mean(p["accuracy"]) - np.mean(q["accuracy"]))
        lines.append("| {} | {} | {} | {} | {} | {} | {:+.1f} | {} / {} |".format(
            r["setting"], p["labeled"], _ms(p["accuracy"]), _ms(p["macro_f1"]), _ms(q["accuracy"]), _ms(q["macro_f1"]),
            gain, ",".join("{:g}".format(v) for v in p["encoder_lr"]), ",".join("{:g}".format(v) for v in q["encoder_lr"])))
    lines += ["", "Linear probe (logistic regression on frozen, time-pooled encoder features; C chosen on validation):",
              "", "| labels | frozen pretrained acc | frozen random acc | gain |", "|---|---|---|---|"]
    for r in table:
        p, q = r["pretrained"]["probe_accuracy"], r["random"]["probe_accuracy"]
        lines.append("| {} | {} | {} | {:+.1f} |".format(r["setting"], _ms(p), _ms(q), 100 * (np.mean(p) - np.mean(q))))
    return {"table": table, "markdown": "\n".join(lines) + "\n"}


def _plot(table: List[Dict[str, Any]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r["setting"] for r in table]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (arm, label) in enumerate((("pretrained", "Cosmo (stage 1 + 2)"), ("random", "stage 2 from random init"))):
        acc = [100 * np.mean(r[arm]["accuracy"]) for r in table]
        err = [100 * np.std(r[arm]["accuracy"]) for r in table]
        ax.bar(x + (i - 0.5) * 0.38, acc, 0.38, yerr=err, capsize=3, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    ax.set_ylabel("test accuracy (%)")
    low = min(100 * min(np.mean(r[arm]["accuracy"]) for arm in ("pretrained", "random")) for r in table)
    ax.set_ylim(max(0, 10 * np.floor(low / 10) - 10), 100)
    ax.set_title("UCI HAPT: accuracy vs labels")
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
