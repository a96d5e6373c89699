"""Cost of every stage of Cosmo: cloud stage 1, quality scoring, publish + download, edge stage 2 (Cosmo,
DeepSense, AttnSense at 1 % and 2 % labels, as the paper's Table 3), ONNX export and inference; and how
the cost grows with the data (synthetic windows x1, x2, x4, x8), the number of modalities (2, 3, 4) and the
number of fused views P (2, 4, 8, 16), with the fitted log-log exponent.

Every measured step runs inside ``EnergyMonitor(detect())``: wall seconds, CPU seconds, energy (J) with
its source (``rapl``/``nvml``/``tegrastats``/``ina3221``, or ``estimate`` = CPU seconds x 5 W, labeled as
such) and energy above the idle baseline (idle power measured once, reported separately). Memory is the
**process peak RSS** (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after the step and its growth during
the step: every step runs in this process, so the peak is the process's high-water mark, not the step's
own footprint (a step that uses less than an earlier one shows growth 0).

Writes ``report.md``, ``report.json`` and ``scaling.png`` (log-log) into
``--out/<UTC date>_<host>/``; every step is cached there as JSON (``steps/``), so an interrupted run
resumes and a second run on the same day and host reads the cache back (``config.json`` holds the options;
a run with other options into the same folder stops and asks for another ``--out`` or ``--run-name``).

    python -m benchmarks.stages                      # full (HAPT, default epochs; long on CPU)
    python -m benchmarks.stages --quick              # a smoke run (a few minutes here)
    python -m benchmarks.stages --quick --synthetic-only
"""
import argparse
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch


from shared.energy import EnergyMonitor, Meter, detect, detect_report
from shared.training import Stage1Config, Stage2Config
from shared.files import write_json

WINDOW_MULTS = (1, 2, 4, 8)
MODALITY_COUNTS = (2, 3, 4)
VIEW_COUNTS = (2, 4, 8, 16)
LABEL_RATES = (("1%", 0.01), ("2%", 0.02))
S2_METHODS = (("Cosmo", "cosmo"), ("DeepSense", "deepsense"), ("AttnSense", "attnsense"))


# ---------------------------------------------------------------------------------------------- device
def _version(mod: str) -> str:
    try:
        m = __import__(mod)
        return str(getattr(m, "__version__", "?"))
    except Exception as e:  # absent or broken: say so
        return "absent ({})".format(type(e).__name__)


