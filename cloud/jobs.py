"""Training jobs: validated on submit, run in worker processes, progress persisted in the registry.

A job runs pretrain -> quality -> export -> publish (kind ``pretrain``), quality scoring alone (kind
``quality``) or IMU<->text alignment -> evaluation -> ONNX export of the aligned IMU encoder and the text
encoder -> publish (kind ``align``) in a separate process (``spawn``), never in an RPC thread. The worker writes its progress
into the registry's jobs table (SQLite, WAL), so ``GetJob`` and ``WatchJob`` read it from there and it
survives a server restart. Cancelling terminates the worker mid-epoch; stage 1's per-epoch checkpoint
in the job's folder stays, and a job interrupted by a server shutdown resumes from it when re-run.
A worker dies with its server, even one killed with SIGKILL (``_die_with``), so a job has one truth: a
restarted server never finds a worker of its predecessor still running. Submissions are checked in
``cloud.jobspec`` before anything is queued.
"""
import ctypes
import logging
import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
import traceback
from typing import Any, Dict, Optional

from shared.contract import ENCODERS
from shared.errors import ConfigError, clip

from .jobspec import DEFAULT_LABEL_RATE, validate
from .registry import TERMINAL_STATES as TERMINAL
from .registry import Conflict, NotFound, Registry

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


class Busy(Exception):
    """Too many jobs are active (maps to RESOURCE_EXHAUSTED)."""


