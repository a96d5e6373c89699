"""IMU <-> text alignment on the cloud: narrate windows, embed their texts with a frozen text encoder,
train the IMU encoder (``shared.training.align``), evaluate retrieval and zero-shot recognition
(including activities held out of training), and write results + a t-SNE plot.

Modalities are concatenated along channels into one IMU window (acc + gyro -> 6 channels), normalized
with training-subject statistics; texts are described from the raw windows (``narrate``).
"""
import json
import logging
import os
from collections import OrderedDict
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from shared.contract import (ALIGNED_INPUT, ALIGNED_KIND, ALIGNED_ONNX, ALIGNED_OUTPUT, ALIGNED_PT, KIND_CONFIG,
                             KIND_ONNX, KIND_STATE_DICT, PROMPTS)
from shared.data import load_named
from shared.data.dataset import MultimodalDataset
from shared.data.narration import narrate, phrases_for
from shared.data.splits import Normalizer, subject_split
from shared.errors import DataError
from shared.manifest import MANIFEST, file_entry, input_schema, new_manifest
from shared.retrieval import class_map, retrieval_metrics, zero_shot
from shared.text import TextEncoder
from shared.training.align import AlignConfig, embed, train_alignment
from shared.training.common import save_torch_atomic
from shared.config import config_dict
from shared.files import write_json
from shared.hashing import stable_hash

log = logging.getLogger(__name__)


def imu_array(ds: MultimodalDataset) -> np.ndarray:
    """All modalities concatenated along channels ``[N, T, sum C]`` (they must share T)."""
    ts = {a.shape[1] for a in ds.x.values()}
    if len(ts) != 1:
        raise DataError("alignment needs modalities of one window length, got {}".format(sorted(ts)))
    return np.concatenate(list(ds.x.values()), axis=2).astype(np.float32)


def class_prompts(encoder: TextEncoder, class_names: Sequence[str]) -> np.ndarray:
    """One embedding per class: the mean of its phrasings' embeddings, re-normalized."""
    out = []
    for c in class_names:
        e = encoder.encode(phrases_for(c)).mean(0)
        out.append(e / max(float(np.linalg.norm(e)), 1e-12))
    return np.stack(out)


