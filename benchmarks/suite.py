"""The whole benchmark suite in one command: accuracy versus labels (``accuracy.py``) and time, memory and
energy per stage with the scaling exponents (``stages.py``), each in its own process, then one report.

Writes into ``results/<UTC date>_<host>[-quick]/``:

* ``report.md`` / ``report.json``: the headline figures (Cosmo against the best baseline per label
  setting, Cosmo's stage-2 time divided by DeepSense's and AttnSense's, growth exponents) and both
  benchmarks' full reports;
* ``accuracy_vs_labels.png``, ``unlabeled_ratio.png``, ``scaling.png``;
* ``accuracy/`` and ``stages/``: each benchmark's own cache and report. Both cache every run, so a
  second invocation with the same options resumes where the first stopped.

    python -m benchmarks.suite --quick   # about 10 minutes on 2 CPU cores
    python -m benchmarks.suite --jobs 2  # full: 3 seeds, every setting, 2 seeds at a time (about 1 h here)

Full-run budget (chosen to finish on a 2-core machine; pass the benchmarks' own options through
``--accuracy-args`` / ``--stages-args`` to change it): stage 1, CMC and CPC pretraining 10 epochs;
stage 2 100 epochs capped at about 500 optimizer steps per run (``accuracy.budget``), the same for every
method of a setting; ``stages.py`` at its defaults (the paper-like 20 + 100 epochs).
"""
import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import numpy as np

from benchmarks.accuracy import NOT_BASELINES, OURS
from benchmarks.report import paired

from shared.files import write_json

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

FULL_ACCURACY = ["--s1-epochs", "10", "--s2-epochs", "100", "--s2-max-steps", "500"]
BASELINES_FOR_RATIO = ("DeepSense", "AttnSense")


def run_name(quick: bool) -> str:
    return "{}_{}{}".format(time.strftime("%Y-%m-%d", time.gmtime()), socket.gethostname(), "-quick" if quick else "")


def _run(argv: List[str], log_path: str) -> int:
    """Run one benchmark in its own process (its peak memory stays its own), tee its output to a log."""
    print("$ " + " ".join(shlex.quote(x) for x in argv), flush=True)
    with open(log_path, "a") as log:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, cwd=ROOT)
        assert p.stdout is not None
        for line in p.stdout:
            sys.stdout.write(line)
            log.write(line)
        return p.wait()


def _run_parallel(argvs: List[List[str]], log_dir: str) -> List[int]:
    """Run several benchmark processes at once (one log each); return their exit codes."""
    procs = []
    for i, argv in enumerate(argvs):
        print("$ " + " ".join(shlex.quote(x) for x in argv) + "   # log: worker{}.log".format(i), flush=True)
        log = open(os.path.join(log_dir, "worker{}.log".format(i)), "a")
        procs.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log))
    codes = []
    for p, log in procs:
        codes.append(p.wait())
        log.close()
    return codes


def _load(path: str) -> Optional[Dict[str, Any]]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def headline_accuracy(acc: Dict[str, Any], dataset: str = "hapt") -> List[Dict[str, Any]]:
    """Per label setting of ``dataset``: Cosmo's mean test accuracy, the best baseline's, the margin."""
    out = []  # type: List[Dict[str, Any]]
    table = acc.get("tables", {}).get(dataset)
    if not table:
        return out
    for row in table["rows"]:
        means = OrderedDict((m, float(np.mean(row[m]["accuracy"]))) for m in table["methods"] if row[m]["accuracy"])
        baselines = [m for m in means if m not in NOT_BASELINES]
        if OURS not in means or not baselines:
            continue
        best = max(baselines, key=lambda m: means[m])
        a, b = row[best]["accuracy"], row[OURS]["accuracy"]  # per seed, in seed order
        diff = paired(a, b) if len(a) == len(b) and len(a) > 1 else None
        out.append(OrderedDict([
            ("setting", row["setting"]), ("cosmo", means[OURS]), ("cosmo_std", float(np.std(row[OURS]["accuracy"]))),
            ("best_baseline", best), ("best_baseline_accuracy", means[best]),
            ("best_baseline_std", float(np.std(row[best]["accuracy"]))), ("margin", means[OURS] - means[best]),
            ("seeds", len(row[OURS]["accuracy"])), ("margin_paired", diff)]))
    return out


