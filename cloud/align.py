"""IMU <-> text alignment on the cloud: narrate windows, embed their texts with a frozen text encoder,
train the IMU encoder (``shared.training.align``), evaluate retrieval and zero-shot recognition
(including activities held out of training), and write results + a t-SNE plot.

Modalities are concatenated along channels into one IMU window (acc + gyro -> 6 channels), normalized
with training-subject statistics; texts are described from the raw windows (``narrate``).
"""
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from shared.data import load_named
from shared.data.dataset import MultimodalDataset
from shared.data.narration import narrate, phrases_for
from shared.data.splits import Normalizer, subject_split
from shared.errors import DataError
from shared.retrieval import class_map, retrieval_metrics, zero_shot
from shared.text import TextEncoder
from shared.training.align import AlignConfig, embed, train_alignment
from shared.training.common import config_dict, save_torch_atomic, write_json

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


def run_align(out: str, dataset: str, config: AlignConfig, text_encoder: TextEncoder,
              holdout: Sequence[str] = (), pool: int = 320, split_seed: int = 0, plot: bool = True,
              progress: bool = False) -> Dict[str, Any]:
    """The whole alignment experiment into ``out``; returns the results dict (also ``results.json``)."""
    ds = load_named(dataset)
    unknown = [c for c in holdout if c not in ds.class_names]
    if unknown:
        raise DataError("holdout classes {} not in {}".format(unknown, ds.class_names))
    split = subject_split(ds, seed=split_seed)
    norm = Normalizer.fit(split.train)
    parts = OrderedDict()
    for name, d in (("train", split.train), ("val", split.val), ("test", split.test)):
        nd = narrate(d, seed=config.seed)
        parts[name] = (imu_array(norm.apply(nd.data)), nd.texts, nd.data.labels)
    held = [ds.class_names.index(c) for c in holdout]
    keep = ~np.isin(parts["train"][2], held)
    x_tr, t_tr = parts["train"][0][keep], [t for t, k in zip(parts["train"][1], keep) if k]
    vkeep = ~np.isin(parts["val"][2], held)
    x_va, t_va = parts["val"][0][vkeep], [t for t, k in zip(parts["val"][1], vkeep) if k]
    e_tr, e_va = text_encoder.encode(t_tr), text_encoder.encode(t_va)
    res = train_alignment(x_tr, e_tr, x_va, e_va, config, progress=progress)
    model = res["model"]
    x_te, t_te, y_te = parts["test"]
    imu_te, txt_te = embed(model, x_te), text_encoder.encode(t_te)
    rng = np.random.RandomState(0)
    sub = rng.choice(len(x_te), min(pool, len(x_te)), replace=False)
    prompts = class_prompts(text_encoder, ds.class_names)
    zs = zero_shot(imu_te, prompts, y_te, ds.class_names)
    results = {
        "dataset": dataset, "config": config_dict(config), "holdout": list(holdout),
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
                                        "classes": list(holdout)}
        seen = ~m
        results["zero_shot_seen"] = {"accuracy": float((zs["pred"][seen] == y_te[seen]).mean()),
                                     "windows": int(seen.sum())}
    os.makedirs(out, exist_ok=True)
    save_torch_atomic({"format": "cosmo-har/aligned-imu", "state_dict": model.state_dict(),
                       "config": config_dict(config), "text_encoder": text_encoder.name,
                       "modalities": list(ds.modalities)}, os.path.join(out, "aligned_imu.pt"))
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
        lines.append("zero-shot on activities never seen in training {}: accuracy {:.3f} ({} windows); "
                     "seen activities {:.3f}".format(h["classes"], h["accuracy"], h["windows"],
                                                     r["zero_shot_seen"]["accuracy"]))
    return "\n".join(lines)


def default_encoder(out: Optional[str]) -> TextEncoder:
    from shared.text import MiniLMTextEncoder
    return MiniLMTextEncoder(cache_path=os.path.join(out, "text_cache.npz") if out else None)
