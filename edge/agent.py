"""The edge agent: follow the cloud registry, fine-tune shipped encoders on local labels, serve.

State folder (``--state-dir S``)::

    S/models/<name>/v<N>/         a pulled, verified registry version (shared.client.pull; resumable)
    S/finetuned/<name>/v<N>/      stage 2 on the local labels: finetuned.pt, model.onnx (verified),
                                  encoders.pt, manifest.json, metrics.json
    S/finetuned/<name>/.v<N>.partial/   fine-tuning in progress (redone after a crash)
    S/personalized/<name>/v<N>/   v<N> adapted to this device's user (edge.personal; edge-agent personalize)
    S/personal/windows.npz        the user's windows kept for that (--personal-windows; never sent)
    S/state.json                  {"serving": {...}, "history": [...], "aligned": {...}}: what serves, what
                                  served before, the installed aligned model
    S/index.sqlite                the search index of recent windows (edge.index; --index-capacity)

A version is only swapped in after its fine-tuned ONNX model loaded and reproduced the torch model's
validation accuracy; the runtime that passed is the one that serves (loaded once: on a TX2 the TensorRT
engine is built once, and cached on disk for restarts). Until then the previous version keeps serving,
and it stays on disk for ``edge-agent rollback``. Serving (``load_serving``, ``rollback``, the aligned
model) imports no torch; stage 2 imports it when a fine-tune runs. A restarted agent serves what ``state.json`` names at once, resumes a half
download, and never redoes a finished fine-tune.

With ``aligned_model`` (``--aligned-model NAME``) the agent also follows that aligned (IMU <-> text) model:
each new version is pulled (verified; a corrupt download never replaces the working one), loaded
(``edge.aligned.AlignedRuntime``, sha256 checked again) and installed next to the classifier, which
enables Embed in the aligned space and Search. Installing a new aligned version empties the search
index (embeddings of different versions are not comparable).
"""
import json
import logging
import os
import shutil
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import grpc

from shared.client import pull
from shared.contract import ENCODERS, MANIFEST, METRICS, MODEL_ONNX
from shared.energy import EnergyMonitor, Meter, detect
from shared.errors import CosmoError
from shared.files import write_json
from shared.rpc import ModelRegistryStub, pb

from .aligned import AlignedRuntime
from .holders import AlignedHolder, ModelHolder
from .index import DEFAULT_CAPACITY, WindowIndex
from .runtime import Runtime, SessionSettings

log = logging.getLogger(__name__)
STATE = "state.json"
INDEX = "index.sqlite"


def _stage(fn: Callable[[], Any], meter: Optional[Meter] = None) -> Dict[str, Any]:
    """Run ``fn``; measure wall and CPU seconds and, with ``meter``, energy (its source says which
    meter: INA3221 / tegrastats on a Jetson, RAPL, NVML, or a labeled CPU-time estimate)."""
    if meter is None:
        w0, c0 = time.time(), time.process_time()
        out = fn()
        return {"result": out, "wall_seconds": time.time() - w0, "cpu_seconds": time.process_time() - c0,
                "energy_joules": 0.0, "energy_source": ""}
    with EnergyMonitor(meter) as mon:
        out = fn()
    r = mon.result()
    return {"result": out, "wall_seconds": r["wall_s"], "cpu_seconds": r["cpu_s"],
            "energy_joules": float(r["energy_j"] or 0.0), "energy_source": str(r["source"])}


