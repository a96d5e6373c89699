"""Writing a benchmark's report: ``<stem>.json`` (every number), ``<stem>.md`` (the tables) and
``<stem>.png`` (the plot) into one folder, and the Markdown on stdout; and the paired statistics every
accuracy claim uses (``paired``: mean difference by seed with its 95 % interval)."""
import json
import os
from typing import Any, Callable, Dict, List

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


def paired(a: List[float], b: List[float]) -> Dict[str, float]:
    """Mean of b - a and its 95 % confidence interval over paired seeds (t distribution)."""
    from scipy import stats
    d = np.asarray(b) - np.asarray(a)
    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"mean": float(d.mean()), "ci_low": float(d.mean() - half), "ci_high": float(d.mean() + half)}


def mean_std(v: List[float]) -> Dict[str, float]:
    """Mean and sample standard deviation over seeds (0 for a single seed)."""
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
