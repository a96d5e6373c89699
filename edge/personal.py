"""On-device personalization: the user's own windows, kept on the device, and the step that adapts the
serving model to them.

``UserWindows`` keeps the last ``capacity`` windows that ``StreamPredict`` formed from the device's own
sensor stream (raw, in sensor units, in time order) in ``S/personal/windows.npz`` (mode 0600, written
atomically every ``flush_every`` windows and when the service stops). Nothing sends them anywhere: no RPC
reads them and ``ReportMetrics`` carries counts only. It is off unless the operator asks for it
(``--personal-windows N``), imports no torch, and forgets windows of another model's input schema.

``personalize`` (``edge-agent personalize``) adapts the fine-tuned model behind what serves
(``shared.training.adapt``: BatchNorm statistics moved towards the user's, optional self-training, a
confidence gate), exports it to ONNX and swaps it in only if it passes the same verification as any
fine-tune (the exported model, loaded as serving will load it, reproduces the adapted torch model's
validation accuracy). It lands in ``S/personalized/<name>/v<N>/``; ``edge-agent rollback`` returns to the
fine-tuned model, and a new registry version replaces both.
"""
import logging
import os
import shutil
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, Optional, Tuple

import numpy as np

from shared.contract import ENCODERS, FINETUNED, MANIFEST, METRICS
from shared.errors import CosmoError, DataError
from shared.files import write_json
from shared.hparams import AdaptConfig

log = logging.getLogger(__name__)
# what `edge-agent personalize` does unless told otherwise: the setting chosen on the validation users by
# `python -m benchmarks.personalize` (docs/benchmarks/personalize), never on the users scored
RECOMMENDED = AdaptConfig(bn_mix=0.25, self_train_epochs=0, gate="confidence")
PERSONAL_DIR = "personal"
WINDOWS_FILE = "windows.npz"


class UserWindows(object):
    """A bounded, thread-safe store of one user's raw windows (see the module docstring)."""

    def __init__(self, state_dir: str, capacity: int, flush_every: int = 256) -> None:
        if capacity < 1:
            raise CosmoError("--personal-windows must be >= 1, got {}".format(capacity))
        self.path = os.path.join(state_dir, PERSONAL_DIR, WINDOWS_FILE)
        self.capacity, self.flush_every = int(capacity), max(1, int(flush_every))
        self._lock = threading.Lock()
        self._windows: Deque[Dict[str, np.ndarray]] = deque(maxlen=self.capacity)
        self._shapes: Optional[Tuple[Tuple[str, Tuple[int, ...]], ...]] = None
        self._unsaved = 0
        stored = _read(self.path)
        n = len(next(iter(stored.values()))) if stored else 0
        for i in range(max(0, n - self.capacity), n):
            self._append({m: a[i] for m, a in stored.items()})

    def __len__(self) -> int:
        with self._lock:
            return len(self._windows)

    def _append(self, window: Dict[str, np.ndarray]) -> None:
        shapes = tuple((m, tuple(a.shape)) for m, a in window.items())
        if shapes != self._shapes:
            if self._windows:
                log.info("personal windows: the model's input changed (%s); %d stored windows dropped", shapes,
                         len(self._windows))
            self._windows.clear()
            self._shapes = shapes
        self._windows.append(window)

    def add(self, window: Dict[str, np.ndarray], modalities: Any) -> None:
        """Keep one window (``modality -> [1, T, C]`` or ``[T, C]``) when it has exactly ``modalities``."""
        if list(window) != list(modalities):
            return  # a stream that sent only some sensors: not a window of the user's full schema
        w = {m: np.array(a, np.float32).reshape(a.shape[-2:]) for m, a in window.items()}
        with self._lock:
            self._append(w)
            self._unsaved += 1
            due = self._unsaved >= self.flush_every
        if due:
            self.flush()

    def arrays(self) -> Dict[str, np.ndarray]:
        """The stored windows, oldest first, as ``modality -> [N, T, C]`` (empty dict when none)."""
        with self._lock:
            ws = list(self._windows)
        if not ws:
            return {}
        return {m: np.stack([w[m] for w in ws]) for m in ws[0]}

    def flush(self) -> None:
        """Write the store to disk (atomically, owner-only) if anything changed."""
        with self._lock:
            if not self._unsaved:
                return
            self._unsaved = 0
        arrays = self.arrays()
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _read(path: str) -> Dict[str, np.ndarray]:
    """The windows stored at ``path`` as ``modality -> [N, T, C]`` float32, oldest first (a missing or
    unreadable file: none, and said so)."""
    if not os.path.isfile(path):
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {m: z[m].astype(np.float32) for m in z.files}
        if len({len(a) for a in arrays.values()}) != 1:
            raise ValueError("modalities hold different numbers of windows")
        return arrays
    except (OSError, ValueError, KeyError) as e:
        log.warning("personal windows: %s unreadable (%s); starting empty", path, e)
        return {}