def _die_with(parent_pid: int) -> None:
    """Make this worker die with its server: the kernel's parent-death signal (Linux), and a watchdog that
    exits once the parent is gone (covers the race before the signal was armed, and other systems). A
    server killed with SIGKILL thus never leaves a worker that could publish while it is down."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _worker(job_id: str, data_dir: str, kind: str, dataset: str, config_json: str, datasets_dir: Optional[str],
            parent_pid: int) -> None:
    """Entry point of the worker process."""
    _die_with(parent_pid)
    from shared.flags import setup_logging
    setup_logging(logging.getLogger().getEffectiveLevel() <= logging.INFO)  # spawned: the server's stderr
    import torch

    from .pipeline import prepare_from, run_pretrain, run_quality

    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    reg = Registry(data_dir)
    work = os.path.join(data_dir, "jobs", job_id)
    os.makedirs(work, exist_ok=True)

    def progress(p: Dict[str, Any]) -> None:
        reg.update_job(job_id, state="RUNNING", progress=p)  # Conflict once cancelled: ends the work
    try:
        v = validate(kind, dataset, config_json, datasets_dir)
        job, cfg, dataset = v["job"], v["resolved"], v["dataset"]
        progress({"stage": "start", "message": "worker pid {}".format(os.getpid())})
        if kind == "pretrain":
            res = run_pretrain(work, dataset, cfg, label_rate=job.get("label_rate"),
                               labels_per_class=job.get("labels_per_class"), split_seed=job.get("split_seed", 0),
                               name=job.get("model_name", "cosmo-encoders"), features=job.get("features", "encoder"),
                               resume=True, progress=False, on_progress=progress)
            progress({"stage": "publish", "message": "publishing {}".format(res["manifest"]["name"])})
            pub = reg.publish_folder(work)
            reg.update_job(job_id, state="SUCCEEDED", model_name=pub["name"], model_version=int(pub["version"]),
                           progress={"stage": "done", "message": "published {} v{}".format(pub["name"], pub["version"]),
                                     "epoch": cfg.epochs, "epochs": cfg.epochs})
        elif kind == "align":
            _align_job(reg, job_id, work, data_dir, dataset, job, cfg, progress)
        else:
            rate = job.get("label_rate", None if "labels_per_class" in job else DEFAULT_LABEL_RATE)
            prep = prepare_from({"dataset": dataset, "label_rate": rate,
                                 "labels_per_class": job.get("labels_per_class"), "seed": cfg.seed,
                                 "split_seed": job.get("split_seed", 0)})
            features = job.get("features", "raw")
            if features == "encoder":
                name, version = job.get("model_name", "cosmo-encoders"), job.get("model_version")
                man = reg.get(name, version=version) if version else reg.get(name, alias="latest")
                path, _, _ = reg.open_blob(man["name"], man["version"], ENCODERS)
                shutil.copyfile(path, os.path.join(work, ENCODERS))
            progress({"stage": "quality", "message": "scoring {} features".format(features)})
            rep = run_quality(work, prep.norm(prep.unlabeled), features, cfg.seed)
            summary = ", ".join("{} q={:.3f} beta={:.3f}".format(m.modality, m.q, b)
                                for m, b in zip(rep.modalities, rep.beta_qom))
            reg.update_job(job_id, state="SUCCEEDED", progress={"stage": "done", "message": summary})
    except Conflict:
        log.info("job %s was cancelled or finished elsewhere; worker stops", job_id)
    except Exception as e:  # the job fails, the worker process ends cleanly
        log.error("job %s failed: %s", job_id, traceback.format_exc())  # a server fault: submit checked the rest
        try:
            reg.update_job(job_id, state="FAILED", error="{}: {}".format(type(e).__name__, e))
        except Conflict:
            pass


def _align_job(reg: Registry, job_id: str, work: str, data_dir: str, dataset: str, job: Dict[str, Any], cfg: Any,
               progress: Any) -> None:
    from .align import (DEFAULT_ALIGNED_NAME, default_encoder, export_aligned, run_align,
                        text_encoder_folder)

    run_dir, version_dir = os.path.join(work, "align"), os.path.join(work, "version")
    progress({"stage": "align", "message": "narrating windows, embedding texts", "epochs": cfg.epochs})

    def epoch_done(row: Dict[str, Any]) -> None:
        progress({"stage": "align", "epoch": row["epoch"] + 1, "epochs": cfg.epochs,
                  "loss": row.get("train_loss", 0.0),
                  "message": "val IMU->text MRR {:.3f}".format(row["val_imu2text"]["MRR"])})
    encoder = default_encoder(run_dir)
    res = run_align(run_dir, dataset, cfg, encoder, holdout=job.get("holdout", ()),
                    split_seed=job.get("split_seed", 0), max_windows=job.get("max_windows", 0), on_epoch=epoch_done)
    progress({"stage": "export", "message": "ONNX export of the aligned IMU encoder and the text encoder"})
    text = text_encoder_folder(os.path.join(data_dir, "text_encoders"), encoder)
    export_aligned(run_dir, version_dir, text, name=job.get("model_name", DEFAULT_ALIGNED_NAME))
    progress({"stage": "publish", "message": "publishing"})
    pub = reg.publish_folder(version_dir)
    zs = res["zero_shot"]["accuracy"]
    reg.update_job(job_id, state="SUCCEEDED", model_name=pub["name"], model_version=int(pub["version"]),
                   progress={"stage": "done", "epoch": cfg.epochs, "epochs": cfg.epochs,
                             "message": "published {} v{} (test IMU->text MRR {:.3f}, zero-shot {:.3f})".format(
                                 pub["name"], pub["version"], res["imu2text"]["MRR"], zs)})


class JobRunner(object):
    """Starts queued jobs in worker processes (at most ``max_jobs`` at once) and watches them."""

    def __init__(self, registry: Registry, data_dir: str, max_jobs: int = 1, max_queued: int = 4,
                 poll_s: float = 0.2, datasets_dir: Optional[str] = None) -> None:
        self.registry, self.data_dir, self.datasets_dir = registry, data_dir, datasets_dir
        self.max_jobs, self.max_queued, self.poll_s = max_jobs, max_queued, poll_s
        self._procs = {}  # type: Dict[str, Any]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ctx = mp.get_context("spawn")
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)

    def start(self) -> "JobRunner":
        self.registry.recover_jobs()
        self._thread.start()
        return self

    def submit(self, kind: str, dataset: str, config_json: str) -> Dict[str, Any]:
        job = validate(kind, dataset, config_json, self.datasets_dir)["job"]
        if kind == "quality" and job.get("features", "raw") == "encoder":  # its model must exist now
            name, version = job.get("model_name", "cosmo-encoders"), job.get("model_version")
            try:
                man = self.registry.get(name, version=version) if version else self.registry.get(name, alias="latest")
            except NotFound as e:
                raise ConfigError("config fields 'model_name'/'model_version': {}".format(e)) from None
            if not any(f["path"] == ENCODERS for f in man["files"]):
                raise ConfigError("config field 'model_name': {} v{} has no encoders.pt to score".format(
                    man["name"], man["version"]))
        with self._lock:
            active = self.registry.list_jobs(states=["QUEUED", "RUNNING"])
            if len(active) >= self.max_jobs + self.max_queued:
                raise Busy("{} jobs are active (limit {} running + {} queued); retry later".format(
                    len(active), self.max_jobs, self.max_queued))
            created = self.registry.create_job(kind, dataset, config_json or "{}")
        for job_id in self.registry.prune_jobs():  # the table stays bounded however fast jobs come and go
            shutil.rmtree(job_dir(self.data_dir, job_id), ignore_errors=True)
        return created

    def cancel(self, job_id: str) -> Dict[str, Any]:
        """Cancel the job ``job_id`` (or a unique prefix of it) names; returns it."""
        with self._lock:
            j = self.registry.get_job(job_id)
            job_id = j["id"]
            if j["state"] in TERMINAL:
                return j
            p = self._procs.pop(job_id, None)
            if p is not None:
                p.terminate()
                p.join(10)
            return self.registry.update_job(job_id, state="CANCELLED", error="cancelled by request")

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # keep the runner alive; the error is logged
                log.exception("job runner tick failed")
            self._stop.wait(self.poll_s)

    def _tick(self) -> None:
        with self._lock:
            for job_id, p in list(self._procs.items()):
                if p.is_alive():
                    continue
                p.join()
                del self._procs[job_id]
                j = self.registry.get_job(job_id)
                if j["state"] not in TERMINAL:
                    self.registry.update_job(job_id, state="FAILED",
                                             error="worker exited with code {}".format(p.exitcode))
            if len(self._procs) >= self.max_jobs:
                return
            while len(self._procs) < self.max_jobs:
                j = self.registry.claim_next_job()  # atomic: QUEUED -> RUNNING, oldest first
                if j is None:
                    break
                self.registry.update_job(j["id"], state="RUNNING", progress={"stage": "starting"})
                p = self._ctx.Process(target=_worker, name="job-" + j["id"][:8],
                                      args=(j["id"], self.data_dir, j["kind"], j["dataset"], j["config_json"],
                                            self.datasets_dir, os.getpid()), daemon=True)
                p.start()
                self._procs[j["id"]] = p
                log.info("job %s (%s on %s) started in pid %s", j["id"], j["kind"], clip(j["dataset"]), p.pid)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop starting jobs; terminate running workers (their last epoch checkpoint stays) and put
        their jobs back in the queue so a restarted server resumes them."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            for job_id, p in list(self._procs.items()):
                p.terminate()
                p.join(timeout)
                j = self.registry.get_job(job_id)
                if j["state"] not in TERMINAL:
                    self.registry.update_job(job_id, state="QUEUED",
                                             progress={"stage": "queued", "message": "interrupted by shutdown; "
                                                       "resumes from its last checkpoint"})
            self._procs.clear()

def job_dir(data_dir: str, job_id: str) -> str:
    return os.path.join(data_dir, "jobs", job_id)


def describe(j: Dict[str, Any]) -> str:
    p = j.get("progress") or {}
    return "{} {} {} epoch {}/{} loss {} {}".format(j["id"][:8], j["state"], p.get("stage", ""), p.get("epoch", "-"),
                                                  p.get("epochs", "-"), p.get("loss", "-"), p.get("message", ""))