def _cmd(argv: List[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "absent"
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip() or "rc {}".format(p.returncode)
    except Exception as e:
        return "failed ({}: {})".format(type(e).__name__, e)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def describe_device(provider: Optional[str] = None) -> Dict[str, Any]:
    """What the numbers were measured on."""
    tegra = "absent"
    if os.path.isfile("/etc/nv_tegra_release"):
        with open("/etc/nv_tegra_release") as f:
            tegra = f.read().strip()
    try:
        import onnxruntime as ort
        ort_providers = list(ort.get_available_providers())
    except Exception:
        ort_providers = []
    return OrderedDict([
        ("host", socket.gethostname()), ("platform", platform.platform()), ("machine", platform.machine()),
        ("cpu_model", _cpu_model()), ("cpu_count", os.cpu_count()), ("torch_threads", torch.get_num_threads()),
        ("python", platform.python_version()),
        ("versions", OrderedDict((m, _version(m)) for m in ("torch", "numpy", "onnxruntime", "grpc"))),
        ("cuda_available", bool(torch.cuda.is_available())),
        ("cuda_device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None),
        ("torch_cuda_version", torch.version.cuda),
        ("jetson_l4t", tegra), ("nvpmodel", _cmd(["nvpmodel", "-q"])),
        ("jetson_clocks", _cmd(["jetson_clocks", "--show"])),
        ("ort_available_providers", ort_providers), ("ort_provider_in_use", provider or "not measured"),
    ])


# --------------------------------------------------------------------------------------------- measure
def _maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0  # bytes on macOS, KiB on Linux


def measure(meter: Meter, idle_w: Optional[float], fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    """Run ``fn`` inside an EnergyMonitor; return its result dict + the monitor's + process peak RSS."""
    rss0 = _maxrss_mb()
    mon = EnergyMonitor(meter)
    mon.idle_w = idle_w
    with mon:
        out = fn()
    res = dict(mon.result())
    res.pop("idle_w", None)
    res["peak_rss_mb"] = _maxrss_mb()
    res["peak_rss_growth_mb"] = res["peak_rss_mb"] - rss0
    return OrderedDict([("cost", res), ("result", out)])


class Steps(object):
    """Cached measured steps under ``root/steps/<key>.json``."""

    def __init__(self, root: str, meter: Meter, idle_w: Optional[float], bar: Any) -> None:
        self.root, self.meter, self.idle_w, self.bar = os.path.join(root, "steps"), meter, idle_w, bar
        os.makedirs(self.root, exist_ok=True)
        self.done = OrderedDict()  # type: Dict[str, Dict[str, Any]]

    def run(self, key: str, fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
        path = os.path.join(self.root, key.replace("/", "_").replace("%", "pct") + ".json")
        self.bar.set_postfix_str(key)
        if os.path.isfile(path):
            with open(path) as f:
                rec = json.load(f)
        else:
            rec = measure(self.meter, self.idle_w, fn)
            write_json(path, rec)
        self.done[key] = rec
        self.bar.update(1)
        return rec


# ------------------------------------------------------------------------------------------------ HAPT
def _hapt_steps(st: Steps, a: Any, work: str) -> Dict[str, Any]:
    """The cloud's own pipeline stages (``cloud.pipeline``: prepare -> pretrain -> package -> quality ->
    export -> publish, as the job worker runs them), each measured, then the edge's: download, stage 2 of
    every method at each label rate, ONNX export of the fine-tuned model, runtime load, inference."""
    from dataclasses import replace as dc_replace

    from cloud.pipeline import prepare_from, run_quality, stage_export, stage_package, stage_prepare
    from cloud.server import CloudServer
    from edge.export import export_finetuned
    from edge.runtime import Runtime
    from shared.baselines import train_baseline
    from shared.client import pull
    from shared.manifest import MANIFEST, read_manifest
    from shared.training import finetune, load_encoder_bundle, pretrain

    s1dir = os.path.join(work, "stage1")
    s1cfg = Stage1Config(epochs=a.s1_epochs, seed=0, device="cpu")
    rate0 = LABEL_RATES[0][1]
    prep, prep_args = stage_prepare(s1dir, "hapt:" + a.hapt if a.hapt else "hapt", s1cfg, label_rate=rate0)
    labeled = OrderedDict([(LABEL_RATES[0][0], prep.labeled)])
    for n, r in LABEL_RATES[1:]:  # the same split and seed, more labels
        labeled[n] = prepare_from(dict(prep_args, label_rate=r)).labeled
    if a.s1_windows and a.s1_windows < len(prep.unlabeled):  # a smaller stage 1 (--quick): fewer unlabeled
        keep = np.sort(np.random.RandomState(0).choice(len(prep.unlabeled), a.s1_windows, replace=False))
        prep = dc_replace(prep, unlabeled=prep.unlabeled.subset(keep))
    train, test = prep.norm(prep.split.train), prep.norm(prep.split.test)
    unl, val = prep.norm(prep.unlabeled), prep.norm(prep.split.val)
    if a.val_windows and a.val_windows < len(val):
        val = val.subset(np.sort(np.random.RandomState(1).choice(len(val), a.val_windows, replace=False)))
    labeled = OrderedDict((n, prep.norm(ds)) for n, ds in labeled.items())
    info = {"pipeline": "cloud.pipeline", "windows_train": len(train), "windows_stage1": len(unl),
            "windows_val": len(val), "windows_test": len(test), "labeled": {n: len(v) for n, v in labeled.items()}}

    def stage1() -> Dict[str, Any]:
        res = pretrain(unl, s1cfg, s1dir, progress=False)
        stage_package(s1dir, prep, prep_args, s1cfg, res, "hapt-stages")  # the manifest draft, edge data
        h = res["history"]
        return {"epochs": len(h), "windows": len(unl), "loss": h[-1]["loss"],
                "seconds_per_epoch": float(np.mean(_epoch_seconds(h)))}
    st.run("hapt/stage1", stage1)

    def quality() -> Dict[str, Any]:
        try:
            return run_quality(s1dir, unl, "encoder", s1cfg.seed).to_json()
        except Exception as e:  # too few windows for the statistic (--quick): uniform, and said so
            return {"q": [1.0] * len(unl.modalities), "fallback": "uniform ({}: {})".format(type(e).__name__, e)}
    q = st.run("hapt/quality", quality)["result"]["q"]
    st.run("hapt/export_encoders", lambda: {"files": len(stage_export(s1dir, prep)["files"])})
    man = read_manifest(os.path.join(s1dir, MANIFEST))
    if not man.get("quality"):  # the uniform fallback above: published like any scored version
        man["quality"] = {"q": list(q), "modalities": list(unl.modalities), "features": "uniform"}
        write_json(os.path.join(s1dir, MANIFEST), man)
    srv_dir, dest = os.path.join(work, "cloud"), os.path.join(work, "edge_models")

    def publish_download() -> Dict[str, Any]:
        import grpc
        shutil.rmtree(srv_dir, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
        srv = CloudServer(srv_dir, listen="127.0.0.1:0")
        port = srv.start()
        try:
            t0 = time.perf_counter()
            pub = srv.registry.publish_folder(s1dir)
            t1 = time.perf_counter()
            with grpc.insecure_channel("127.0.0.1:{}".format(port)) as ch:
                folder, got = pull(ch, man["name"], dest, alias="latest")
            t2 = time.perf_counter()
        finally:
            srv.stop(grace=1.0)
        return {"version": int(got["version"]), "bytes": int(sum(f["size"] for f in pub["files"])),
                "files": len(pub["files"]), "publish_s": t1 - t0, "download_s": t2 - t1,
                "folder": os.path.relpath(folder, work)}
    pd = st.run("hapt/publish+download", publish_download)["result"]
    pulled_enc = os.path.join(work, pd["folder"], "encoders.pt")

    s2cfg = Stage2Config(epochs=a.s2_epochs, fusion="concat", seed=0, device="cpu")
    cosmo_1pct = os.path.join(work, "cosmo_1pct_finetuned.pt")
    for name, key in S2_METHODS:
        for rate, _ in LABEL_RATES:
            lab = labeled[rate]

            def s2(key: str = key, lab: Any = lab, rate: str = rate) -> Dict[str, Any]:
                from shared.training import evaluate
                if key == "cosmo":
                    res = finetune(load_encoder_bundle(pulled_enc), lab, val, s2cfg, quality=q, progress=False)
                    if rate == "1%":
                        torch.save(res["model"], cosmo_1pct)
                else:
                    res = train_baseline(key, lab, val, s2cfg, progress=False)
                t = evaluate(res["model"], test)
                return {"labeled": len(lab), "epochs": len(res["history"]), "best_epoch": res["best_epoch"],
                        "seconds_per_epoch": res["seconds"] / max(1, len(res["history"])),
                        "test_accuracy": t["accuracy"], "test_macro_f1": t["macro_f1"]}
            st.run("hapt/stage2/{}/{}".format(name, rate), s2)

    edge_dir = os.path.join(work, "edge_onnx")

    def export() -> Dict[str, Any]:
        model = torch.load(cosmo_1pct, map_location="cpu", weights_only=False)
        entry = export_finetuned(model, man, edge_dir)
        write_json(os.path.join(edge_dir, MANIFEST), dict(man, version=pd["version"], files=[entry]))
        return {"onnx_bytes": entry["size"]}
    st.run("hapt/onnx_export", export)

    raw = prep.split.test
    rt_holder = {}  # type: Dict[str, Any]

    def load() -> Dict[str, Any]:
        rt_holder["rt"] = Runtime.load(edge_dir)
        return {"provider": rt_holder["rt"].provider}
    provider = st.run("hapt/runtime_load", load)["result"]["provider"]

    def infer() -> Dict[str, Any]:
        rt = rt_holder.get("rt") or Runtime.load(edge_dir)
        out = {"provider": rt.provider}  # type: Dict[str, Any]
        for bs, reps in ((1, a.infer_reps), (64, max(2, a.infer_reps // 8))):
            n = min(bs, len(raw))
            win = {m: raw.x[m][:n].copy() for m in raw.modalities}
            rt.predict(win)  # warm-up
            lat = []
            for _ in range(reps):
                t0 = time.perf_counter()
                rt.predict(win)
                lat.append(time.perf_counter() - t0)
            out["batch{}".format(bs)] = {"batch": n, "reps": reps, "latency_ms_median": 1e3 * float(np.median(lat)),
                                         "latency_ms_p90": 1e3 * float(np.percentile(lat, 90)),
                                         "windows_per_s": n / float(np.median(lat))}
        return out
    st.run("hapt/inference", infer)
    info["ort_provider"] = provider
    return info


# ------------------------------------------------------------------------------------------- synthetic
def _epoch_seconds(history: List[Dict[str, Any]]) -> List[float]:
    """Per-epoch seconds from stage 1's history, whose ``seconds`` are cumulative since training began."""
    return [float(v) for v in np.diff([0.0] + [float(r["seconds"]) for r in history])]


def _synthetic(windows_per_subject: int, n_mods: int, T: int, seed: int = 0) -> Any:
    from shared.data.splits import Normalizer
    from shared.data.synthetic import make_synthetic
    ds = make_synthetic(num_subjects=8, windows_per_subject=windows_per_subject, num_classes=4,
                        modalities=[("m{}".format(i), T, 3) for i in range(n_mods)], informativeness=0.8,
                        seed=seed)
    return Normalizer.fit(ds).apply(ds)


def _scaling_steps(st: Steps, a: Any, work: str) -> None:
    from shared.training import finetune, pretrain
    from shared.training.stage1 import build_encoders
    base_cfg = Stage1Config(epochs=a.syn_s1_epochs, seed=0, device="cpu", out_steps=4,
                            batch_size=min(64, 8 * a.syn_windows // 2))

    def s1(wps: int, mods: int, views: int, input_views: int = 2) -> Callable[[], Dict[str, Any]]:
        def go() -> Dict[str, Any]:
            ds = _synthetic(wps, mods, a.syn_T)
            ds = ds.with_labels(np.full(len(ds), -1, np.int64))
            out = tempfile.mkdtemp(prefix="s1_", dir=work)
            try:
                res = pretrain(ds, replace(base_cfg, num_views=views, input_views=input_views), out, progress=False)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            h = res["history"]
            secs = _epoch_seconds(h)
            return {"windows": len(ds), "modalities": mods, "num_views": views, "input_views": input_views,
                    "epochs": len(h),
                    "seconds_per_epoch": float(np.mean(secs[1:] if len(secs) > 1 else secs))}
        return go

    for k in WINDOW_MULTS:
        st.run("scaling/stage1/windows_x{}".format(k), s1(a.syn_windows * k, 2, 8))
    for m in MODALITY_COUNTS:
        st.run("scaling/stage1/modalities_{}".format(m), s1(a.syn_windows * 2, m, 8))
    for p in VIEW_COUNTS:
        st.run("scaling/stage1/views_{}".format(p), s1(a.syn_windows * 2, 2, p, input_views=1))

    s2cfg = Stage2Config(epochs=a.syn_s2_epochs, fusion="concat", seed=0, device="cpu", t_iter=1)
    val = _synthetic(max(2, a.syn_windows // 4), 2, a.syn_T, seed=1)
    for k in WINDOW_MULTS:
        def s2(k: int = k) -> Dict[str, Any]:
            lab = _synthetic(a.syn_windows * k, 2, a.syn_T)
            torch.manual_seed(0)
            encs = build_encoders([lab.specs[m] for m in lab.modalities], [a.syn_T] * 2, base_cfg.encoder_widths,
                                  base_cfg.encoder_dropout, base_cfg.out_steps)
            res = finetune(encs, lab, val, s2cfg, progress=False)
            return {"windows": len(lab), "epochs": len(res["history"]),
                    "seconds_per_epoch": res["seconds"] / max(1, len(res["history"]))}
        st.run("scaling/stage2/windows_x{}".format(k), s2)


def fit_exponent(x: List[float], y: List[float]) -> Dict[str, Any]:
    """Least-squares slope of log y on log x: cost ~ x^exponent."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.maximum(np.asarray(y, float), 1e-9))
    slope, icept = np.polyfit(lx, ly, 1)
    pred = slope * lx + icept
    ss = float(np.sum((ly - ly.mean()) ** 2))
    r2 = 1.0 - float(np.sum((ly - pred) ** 2)) / ss if ss > 0 else 1.0
    return {"x": list(map(float, x)), "seconds": list(map(float, y)), "exponent": float(slope), "r2": r2}


def _scaling_table(done: Dict[str, Dict[str, Any]]) -> "OrderedDict[str, Dict[str, Any]]":
    def series(prefix: str, xkey: str) -> Tuple[List[float], List[float]]:
        rows = [v["result"] for k, v in done.items() if k.startswith(prefix)]
        rows.sort(key=lambda r: r[xkey])
        return [r[xkey] for r in rows], [r["seconds_per_epoch"] for r in rows]
    out = OrderedDict()  # type: OrderedDict[str, Dict[str, Any]]
    for name, prefix, xkey in (("stage-1 s/epoch vs windows", "scaling/stage1/windows_", "windows"),
                               ("stage-1 s/epoch vs modalities", "scaling/stage1/modalities_", "modalities"),
                               ("stage-1 s/epoch vs fused views P", "scaling/stage1/views_", "num_views"),
                               ("stage-2 s/epoch vs windows", "scaling/stage2/windows_", "windows")):
        x, y = series(prefix, xkey)
        if len(x) >= 2:
            out[name] = fit_exponent(x, y)
    return out


# --------------------------------------------------------------------------------------------- report
def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _report(done: Dict[str, Dict[str, Any]], scaling: Dict[str, Any], dev: Dict[str, Any], idle: Dict[str, Any],
            a: Any, info: Optional[Dict[str, Any]], wall: float) -> str:
    src = idle["source"] + (" (ESTIMATE: CPU seconds x {} W, not measured power)".format(idle.get("watts"))
                            if idle["is_estimate"] else " (measured)")
    lines = ["# Cost of Cosmo's stages", "",
             "Energy source: **{}**. Idle baseline: {} W over {} s (reported separately; \"above idle\" = energy "
             "minus idle power x wall time). Peak RSS: process high-water mark (`ru_maxrss`) after the step and its "
             "growth during it; every step runs in one process, so it is not the step's own footprint.".format(
                 src, _f(idle["idle_w"], "{:.3f}"), idle["seconds"]), "",
             "Device: {} ({} CPUs, torch threads {}), {}; CUDA: {}; Jetson L4T: {}; nvpmodel: {}; jetson_clocks: {}; "
             "ORT provider in use: {}; versions: {}.".format(
                 dev["cpu_model"], dev["cpu_count"], dev["torch_threads"], dev["platform"],
                 dev["cuda_device"] or dev["cuda_available"], dev["jetson_l4t"], dev["nvpmodel"].splitlines()[0],
                 dev["jetson_clocks"].splitlines()[0], dev["ort_provider_in_use"],
                 ", ".join("{} {}".format(k, v) for k, v in dev["versions"].items())), ""]
    if info:
        lines += ["HAPT: stage 1 {} epochs on {} unlabeled windows; stage 2 {} epochs (val {} windows); labeled: {}."
                  .format(a.s1_epochs, info["windows_stage1"], a.s2_epochs, info["windows_val"],
                          ", ".join("{} = {}".format(k, v) for k, v in info["labeled"].items())), ""]
    lines += ["| step | wall s | CPU s | energy J | above idle J | peak RSS MB (growth) | notes |",
              "|---|---|---|---|---|---|---|"]
    for k, v in done.items():
        c, r = v["cost"], v["result"]
        notes = []
        for nk in ("seconds_per_epoch", "test_accuracy", "publish_s", "download_s", "bytes", "onnx_bytes",
                   "provider", "windows"):
            if nk in r:
                val = r[nk]
                notes.append("{}={}".format(nk, "{:.3g}".format(val) if isinstance(val, float) else val))
        for bk in ("batch1", "batch64"):
            if bk in r:
                notes.append("{}: {:.2f} ms, {:.0f} win/s".format(bk, r[bk]["latency_ms_median"], r[bk]["windows_per_s"]))
        lines.append("| {} | {:.2f} | {:.2f} | {} | {} | {:.0f} (+{:.0f}) | {} |".format(
            k, c["wall_s"], c["cpu_s"], _f(c["energy_j"], "{:.1f}"), _f(c["energy_above_idle_j"], "{:.1f}"),
            c["peak_rss_mb"], c["peak_rss_growth_mb"], "; ".join(notes)))
    lines += ["", "Scaling on synthetic data (base {} windows/subject x 8 subjects, T = {}; stage 1 {} epochs, "
              "stage 2 {} epochs; P sweep with input_views = 1, the paper's method, as P = 2 leaves one fused view per "
              "copy with 2 copies; the other stage-1 series: P = 8, 2 augmented copies; cost ~ x^exponent, "
              "least squares in log-log; stage-1 s/epoch is the mean over epochs after the first, stage-2 s/epoch "
              "includes its per-epoch validation):".format(
                  a.syn_windows, a.syn_T, a.syn_s1_epochs, a.syn_s2_epochs), "",
              "| series | x | seconds per epoch | exponent | R² |", "|---|---|---|---|---|"]
    for name, s in scaling.items():
        lines.append("| {} | {} | {} | {:.2f} | {:.2f} |".format(
            name, ", ".join("{:g}".format(v) for v in s["x"]), ", ".join("{:.3f}".format(v) for v in s["seconds"]),
            s["exponent"], s["r2"]))
    lines += ["", "Total wall time {:.0f} s.".format(wall)]
    return "\n".join(lines) + "\n"


def _plot(scaling: Dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, s in scaling.items():
        x = np.asarray(s["x"]) / s["x"][0]
        ax.loglog(x, s["seconds"], "o-", label="{} (exp {:.2f})".format(name, s["exponent"]))
    ax.set_xlabel("relative size (x / x_min)")
    ax.set_ylabel("seconds per epoch")
    ax.set_title("Cost scaling (log-log)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/stages")
    ap.add_argument("--quick", action="store_true", help="tiny epochs and sizes: a smoke run")
    ap.add_argument("--s1-epochs", type=int, default=None, help="HAPT stage-1 epochs")
    ap.add_argument("--s2-epochs", type=int, default=None, help="HAPT stage-2 epochs, every method")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--hapt", help="HAPT.pkl.gz or UCI HAPT folder (default: the packaged copy)")
    ap.add_argument("--synthetic-only", "--skip-hapt", dest="synthetic_only", action="store_true",
                    help="only the scaling runs on synthetic data")
    ap.add_argument("--s1-windows", type=int, default=None, help="cap on HAPT stage-1 windows (0: all)")
    ap.add_argument("--val-windows", type=int, default=None, help="cap on HAPT validation windows (0: all)")
    ap.add_argument("--syn-windows", type=int, default=None, help="synthetic base windows per subject (x1)")
    ap.add_argument("--syn-T", type=int, default=None, help="synthetic window length")
    ap.add_argument("--syn-s1-epochs", type=int, default=None)
    ap.add_argument("--syn-s2-epochs", type=int, default=None)
    ap.add_argument("--infer-reps", type=int, default=None, help="timed batch-1 inference calls")
    ap.add_argument("--idle-s", type=float, default=None, help="seconds of idle baseline")
    ap.add_argument("--run-name", help="results subfolder (default: <UTC date>_<host>)")
    a = ap.parse_args(argv)
    full = dict(s1_epochs=Stage1Config().epochs, s2_epochs=Stage2Config().epochs, s1_windows=0, val_windows=0,
                syn_windows=64, syn_T=64, syn_s1_epochs=3, syn_s2_epochs=3, infer_reps=200, idle_s=10.0)
    quick = dict(s1_epochs=3, s2_epochs=10, s1_windows=3072, val_windows=512, syn_windows=32, syn_T=64,
                 syn_s1_epochs=3, syn_s2_epochs=3, infer_reps=200, idle_s=5.0)
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.threads:
        torch.set_num_threads(a.threads)
    from tqdm import tqdm

    root = os.path.join(a.out, a.run_name or "{}_{}".format(time.strftime("%Y-%m-%d", time.gmtime()),
                                                           socket.gethostname()))
    work = os.path.join(root, "work")
    os.makedirs(work, exist_ok=True)
    cfg = {k: v for k, v in sorted(vars(a).items()) if k not in ("out", "run_name", "quick")}
    cfg_path = os.path.join(root, "config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            old = json.load(f)
        if old != cfg:
            raise SystemExit("{} holds cached steps of other options ({}); use another --out or --run-name".format(
                root, ", ".join("{}: {} -> {}".format(k, old.get(k), cfg[k]) for k in cfg if old.get(k) != cfg[k])))
    else:
        write_json(cfg_path, cfg)
    t_start = time.time()
    meter = detect()
    idle_path = os.path.join(root, "idle.json")
    if os.path.isfile(idle_path):
        with open(idle_path) as f:
            idle = json.load(f)
    else:
        idle_w = EnergyMonitor(meter).measure_idle(a.idle_s)
        idle = {"idle_w": idle_w, "seconds": a.idle_s, "source": meter.source, "is_estimate": bool(meter.is_estimate),
                "watts": getattr(meter, "watts", None), "probes": dict(detect_report())}
        write_json(idle_path, idle)
    n_hapt = 0 if a.synthetic_only else 7 + len(S2_METHODS) * len(LABEL_RATES)
    n_syn = 2 * len(WINDOW_MULTS) + len(MODALITY_COUNTS) + len(VIEW_COUNTS)
    bar = tqdm(total=n_hapt + n_syn, desc="stages", unit="step")
    st = Steps(root, meter, idle["idle_w"], bar)
    info = None if a.synthetic_only else _hapt_steps(st, a, work)
    _scaling_steps(st, a, work)
    bar.close()
    scaling = _scaling_table(st.done)
    dev = describe_device(info["ort_provider"] if info else None)
    wall = time.time() - t_start
    md = _report(st.done, scaling, dev, idle, a, info, wall)
    write_json(os.path.join(root, "report.json"), OrderedDict([
        ("args", vars(a)), ("device", dev), ("idle", idle), ("hapt", info), ("steps", st.done),
        ("scaling", scaling), ("wall_s", wall)]))
    with open(os.path.join(root, "report.md"), "w") as f:
        f.write(md)
    _plot(scaling, os.path.join(root, "scaling.png"))
    print(md)
    print("wrote {}".format(root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