def _tsne_png(emb: np.ndarray, labels: np.ndarray, names: List[str], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    xy = TSNE(n_components=2, random_state=0, init="pca", perplexity=min(30, len(emb) - 1)).fit_transform(emb)
    fig, ax = plt.subplots(figsize=(6, 5))
    for k, n in enumerate(names):
        m = labels == k
        if m.any():
            ax.scatter(xy[m, 0], xy[m, 1], s=6, label=n)
    ax.set_title(title)
    ax.legend(markerscale=3, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cap(ds: MultimodalDataset, n: int, seed: int) -> MultimodalDataset:
    """A seeded random subset of at most ``n`` windows (0: all), in the original order."""
    if n <= 0 or len(ds) <= n:
        return ds
    return ds.subset(np.sort(np.random.RandomState(seed).choice(len(ds), n, replace=False)))


def run_align(out: str, dataset: str, config: AlignConfig, text_encoder: TextEncoder,
              holdout: Sequence[str] = (), pool: int = 320, split_seed: int = 0, plot: bool = True,
              progress: bool = False, max_windows: int = 0,
              on_epoch: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """The whole alignment experiment into ``out``; returns the results dict (also ``results.json``).

    ``max_windows`` > 0 caps every split (train, val, test) at that many windows, a seeded random subset
    of the subject-wise split (a small real run, e.g. for tests)."""
    ds = load_named(dataset)
    unknown = [c for c in holdout if c not in ds.class_names]
    if unknown:
        raise DataError("holdout classes {} not in {}".format(unknown, ds.class_names))
    split = subject_split(ds, seed=split_seed)
    norm = Normalizer.fit(split.train)
    parts = OrderedDict()
    for name, d in (("train", split.train), ("val", split.val), ("test", split.test)):
        nd = narrate(_cap(d, max_windows, config.seed), seed=config.seed)
        parts[name] = (imu_array(norm.apply(nd.data)), nd.texts, nd.data.labels)
    held = [ds.class_names.index(c) for c in holdout]
    keep = ~np.isin(parts["train"][2], held)
    x_tr, t_tr = parts["train"][0][keep], [t for t, k in zip(parts["train"][1], keep) if k]
    vkeep = ~np.isin(parts["val"][2], held)
    x_va, t_va = parts["val"][0][vkeep], [t for t, k in zip(parts["val"][1], vkeep) if k]
    e_tr, e_va = text_encoder.encode(t_tr), text_encoder.encode(t_va)
    res = train_alignment(x_tr, e_tr, x_va, e_va, config, progress=progress, on_epoch=on_epoch)
    model = res["model"]
    x_te, t_te, y_te = parts["test"]
    imu_te, txt_te = embed(model, x_te), text_encoder.encode(t_te)
    rng = np.random.RandomState(0)
    sub = rng.choice(len(x_te), min(pool, len(x_te)), replace=False)
    prompts = class_prompts(text_encoder, ds.class_names)
    zs = zero_shot(imu_te, prompts, y_te, ds.class_names)
    results = {
        "dataset": dataset, "config": config_dict(config), "holdout": list(holdout),
        "class_names": list(ds.class_names),
        "windows": {"train": int(len(x_tr)), "val": int(len(x_va)), "test": int(len(x_te))},
        "text_encoder": text_encoder.name, "best_epoch": res["best_epoch"], "seconds": res["seconds"],
        "retrieval_pool": int(len(sub)),
        "imu2text": retrieval_metrics(imu_te[sub], txt_te[sub]),
        "text2imu": retrieval_metrics(txt_te[sub], imu_te[sub]),
        "class_map_text2imu": class_map(prompts, imu_te, np.arange(len(ds.class_names)), y_te),
        "zero_shot": {"accuracy": zs["accuracy"], "macro_f1": zs["macro_f1"]},
        "history": res["history"],
    }
    if held:
        m = np.isin(y_te, held)
        results["zero_shot_heldout"] = {"accuracy": float((zs["pred"][m] == y_te[m]).mean()), "windows": int(m.sum()),
                                        "classes": list(holdout), "chance": 1.0 / len(ds.class_names)}
        # the classic zero-shot protocol: held-out windows against the held-out prompts only
        among = np.asarray(held)[(imu_te[m] @ prompts[held].T).argmax(1)]
        results["zero_shot_heldout_only"] = {"accuracy": float((among == y_te[m]).mean()), "windows": int(m.sum()),
                                             "chance": 1.0 / len(held)}
        seen = ~m
        results["zero_shot_seen"] = {"accuracy": float((zs["pred"][seen] == y_te[seen]).mean()),
                                     "windows": int(seen.sum())}
    os.makedirs(out, exist_ok=True)
    save_torch_atomic({"format": "cosmo-har/aligned-imu", "state_dict": model.state_dict(),
                       "config": config_dict(config), "text_encoder": text_encoder.name,
                       "modalities": list(ds.modalities), "normalization": norm.to_json(),
                       "class_names": list(ds.class_names), "window": int(x_tr.shape[1]),
                       "channels": int(x_tr.shape[2]), "text_dim": int(e_tr.shape[1]),
                       "input_schema": input_schema(split.train, norm), "dataset": dataset,
                       "holdout": list(holdout)},
                      os.path.join(out, ALIGNED_PT))
    write_json(os.path.join(out, "results.json"), results)
    if plot:
        _tsne_png(imu_te[sub], y_te[sub], ds.class_names, os.path.join(out, "tsne_test.png"),
                  "IMU embeddings of test windows ({}), t-SNE".format(dataset))
    return results


def summary(r: Dict[str, Any]) -> str:
    lines = ["alignment on {} ({} train / {} val / {} test windows; text encoder {}; best epoch {})".format(
        r["dataset"], r["windows"]["train"], r["windows"]["val"], r["windows"]["test"], r["text_encoder"],
        r["best_epoch"])]
    for k in ("imu2text", "text2imu"):
        m = r[k]
        lines.append("{}: R@1 {:.3f}  R@10 {:.3f}  R@50 {:.3f}  MRR {:.3f}  (pool {})".format(
            k, m["R@1"], m["R@10"], m["R@50"], m["MRR"], m["pool"]))
    lines.append("class mAP (prompt -> windows): {:.3f}".format(r["class_map_text2imu"]))
    lines.append("zero-shot: accuracy {:.3f}  macro-F1 {:.3f}".format(r["zero_shot"]["accuracy"],
                                                                   r["zero_shot"]["macro_f1"]))
    if "zero_shot_heldout" in r:
        h = r["zero_shot_heldout"]
        lines.append("zero-shot on activities never seen in training {}: accuracy {:.3f} among all {} prompts "
                     "(chance {:.3f}), {:.3f} among the held-out prompts only (chance {:.3f}) ({} windows); "
                     "seen activities {:.3f}".format(h["classes"], h["accuracy"], len(r["class_names"]), h["chance"],
                                                     r["zero_shot_heldout_only"]["accuracy"],
                                                     r["zero_shot_heldout_only"]["chance"], h["windows"],
                                                     r["zero_shot_seen"]["accuracy"]))
    return "\n".join(lines)


def default_encoder(out: Optional[str]) -> TextEncoder:
    from shared.text import MiniLMTextEncoder
    return MiniLMTextEncoder(cache_path=os.path.join(out, "text_cache.npz") if out else None)


def load_aligned(path: str) -> Any:
    """(AlignModel in eval mode, checkpoint dict) from ``aligned_imu.pt``."""
    import torch

    from shared.models.encoders import build_encoder
    from shared.training.align import AlignModel

    ck = torch.load(path, map_location="cpu")
    cfg = ck["config"]
    enc_cfg = dict(cfg.get("encoder_config") or {})
    enc_cfg.setdefault("window", ck["window"])
    enc_cfg.setdefault("in_channels", ck["channels"])
    model = AlignModel(build_encoder(cfg["encoder"], **enc_cfg), ck["text_dim"])
    model.load_state_dict(ck["state_dict"])
    return model.eval(), ck


def summarize_recording(model_dir: str, text_encoder: TextEncoder, subject: int, out: str,
                        hop_fraction: float = 0.5, min_segment_s: float = 5.0) -> Dict[str, Any]:
    """Summarize every HAPT recording of ``subject``: per-window zero-shot activity -> merged segments ->
    text + timeline PNG, scored against HAPT's own labels (frame and segment accuracy)."""
    from shared.data.hapt import ACTIVITIES, read_hapt_pickle
    from shared.summary import describe, score, segments, window_labels_to_timeline

    model, ck = load_aligned(os.path.join(model_dir, ALIGNED_PT))
    norm = Normalizer.from_json(ck["normalization"])
    names = ck["class_names"]
    prompts = class_prompts(text_encoder, names)
    recs = [r for r in read_hapt_pickle() if r.subject == subject]
    if not recs:
        raise DataError("HAPT has no recordings of subject {}".format(subject))
    os.makedirs(out, exist_ok=True)
    results = []
    for k, rec in enumerate(recs):
        rate = rec.specs["acc"].rate_hz
        w = int(ck["window"])
        hop = max(1, int(round(w * hop_fraction)))
        sig = np.concatenate([(rec.signals[m] - norm.mean[m]) / norm.std[m] for m in ck["modalities"]], 1)
        starts = np.arange(0, sig.shape[0] - w + 1, hop)
        windows = np.stack([sig[s:s + w] for s in starts]).astype(np.float32)
        pred_w = (embed(model, windows) @ prompts.T).argmax(1)
        duration = sig.shape[0] / rate
        pred = window_labels_to_timeline(pred_w, hop / rate, w / rate, duration, rate)
        segs = segments(pred, rate, min_segment_s)
        smoothed = np.concatenate([np.full(int(round((b - a) * rate)), lab) for a, b, lab in segs])[:len(pred)]
        true = np.where((rec.labels >= 0) & (rec.labels < len(ACTIVITIES)), rec.labels, -1)
        sc = score(smoothed, true, rate)
        text = describe(segs, names)
        png = os.path.join(out, "timeline_subject{}_rec{}.png".format(subject, k))
        _timeline_png(true, smoothed, names, rate, png)
        results.append({"recording": k, "duration_s": duration, "summary": text, "png": png, **sc,
                        "segments": len(segs)})
    write_json(os.path.join(out, "summary_subject{}.json".format(subject)), results)
    return {"subject": subject, "recordings": results}


def _timeline_png(true: np.ndarray, pred: np.ndarray, names: List[str], rate: float, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(["#dddddd"] + list(plt.get_cmap("tab10").colors[:len(names)]))
    fig, ax = plt.subplots(figsize=(10, 2.2))
    img = np.stack([true + 1, pred + 1])
    ax.imshow(img, aspect="auto", cmap=cmap, vmin=0, vmax=len(names), interpolation="nearest",
              extent=[0, len(true) / rate, 1.5, -0.5])
    ax.set_yticks([0, 1])
    ax.set_yticklabels(["HAPT labels", "zero-shot"])
    ax.set_xlabel("time (s)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i + 1)) for i in range(len(names))]
    ax.legend(handles, names, ncol=len(names), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 1.45))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# AlignConfig values the CLI and the ``align`` job use unless told otherwise: the winner of
# benchmarks/alignment.py on HAPT (docs/alignment.md): MW2 with LayerNorm (pool 2 so 128-sample windows
# leave 7 GRU steps), InfoNCE alone, batch 32, Adam 1e-3
ALIGN_DEFAULTS = OrderedDict([("encoder", "mw2"), ("encoder_config", {"pool": 2, "norm": "layer"}),
                              ("optimizer", "adam"), ("lr", 1e-3), ("batch_size", 32), ("epochs", 10)])


# ------------------------------------------------------------------------------ publishing to edges
TEXT_FOLDER = "text"
DEFAULT_ALIGNED_NAME = "cosmo-aligned"


def text_encoder_folder(cache_root: str, encoder: Any) -> str:
    """The text encoder exported for edges (ONNX + vocab, ``cloud.text_export``), exported once per
    encoder name under ``cache_root`` and reused by every later version (the blob store dedups it)."""
    from .text_export import export_text_encoder

    folder = os.path.join(cache_root, encoder.name.replace("/", "__"))
    if not os.path.isfile(os.path.join(folder, "text_encoder.json")):  # the export is atomic: json = complete
        log.info("exporting text encoder %s to ONNX into %s", encoder.name, folder)
        export_text_encoder(encoder, folder)
    return folder


def export_aligned(model_dir: str, out: str, text_folder: str, name: str = DEFAULT_ALIGNED_NAME,
                   tolerance: float = 1e-4) -> Dict[str, Any]:
    """A publishable aligned version in ``out`` from a ``run_align`` folder; returns its manifest.

    Files: ``aligned_imu.onnx`` (input ``imu`` [N, T, sum C], every modality normalized with its
    ``input_schema`` statistics and concatenated along channels in schema order; output ``embedding``
    [N, D] unit norm; opset 13, checked against torch within ``tolerance``), ``aligned_imu.pt``,
    ``class_prompts.npy`` ([K, D] zero-shot prompts, embedded with the exported ONNX text encoder, the one
    the edge runs) and ``text/`` (the text encoder). The folder is built beside ``out`` and renamed into
    place, so a failure leaves no half version.
    """
    import torch

    from shared.export import export_onnx
    from shared.text import OnnxTextEncoder

    model, ck = load_aligned(os.path.join(model_dir, ALIGNED_PT))
    if "input_schema" not in ck:
        raise DataError("{}: made by an older cloud-server align (no input_schema); re-run the alignment".format(
            os.path.join(model_dir, ALIGNED_PT)))
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".aligned-", dir=parent)
    try:
        shutil.copyfile(os.path.join(model_dir, ALIGNED_PT), os.path.join(tmp, ALIGNED_PT))
        x = torch.from_numpy(np.random.RandomState(0).randn(4, int(ck["window"]), int(ck["channels"])).astype(np.float32))
        export_onnx(model, [x[:1]], os.path.join(tmp, ALIGNED_ONNX), input_names=[ALIGNED_INPUT], output_names=[ALIGNED_OUTPUT])
        diff = _onnx_parity(os.path.join(tmp, ALIGNED_ONNX), model, x)
        if diff > tolerance:
            raise DataError("{}: ONNX output differs from torch by {:.2e} (> {:.0e})".format(ALIGNED_ONNX, diff,
                                                                                          tolerance))
        shutil.copytree(text_folder, os.path.join(tmp, TEXT_FOLDER))
        text = OnnxTextEncoder(os.path.join(tmp, TEXT_FOLDER))
        if int(text.dim) != int(ck["text_dim"]):
            raise DataError("{}: text encoder is {}-d, the aligned IMU encoder {}-d".format(text_folder, text.dim,
                                                                                         ck["text_dim"]))
        np.save(os.path.join(tmp, PROMPTS), class_prompts(text, ck["class_names"]).astype(np.float32))
        results = {}  # type: Dict[str, Any]
        rpath = os.path.join(model_dir, "results.json")
        if os.path.isfile(rpath):
            with open(rpath) as f:
                results = json.load(f)
        metrics = OrderedDict((k, results[k]) for k in ("imu2text", "text2imu", "zero_shot", "zero_shot_heldout",
                                                        "class_map_text2imu", "seconds", "windows") if k in results)
        metrics["onnx_max_abs_diff"] = diff
        man = new_manifest(name, ck["input_schema"], ck["class_names"], int(ck["text_dim"]),
                           lineage={"dataset": ck.get("dataset"), "config_sha256": stable_hash(ck["config"]),
                                    "config": ck["config"], "holdout": ck.get("holdout", []),
                                    "parent_version": None},
                           metrics=metrics)
        with open(os.path.join(tmp, TEXT_FOLDER, "text_encoder.json")) as f:
            tj = json.load(f)
        man.update(OrderedDict([
            ("kind", ALIGNED_KIND), ("embedding_dim", int(ck["text_dim"])), ("imu_onnx", ALIGNED_ONNX),
            ("imu_input", ALIGNED_INPUT), ("imu_output", ALIGNED_OUTPUT), ("class_prompts", PROMPTS),
            ("text_encoder", {"name": text.name, "dim": int(text.dim), "folder": TEXT_FOLDER,
                              "max_seq_length": int(tj.get("max_seq_length", 256))})]))
        files = [file_entry(tmp, ALIGNED_ONNX, KIND_ONNX), file_entry(tmp, ALIGNED_PT, KIND_STATE_DICT),
                 file_entry(tmp, PROMPTS, "array")]
        for fn in sorted(os.listdir(os.path.join(tmp, TEXT_FOLDER))):
            kind = {".onnx": KIND_ONNX, ".txt": "vocab", ".json": KIND_CONFIG}.get(os.path.splitext(fn)[1], "data")
            files.append(file_entry(tmp, TEXT_FOLDER + "/" + fn, kind))
        man["files"] = files
        write_json(os.path.join(tmp, MANIFEST), man)
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return man


def _onnx_parity(path: str, model: Any, x: Any) -> float:
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(x).numpy()
    got = sess.run([ALIGNED_OUTPUT], {ALIGNED_INPUT: x.numpy()})[0]
    return float(np.abs(want - got).max())


# ------------------------------------------------------------------- IMU -> other modality retrieval
def cross_modal_retrieval(stage1_dir: str, dataset: str = "hapt", split_seed: int = 0, pool: int = 320,
                          seed: int = 0) -> Dict[str, Any]:
    """Retrieval between the modalities of ``dataset`` in the shared space of a Cosmo stage-1 model.

    Stage 1's per-modality projection heads map every modality into one D-dim space (the fused views
    are convex combinations of them), so a window's accelerometer embedding can query the gyroscope
    (or skeleton, on UTD-MHAD) embeddings of a pool of test windows: one positive per query (the same
    window), R@1/10/50 and MRR for every ordered pair of modalities, with the pool size. The same model
    with its random initialization (same seed) is the reference. ``stage1_dir`` holds ``encoders.pt`` and
    ``stage1_last.pt`` (``cloud-server pretrain`` or the accuracy benchmark); the windows are normalized
    with training-subject statistics of the subject-wise split ``split_seed`` (as stage 1 saw them).
    """
    import torch

    from shared.training.stage1 import CHECKPOINT, ENCODERS, Stage1Model, load_encoder_bundle

    path = os.path.join(stage1_dir, CHECKPOINT)
    if not os.path.isfile(path):
        raise DataError("{}: stage-1 checkpoint not found".format(path))
    ck = torch.load(path, map_location="cpu", weights_only=False)
    cfg = ck["config"]
    ds = load_named(dataset)
    if len(ds.modalities) < 2:
        raise DataError("{} has one modality ({}); cross-modal retrieval needs two or more".format(
            dataset, ds.modalities))
    split = subject_split(ds, seed=split_seed)
    test = Normalizer.fit(split.train).apply(split.test)
    sub = np.sort(np.random.RandomState(seed).choice(len(test), min(pool, len(test)), replace=False))
    xs = [torch.from_numpy(np.ascontiguousarray(test.x[m][sub])) for m in test.modalities]

    def pairs(model: Any) -> Dict[str, Any]:
        with torch.no_grad():
            r = model.eval()(xs).numpy()  # [B, M, D], unit norm per modality
        return OrderedDict(("{}->{}".format(a, b), retrieval_metrics(r[:, i], r[:, j]))
                           for i, a in enumerate(test.modalities) for j, b in enumerate(test.modalities) if i != j)
    encs = load_encoder_bundle(os.path.join(stage1_dir, ENCODERS))
    trained = Stage1Model(encs, cfg["proj_dim"], cfg["proj_hidden"])
    # encoders and projection heads; the predictive-coding heads (training-only) play no part in retrieval
    trained.load_state_dict({k: v for k, v in ck["model"].items() if not k.startswith("predictive.")})
    torch.manual_seed(int(cfg.get("seed", 0)))
    fresh = Stage1Model([build_like(e) for e in encs], cfg["proj_dim"], cfg["proj_hidden"])
    return {"dataset": dataset, "stage1": stage1_dir, "epochs": int(ck["epoch"]) + 1, "pool": int(len(sub)),
            "modalities": list(test.modalities), "pretrained": pairs(trained), "random_init": pairs(fresh)}


def build_like(encoder: Any) -> Any:
    """A freshly initialized encoder of the same registry spec."""
    from shared.models.encoders import build_encoder, encoder_spec

    spec = encoder_spec(encoder)
    return build_encoder(spec["name"], **spec["config"])