def stored_windows(state_dir: str) -> Dict[str, np.ndarray]:
    """``modality -> [N, T, C]`` raw windows stored under ``state_dir`` (none: ``{}``)."""
    return _read(os.path.join(state_dir, PERSONAL_DIR, WINDOWS_FILE))


def read_user_windows(state_dir: str) -> Dict[str, np.ndarray]:
    """``modality -> [N, T, C]`` raw windows stored under ``state_dir`` (``DataError`` when there are none)."""
    path = os.path.join(state_dir, PERSONAL_DIR, WINDOWS_FILE)
    arrays = _read(path)
    if not arrays or not len(next(iter(arrays.values()))):
        raise DataError("{}: no stored windows (serve with --personal-windows N to keep the windows "
                        "StreamPredict forms)".format(path))
    return arrays


def base_folder(serving_path: str) -> str:
    """The fine-tuned folder behind ``serving_path`` (itself, unless it is a personalized one)."""
    from shared.manifest import read_manifest
    return (read_manifest(serving_path).get("personalization") or {}).get("base") or serving_path


def personalize(agent: Any, config: Any, windows: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, Any]:
    """Adapt the fine-tuned model behind what ``agent`` serves to the stored user windows (``windows``:
    given instead), export, verify and swap in (see the module docstring). Returns ``{"adapted", "reason",
    "folder", "windows", "val_accuracy", "onnx_val_accuracy", ...}``; the serving model is untouched unless
    ``adapted``."""
    from shared.config import config_dict
    from shared.manifest import check_compatible, read_manifest, schema_normalizer
    from shared.models.finetuned import load_finetuned
    from shared.training.adapt import adapt
    from shared.training.common import save_torch_atomic
    from shared.training.stage2 import evaluate

    from .export import export_finetuned
    from .finetune import load_split, raw_windows_dataset
    import torch

    serving = agent.state().get("serving")
    if not serving:
        raise CosmoError("nothing is serving in {}: personalize adapts the installed model".format(agent.state_dir))
    base = base_folder(serving["path"])
    man = read_manifest(base)
    raw = windows if windows is not None else read_user_windows(agent.state_dir)
    n = len(next(iter(raw.values())))
    user = raw_windows_dataset(man, raw, "the stored user windows")
    norm = schema_normalizer(man)
    val = load_split(agent.labels_dir, "val")
    assert val is not None
    check_compatible(man, val, where=os.path.join(agent.labels_dir, "val.npz"))
    model = load_finetuned(os.path.join(base, FINETUNED), os.path.join(base, ENCODERS), list(man["input_schema"]),
                           len(man["classes"]))
    t0 = time.time()
    res = adapt(model, norm.apply(user), config)
    out = {"adapted": bool(res["adapted"]), "reason": res["reason"], "windows": n, "base": base,
           "confidence_before": res.get("confidence_before"), "confidence_after": res.get("confidence_after"),
           "pseudo_labeled": res.get("pseudo_labeled", 0), "adapt_seconds": time.time() - t0}
    if not res["adapted"]:
        log.info("personalization of %s v%s: not adapted (%s)", man["name"], man["version"], res["reason"])
        return out
    adapted = res["model"]
    val_acc = float(evaluate(adapted, norm.apply(val))["accuracy"])
    final = os.path.join(agent.state_dir, "personalized", man["name"], "v{}".format(int(man["version"])))
    partial = os.path.join(os.path.dirname(final), ".v{}.partial".format(int(man["version"])))
    if os.path.isdir(partial):
        shutil.rmtree(partial)
    os.makedirs(partial)
    ck = torch.load(os.path.join(base, FINETUNED), map_location="cpu")
    save_torch_atomic(dict(ck, state_dict=adapted.state_dict()), os.path.join(partial, FINETUNED))
    shutil.copyfile(os.path.join(base, ENCODERS), os.path.join(partial, ENCODERS))
    entry = export_finetuned(adapted, man, partial)
    info = {"base": base, "config": config_dict(config), "windows": n, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                          time.gmtime()),
            "confidence_before": out["confidence_before"], "confidence_after": out["confidence_after"]}
    files = [f for f in man.get("files", []) if f.get("path") != entry["path"]] + [entry]
    write_json(os.path.join(partial, MANIFEST), dict(man, files=files, personalization=info))
    rt, onnx_acc = agent._verify(partial, val_acc)  # CosmoError: not swapped in
    write_json(os.path.join(partial, METRICS), {"val": {"accuracy": val_acc}, "onnx_val_accuracy": onnx_acc,
                                                "personalization": info})
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(partial, final)
    rt.model_dir = final
    agent.swap_to(final, rt)
    out.update(folder=final, val_accuracy=val_acc, onnx_val_accuracy=onnx_acc)
    log.info("personalized %s v%s on %d windows of this user: serving %s", man["name"], man["version"], n, final)
    return out


__all__ = ["UserWindows", "base_folder", "personalize", "read_user_windows", "stored_windows"]