class Agent(object):
    """One device's agent. ``channel`` reaches the cloud registry; ``labels_dir`` holds the device's
    ``labeled``/``val`` (and optionally ``test``) windows in the project's ``.npz`` form."""

    def __init__(self, state_dir: str, labels_dir: str, channel: Optional[grpc.Channel] = None,
                 model_name: str = "cosmo-encoders", config: Optional[Any] = None,
                 edge_id: str = "", require_gpu: bool = False, watts: float = 5.0, aligned_model: str = "",
                 index_capacity: int = DEFAULT_CAPACITY, settings: Optional[SessionSettings] = None) -> None:
        # absolute: state.json records paths, and `serve` may start from another directory
        self.state_dir = os.path.abspath(state_dir)
        self.labels_dir, self.channel = os.path.abspath(labels_dir) if labels_dir else "", channel
        self.model_name = model_name
        # a Stage2Config, or a function that builds one (the CLI's: training imports wait for a fine-tune);
        # None: the "cosmo-har" preset, as the CLI's default
        self.config = config
        self.settings = settings or SessionSettings(engine_cache=os.path.join(self.state_dir, "engine_cache"))
        self.edge_id = edge_id or os.uname()[1]
        self.require_gpu = require_gpu
        self.meter = detect(watts=watts)  # the best meter present; else CPU seconds x watts, "estimate"
        self.holder = ModelHolder()
        self.aligned_model = aligned_model or ""
        self.index_capacity = int(index_capacity)
        self._aligned = None  # type: Optional[AlignedHolder]
        self._lock = threading.Lock()
        os.makedirs(self.state_dir, exist_ok=True)

    @property
    def aligned(self) -> AlignedHolder:
        """The aligned model (None until installed) and the search index (``S/index.sqlite``, opened on
        first use)."""
        with self._lock:
            if self._aligned is None:
                self._aligned = AlignedHolder(WindowIndex(os.path.join(self.state_dir, INDEX),
                                                          capacity=self.index_capacity))
            return self._aligned

    # ------------------------------------------------------------------------------------- state
    def state(self) -> Dict[str, Any]:
        p = os.path.join(self.state_dir, STATE)
        if not os.path.isfile(p):
            return {"serving": None, "history": []}
        with open(p) as f:
            return json.load(f)

    def _write_state(self, st: Dict[str, Any]) -> None:
        write_json(os.path.join(self.state_dir, STATE), st)

    def finetuned_dir(self, name: str, version: int) -> str:
        return os.path.join(self.state_dir, "finetuned", name, "v{}".format(int(version)))

    def installed(self) -> List[Dict[str, Any]]:
        """Fine-tuned versions on disk, oldest first."""
        out = []
        root = os.path.join(self.state_dir, "finetuned")
        for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            for v in sorted(os.listdir(os.path.join(root, name))):
                d = os.path.join(root, name, v)
                if v.startswith("v") and os.path.isfile(os.path.join(d, METRICS)):
                    with open(os.path.join(d, METRICS)) as f:
                        m = json.load(f)
                    out.append({"name": name, "version": int(v[1:]), "path": d,
                                "val_accuracy": m.get("val", {}).get("accuracy")})
        return sorted(out, key=lambda e: (e["name"], e["version"]))

    # ------------------------------------------------------------------------------------- steps
    def pull(self, version: Optional[int] = None, alias: str = "latest") -> Dict[str, Any]:
        if self.channel is None:
            raise CosmoError("pull needs --cloud HOST:PORT")
        st = _stage(lambda: pull(self.channel, self.model_name, os.path.join(self.state_dir, "models"),
                                 version=version, alias=None if version else alias), self.meter)
        folder, man = st["result"]
        log.info("pulled %s v%s into %s in %.1f s", self.model_name, man["version"], folder, st["wall_seconds"])
        return {"folder": folder, "manifest": man, "stage": dict(st, result=None)}

    def finetune(self, model_dir: str) -> Dict[str, Any]:
        """Stage 2 + ONNX export + verification into ``finetuned/<name>/v<N>`` (skipped when done). Returns
        ``{"folder", "metrics", "stages", "runtime"}``: the verified runtime, to be served as it is."""
        from shared.hparams import STAGE2_PRESETS, Stage2Config

        from .export import export_finetuned
        from .finetune import run_finetune
        from .personal import stored_windows
        with open(os.path.join(model_dir, MANIFEST)) as f:
            man = json.load(f)
        final = self.finetuned_dir(man["name"], man["version"])
        if os.path.isfile(os.path.join(final, METRICS)) and os.path.isfile(os.path.join(final, MODEL_ONNX)):
            log.info("%s v%s already fine-tuned; not redone", man["name"], man["version"])
            with open(os.path.join(final, METRICS)) as f:
                return {"folder": final, "metrics": json.load(f), "stages": [], "runtime": None}
        partial = os.path.join(os.path.dirname(final), ".v{}.partial".format(man["version"]))
        if os.path.isdir(partial):
            shutil.rmtree(partial)  # an interrupted fine-tune restarts from the shipped encoders
        config = self.config() if callable(self.config) else self.config
        config = config or Stage2Config(**STAGE2_PRESETS["cosmo-har"])
        own = stored_windows(self.state_dir) if config.unlabeled_weight > 0 else {}
        ft = _stage(lambda: run_finetune(model_dir, self.labels_dir, partial, config, progress=False,
                                         extra_unlabeled=own), self.meter)
        metrics = ft["result"]
        ex = _stage(lambda: export_finetuned(metrics["model"], man, partial), self.meter)
        shutil.copyfile(os.path.join(model_dir, ENCODERS), os.path.join(partial, ENCODERS))
        man_out = dict(man, files=list(man.get("files", [])) + [ex["result"]],
                       finetune={"val": metrics["val"], "test": metrics.get("test"), "edge_id": self.edge_id})
        write_json(os.path.join(partial, MANIFEST), man_out)
        vr = _stage(lambda: self._verify(partial, metrics["val"]["accuracy"]), self.meter)
        rt, onnx_acc = vr["result"]
        summary = {"val": metrics["val"], "test": metrics.get("test"), "best_epoch": metrics["best_epoch"],
                   "onnx_val_accuracy": onnx_acc, "labeled_windows": metrics["labeled_windows"]}
        write_json(os.path.join(partial, METRICS), summary)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(partial, final)
        rt.model_dir = final  # the session holds the model in memory; its folder moved
        stages = [("finetune", ft), ("export", ex), ("verify", vr)]
        return {"folder": final, "metrics": summary, "stages": [dict(s, stage=n, result=None) for n, s in stages],
                "runtime": rt}

    def _verify(self, folder: str, torch_val_accuracy: float) -> Any:
        """Load the exported model the way serving will, and check it on the validation windows; returns
        ``(runtime, accuracy)``: the runtime that passed is the one swapped in."""
        from .finetune import load_split
        rt = self._load(folder)
        val = load_split(self.labels_dir, "val")
        assert val is not None
        out = rt.predict(dict(val.x))
        acc = float((out["label"] == val.labels).mean())
        if abs(acc - torch_val_accuracy) > 0.01:
            raise CosmoError("{}: ONNX model gives validation accuracy {:.4f}, torch gave {:.4f}; not swapped in"
                             .format(folder, acc, torch_val_accuracy))
        return rt, acc

    def _load(self, folder: str) -> Runtime:
        return Runtime.load(folder, require_gpu=self.require_gpu, settings=self.settings)

    def swap_to(self, folder: str, rt: Optional[Runtime] = None) -> Runtime:
        """Make ``folder`` the serving model (``rt``: its runtime, already loaded; else it is loaded now);
        the previous one goes into the history."""
        rt = rt or self._load(folder)
        with self._lock:
            self.holder.swap(rt)
            st = self.state()
            cur = {"name": rt.name, "version": int(rt.version), "path": os.path.abspath(folder)}
            if st.get("serving") and st["serving"] != cur:
                st["history"] = (st.get("history") or []) + [st["serving"]]
            st["serving"] = cur
            self._write_state(st)
        log.info("serving %s v%s on %s", rt.name, rt.version, rt.provider)
        return rt

    def load_serving(self) -> Optional[Runtime]:
        """Serve what state.json names (after a restart, a rollback, a personalization in another process);
        None when nothing is installed yet. The state is read and the runtime swapped under the agent's lock,
        and a state that changed while the model loaded is left to the next call, so this never undoes a
        concurrent ``swap_to``."""
        with self._lock:
            s = self.state().get("serving")
            if not s:
                return None
            cur = self.holder.get()
            if cur is not None and _names(cur, s):
                return cur
        rt = self._load(s["path"])
        with self._lock:
            if self.state().get("serving") != s:
                return self.holder.get()
            self.holder.swap(rt)
        log.info("serving %s v%s on %s (from %s)", rt.name, rt.version, rt.provider, STATE)
        return rt

    def report(self, man: Dict[str, Any], stages: List[Dict[str, Any]], metrics: Dict[str, Any]) -> None:
        if self.channel is None:
            return
        rt = self.holder.get()
        req = pb.ReportMetricsRequest(edge_id=self.edge_id, name=man["name"], version=int(man["version"]),
                                      device=_device_string(), execution_provider=rt.provider if rt else "")
        for s in stages:
            req.stages.add(stage=s["stage"], wall_seconds=s["wall_seconds"], cpu_seconds=s["cpu_seconds"],
                           energy_joules=s["energy_joules"], energy_source=s["energy_source"])
        for k in ("accuracy", "macro_f1"):
            if metrics.get("val"):
                req.metrics["val_" + k] = float(metrics["val"][k])
            if metrics.get("test"):
                req.metrics["test_" + k] = float(metrics["test"][k])
        try:
            ModelRegistryStub(self.channel).ReportMetrics(req, timeout=10)
        except grpc.RpcError as e:
            log.warning("ReportMetrics failed (%s); continuing", e.code())

    def update(self, version: Optional[int] = None) -> Dict[str, Any]:
        """pull -> finetune -> export -> verify -> swap -> report, for ``version`` (default: latest)."""
        p = self.pull(version)
        f = self.finetune(p["folder"])
        self.swap_to(f["folder"], f["runtime"])
        self.report(p["manifest"], [dict(p["stage"], stage="download")] + f["stages"], f["metrics"])
        return {"version": int(p["manifest"]["version"]), "metrics": f["metrics"]}

    def rollback(self) -> Dict[str, Any]:
        """Serve the previous version again (it is still on disk)."""
        with self._lock:
            st = self.state()
            hist = st.get("history") or []
            if not hist:
                raise CosmoError("nothing to roll back to: {} has no previous version".format(
                    os.path.join(self.state_dir, STATE)))
            prev = hist.pop()
            st["serving"], st["history"] = prev, hist
            self._write_state(st)
        return prev

    # ---------------------------------------------------------------------------- aligned model
    def install_aligned(self, folder: str) -> AlignedRuntime:
        """Load the aligned model in ``folder`` (checked) and install it; recorded in state.json. A
        folder that fails to load leaves the installed model in place."""
        art = AlignedRuntime.load(folder)
        holder = self.aligned
        with self._lock:
            holder.swap(art)
            st = self.state()
            st["aligned"] = {"name": art.name, "version": int(art.version), "path": os.path.abspath(folder)}
            self._write_state(st)
        log.info("aligned model %s v%s installed (%s); search index %d/%d windows", art.name, art.version,
                 art.provider, holder.index.size if holder.index else 0, self.index_capacity)
        return art

    def load_aligned(self) -> Optional[AlignedRuntime]:
        """Install the aligned model state.json names (after a restart); None when there is none."""
        s = self.state().get("aligned")
        if not s:
            return None
        cur = self.aligned.get()
        if cur is not None and (cur.name, int(cur.version)) == (s["name"], int(s["version"])):
            return cur
        return self.install_aligned(s["path"])

    def update_aligned(self, version: Optional[int] = None) -> Dict[str, Any]:
        """Pull ``aligned_model`` v``version`` (default: latest) and install it."""
        if self.channel is None:
            raise CosmoError("pulling the aligned model needs --cloud HOST:PORT")
        if not self.aligned_model:
            raise CosmoError("no aligned model name given (--aligned-model NAME)")
        st = _stage(lambda: pull(self.channel, self.aligned_model, os.path.join(self.state_dir, "models"),
                                 version=version, alias=None if version else "latest"), self.meter)
        folder, man = st["result"]
        art = self.install_aligned(folder)
        return {"folder": folder, "version": int(art.version), "manifest": man, "stage": dict(st, result=None)}

    def _is_newer_aligned(self, version: int) -> bool:
        s = self.state().get("aligned")
        return s is None or s["name"] != self.aligned_model or version > int(s["version"])

    # ------------------------------------------------------------------------------------- loop
    def run(self, stop: threading.Event, backoff_max_s: float = 30.0, poll_state_s: float = 1.0,
            retry_failed_s: float = 300.0) -> None:
        """Follow WatchModels (reconnecting with exponential backoff) and update on each new version.

        A version whose update failed (corrupt download, failed verification) is not retried for
        ``retry_failed_s`` seconds; the serving model is untouched either way. With ``aligned_model``,
        a second thread follows that model the same way (pull -> load -> install)."""
        if self.channel is None:
            raise CosmoError("run needs --cloud HOST:PORT")
        for name in [self.model_name] + ([self.aligned_model] if self.aligned_model else []):
            try:
                ModelRegistryStub(self.channel).GetManifest(pb.GetManifestRequest(name=name, alias="latest"),
                                                            timeout=10)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    log.warning("model %r is not in the registry (yet): watching for its first version", name)
        try:
            self.load_serving()
        except CosmoError as e:
            log.error("cannot serve the installed model: %s", e)
        watcher = threading.Thread(target=self._watch_state, args=(stop, poll_state_s), daemon=True)
        watcher.start()
        if self.aligned_model:
            try:
                self.load_aligned()
            except (CosmoError, OSError) as e:
                log.error("cannot load the installed aligned model: %s", e)
            threading.Thread(target=self._follow, name="follow-aligned", daemon=True,
                             args=(stop, self.aligned_model, self._is_newer_aligned, self.update_aligned,
                                   backoff_max_s, retry_failed_s)).start()
        self._follow(stop, self.model_name, self._is_newer, self.update, backoff_max_s, retry_failed_s)

    def _follow(self, stop: threading.Event, name: str, is_newer: Callable[[int], bool],
                update: Callable[[int], Any], backoff_max_s: float, retry_failed_s: float) -> None:
        """Follow WatchModels for ``name`` until ``stop``; ``update(v)`` for each version ``is_newer``."""
        failed = {}  # type: Dict[int, float]
        backoff = 0.5
        while not stop.is_set():
            stream = None
            try:
                stream = ModelRegistryStub(self.channel).WatchModels(
                    pb.WatchModelsRequest(name=name, send_current=True))
                threading.Thread(target=_cancel_on, args=(stop, stream), daemon=True).start()
                for ev in stream:
                    backoff = 0.5
                    if ev.kind not in (pb.ModelEvent.PUBLISHED, pb.ModelEvent.CURRENT):
                        continue
                    v = int(ev.version)
                    if not is_newer(v) or time.time() - failed.get(v, -1e9) < retry_failed_s:
                        continue
                    try:
                        update(v)
                    except (CosmoError, OSError, grpc.RpcError) as e:
                        failed[v] = time.time()
                        detail = "{}: {}".format(e.code().name, e.details()) if isinstance(e, grpc.RpcError) else e
                        log.error("update of %s to v%s failed, the current model keeps serving (retry in %.0f s): "
                                  "%s", name, v, retry_failed_s, detail)
            except grpc.RpcError as e:
                if stop.is_set():
                    break
                log.warning("registry watch of %s interrupted (%s); reconnecting in %.1f s", name, e.code(), backoff)
                stop.wait(backoff)
                backoff = min(backoff_max_s, backoff * 2)

    def _is_newer(self, version: int) -> bool:
        s = self.state().get("serving")
        return s is None or s["name"] != self.model_name or version > int(s["version"])

    def _watch_state(self, stop: threading.Event, every: float) -> None:
        """Pick up ``edge-agent rollback`` and ``personalize`` (which rewrite state.json) while running."""
        while not stop.wait(every):
            try:
                self.load_serving()
            except (CosmoError, OSError, ValueError) as e:
                log.error("state.json names a model that cannot be served: %s", e)


def _names(rt: Runtime, serving: Dict[str, Any]) -> bool:
    """Whether ``rt`` is the model ``serving`` (a state.json entry) names; a personalized copy of a version
    is another model than the version itself."""
    return (rt.name, int(rt.version), os.path.abspath(rt.model_dir)) == (
        serving["name"], int(serving["version"]), os.path.abspath(serving["path"]))


def _cancel_on(stop: threading.Event, call: Any) -> None:
    stop.wait()
    call.cancel()


def _device_string() -> str:
    parts = [os.uname()[1], os.uname()[4]]
    rel = "/etc/nv_tegra_release"
    if os.path.isfile(rel):
        with open(rel) as f:
            parts.append(f.readline().strip()[:60])
    return " ".join(parts)
