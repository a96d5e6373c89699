"""Writing a benchmark's report: ``<stem>.json`` (every number), ``<stem>.md`` (the tables) and
``<stem>.png`` (the plot) into one folder, and the Markdown on stdout; and the paired statistics every
accuracy claim uses (``paired``: mean difference by seed with its 95 % interval)."""
import json
import os
import shlex
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np


def write_report(out: str, stem: str, r: Dict[str, Any], markdown: Callable[[Dict[str, Any]], str],
                 plot: Callable[[Dict[str, Any], str], None]) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, stem + ".json"), "w") as f:
        json.dump(r, f, indent=2)
    text = markdown(r)
    with open(os.path.join(out, stem + ".md"), "w") as f:
        f.write(text)
    plot(r, os.path.join(out, stem + ".png"))
    print(text)


def command_line(module: str, argv: Optional[Sequence[str]] = None) -> str:
    """How a benchmark was run, as a shell line that runs it again (``argv``: its arguments, default the
    process's), quoting what needs it (``--methods "CPC + pseudo-labels"``)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "-m", module] + [shlex.quote(str(x)) for x in args])


def paired(a: List[float], b: List[float]) -> Dict[str, float]:
    """Mean of b - a and its 95 % confidence interval over paired seeds (t distribution)."""
    from scipy import stats
    d = np.asarray(b) - np.asarray(a)
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"mean": float(d.mean()), "ci_low": float(d.mean() - half), "ci_high": float(d.mean() + half)}


def mean_std(v: List[float]) -> Dict[str, float]:
    """Mean and sample standard deviation over seeds (0 for a single seed)."""
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}


def add_study_flags(ap: Any, quick_help: str) -> None:
    """The flags of a candidate study (``benchmarks.augment``, ``benchmarks.semi``): stage budgets, torch
    threads, the cache-only and no-report modes, and ``--quick`` (``quick_help`` says what it runs)."""
    from shared.hparams import Stage1Config, Stage2Config
    ap.add_argument("--s1-epochs", type=int, default=Stage1Config().epochs)
    ap.add_argument("--s2-epochs", type=int, default=Stage2Config().epochs)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--report-only", action="store_true", help="write the report from the cached runs (trains "
                    "nothing; a run missing from --out is a one-line error)")
    ap.add_argument("--no-report", action="store_true", help="run and cache, but write no report")
    ap.add_argument("--quick", action="store_true", help=quick_help)