def stage2_ratios(stages: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Cosmo's stage-2 wall time divided by each baseline's, per label rate (the paper's Table 3)."""
    steps = stages.get("steps", {})
    out = []  # type: List[Dict[str, Any]]
    rates = sorted({k.rsplit("/", 1)[1] for k in steps if k.startswith("hapt/stage2/")}, key=lambda r: float(r[:-1]))
    for rate in rates:
        cosmo = steps.get("hapt/stage2/Cosmo/" + rate)
        if cosmo is None:
            continue
        row = OrderedDict([("labels", rate), ("cosmo_s", cosmo["cost"]["wall_s"])])  # type: Dict[str, Any]
        for b in BASELINES_FOR_RATIO:
            other = steps.get("hapt/stage2/{}/{}".format(b, rate))
            if other is not None:
                row[b + "_s"] = other["cost"]["wall_s"]
                row["cosmo/" + b] = cosmo["cost"]["wall_s"] / other["cost"]["wall_s"]
        out.append(row)
    return out


def _pct(x: float) -> str:
    return "{:.1f}".format(100 * x)


def report(root: str, acc: Optional[Dict[str, Any]], stages: Optional[Dict[str, Any]], quick: bool,
           seconds: float, failures: List[str]) -> Dict[str, Any]:
    """Write ``report.md`` and ``report.json`` into ``root``; return the JSON document."""
    head = headline_accuracy(acc) if acc else []
    ratios = stage2_ratios(stages) if stages else []
    scaling = (stages or {}).get("scaling", {})
    dev = (stages or {}).get("device", {})
    lines = ["# cosmo-har benchmark suite ({})".format("quick run" if quick else "full run"), "",
             "Host {} ({}, {} CPUs, CUDA {}; Jetson L4T: {}); wall time of this invocation {:.0f} s. Every figure "
             "below was measured on this host by this suite; runs cached by an earlier (e.g. interrupted or "
             "parallel, `--jobs`) invocation into this folder are read back, not re-run (the accuracy report "
             "gives their summed training time).".format(
                 dev.get("host", socket.gethostname()), dev.get("cpu_model", "?"), dev.get("cpu_count", "?"),
                 dev.get("cuda_device") or "absent", dev.get("jetson_l4t", "?"), seconds), ""]
    if head:
        lines += ["## Cosmo against the best baseline (UCI HAPT, test accuracy %, mean ± std over seeds)", "",
                  "| labels | Cosmo | best baseline | its accuracy | Cosmo − best (points) | paired by seed, 95 % CI "
                  "| seeds |", "|---|---|---|---|---|---|---|"]
        for h in head:
            d = h.get("margin_paired")
            lines.append("| {} | {} ± {} | {} | {} ± {} | {:+.1f} | {} | {} |".format(
                h["setting"], _pct(h["cosmo"]), _pct(h["cosmo_std"]), h["best_baseline"],
                _pct(h["best_baseline_accuracy"]), _pct(h["best_baseline_std"]), 100 * h["margin"],
                "[{:+.1f}, {:+.1f}]".format(100 * d["ci_low"], 100 * d["ci_high"]) if d else "n/a", h["seeds"]))
        lines += ["", "A claim of \"better\" needs the interval above zero; the interval is a t interval over "
                  "the per-seed differences (same labels, same split for both methods).", ""]
        lines.append("")
    if ratios:
        lines += ["## Stage-2 time, Cosmo divided by the baselines (paper, Jetson TX2: 0.68 vs DeepSense, "
                  "0.41 vs AttnSense)", "", "| labels | Cosmo (s) | DeepSense (s) | AttnSense (s) | Cosmo / DeepSense "
                  "| Cosmo / AttnSense |", "|---|---|---|---|---|---|"]
        for r in ratios:
            lines.append("| {} | {:.1f} | {} | {} | {} | {} |".format(
                r["labels"], r["cosmo_s"], *["{:.1f}".format(r[b + "_s"]) if b + "_s" in r else "–"
                                             for b in BASELINES_FOR_RATIO],
                *["{:.2f}".format(r["cosmo/" + b]) if "cosmo/" + b in r else "–" for b in BASELINES_FOR_RATIO]))
        lines.append("")
    if scaling:
        lines += ["## How cost grows (log-log fit, time ∝ x^exponent)", "", "| series | x | exponent | R² |",
                  "|---|---|---|---|"]
        for name, s in scaling.items():
            lines.append("| {} | {} | {:.2f} | {:.3f} |".format(name, ", ".join("{:g}".format(x) for x in s["x"]),
                                                               s["exponent"], s["r2"]))
        lines.append("")
    lines += ["Plots: accuracy_vs_labels.png, unlabeled_ratio.png, scaling.png. Full reports: "
              "[accuracy/report.md](accuracy/report.md), [stages/report.md](stages/report.md).", ""]
    if failures:
        lines += ["## Failures", ""] + ["* " + f for f in failures] + [""]
    for sub in ("accuracy", "stages"):
        p = os.path.join(root, sub, "report.md")
        if os.path.isfile(p):
            with open(p) as f:
                body = f.read().strip().splitlines()
            lines += ["---", ""] + [("#" + ln if ln.startswith("#") else ln) for ln in body] + [""]
    doc = OrderedDict([("quick", quick), ("seconds", seconds), ("device", dev), ("headline_accuracy", head),
                       ("stage2_time_ratios", ratios), ("scaling", scaling), ("failures", failures),
                       ("accuracy", acc), ("stages", stages)])
    write_json(os.path.join(root, "report.json"), doc)
    with open(os.path.join(root, "report.md"), "w") as f:
        f.write("\n".join(lines))
    return doc


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the small version (about 10 minutes here)")
    ap.add_argument("--out", default="results", help="parent folder of the run folder")
    ap.add_argument("--run-name", help="run folder name (default: <UTC date>_<host>[-quick])")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of both benchmarks (0: torch's default)")
    ap.add_argument("--only", choices=("accuracy", "stages"), help="run one benchmark (the report reads both)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="accuracy seeds trained in this many parallel processes (1 torch thread each), "
                         "then one pass that reads the cache and writes the report")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="accuracy seeds (default: its own)")
    ap.add_argument("--accuracy-args", default="", help="extra options for accuracy.py (one string)")
    ap.add_argument("--stages-args", default="", help="extra options for stages.py (one string)")
    a = ap.parse_args(argv)
    root = os.path.join(a.out, a.run_name or run_name(a.quick))
    os.makedirs(root, exist_ok=True)
    t0 = time.time()
    common = ["--threads", str(a.threads)] if a.threads else []
    quick = ["--quick"] if a.quick else []
    acc_argv = [sys.executable, "-m", "benchmarks.accuracy", "--out", os.path.join(root, "accuracy")] + quick
    acc_argv += ([] if a.quick else FULL_ACCURACY) + common + shlex.split(a.accuracy_args)
    st_argv = [sys.executable, "-m", "benchmarks.stages", "--out", root, "--run-name", "stages"] + quick
    st_argv += common + shlex.split(a.stages_args)
    failures = []  # type: List[str]
    log_path = os.path.join(root, "suite.log")
    if a.seeds:
        acc_argv += ["--seeds"] + [str(x) for x in a.seeds]
    if a.jobs > 1 and a.only != "stages":
        seeds = a.seeds or ([0] if a.quick else [0, 1, 2])
        groups = [seeds[i::a.jobs] for i in range(a.jobs) if seeds[i::a.jobs]]
        workers = [acc_argv + ["--no-report", "--threads", "1", "--seeds"] + [str(x) for x in g] for g in groups]
        for i, rc in enumerate(_run_parallel(workers, root)):
            if rc != 0:
                failures.append("accuracy worker {} (seeds {}) exited with {}".format(i, groups[i], rc))
    for name, argv_ in (("accuracy", acc_argv), ("stages", st_argv)):
        if a.only and a.only != name:
            continue
        rc = _run(argv_, log_path)
        if rc != 0:
            failures.append("{}.py exited with {} (see suite.log)".format(name, rc))
    acc = _load(os.path.join(root, "accuracy", "results.json"))
    stages = _load(os.path.join(root, "stages", "report.json"))
    for src, dst in (("accuracy/accuracy_vs_labels.png", "accuracy_vs_labels.png"),
                     ("accuracy/unlabeled_ratio.png", "unlabeled_ratio.png"), ("stages/scaling.png", "scaling.png")):
        if os.path.isfile(os.path.join(root, src)):
            shutil.copyfile(os.path.join(root, src), os.path.join(root, dst))
    report(root, acc, stages, a.quick, time.time() - t0, failures)
    print("wrote {}".format(os.path.join(root, "report.md")))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
