"""Accuracy and macro-F1 of Cosmo against every baseline, versus the amount of labels and of unlabeled data.

* UCI HAPT (acc + gyro, 6 activities, subject-wise split with split seed 0): label rates 1 %, 2 %, 5 %,
  10 %, 100 % of the training windows;
* seglearn's watch set (subject-wise) and CrowdSignals (phone IMU + watch IMU + heart rate, M = 3,
  time-blocked folds as subjects): 1 %, 5 %, 100 %;
* BasicMotions (acc + gyro, 4 activities): 1, 2, 4 labeled series per class. The archive has no subject
  ids, so the original TRAIN/TEST split (``meta["original_split"]``) is used: test = the 40 TEST series,
  validation = 2 TRAIN series per class (stratified, split seed 0), train = the other 32 TRAIN series;
* methods: Cosmo-HAR (this project's method: stage 1 with its augmented copies, stage 2 starting with
  the classifier), Cosmo (paper) (stage 1 of the ``paper`` preset: fixed fusion grid, no other
  augmentation, SGD 0.01, batch 32; stage 2 training the encoders first, as published; the same stage-2
  budget and validation selection as everyone), SingleModal per modality, DeepSense, AttnSense
  (supervised), CMC and CPC (pretrained, then the Cosmo classifier). ``--methods`` runs a subset;
* Figure 12 of the paper: Cosmo at one fixed label set (``--ratio-setting``) with stage 1 pretrained on
  the unlabeled pool subsampled to ``ratio x`` the labeled count (``--ratios``; ``all`` = the whole pool).

Fair by construction: for each (dataset, seed) every method sees the same splits, the same class-balanced
labeled windows per setting, the same stage-2 ``Stage2Config`` (epochs, batch, learning rates) and model
selection on the validation split only. The pretraining pool (Cosmo stage 1, CMC, CPC) is the training
windows minus the union of the labeled sets of every setting below 100 % of that seed (for the 100 %
setting every training window is labeled, so the pool necessarily overlaps it); each pretraining runs
once per (dataset, seed) and is cached.

Writes ``results.json``, ``report.md``, ``accuracy_vs_labels.png`` and ``unlabeled_ratio.png`` into
``--out``; every run is cached there as JSON (encoders as ``.pt``), so an interrupted benchmark resumes.
The cache is keyed by dataset, seed, setting and method, not by epochs: use a fresh ``--out`` when
changing ``--s1-epochs``/``--s2-epochs``.

    python -m benchmarks.accuracy --out results/accuracy                 # 3 seeds, no step cap (many hours here)
    python -m benchmarks.suite                                           # the suite's full run (capped steps)
    python -m benchmarks.accuracy --out results/accuracy-quick --quick   # a smoke run (about 10 min)
    python -m benchmarks.accuracy --datasets seglearn_watch crowdsignals --seeds 0 1 2 3 4 --settings 1% 5% \
        --s1-epochs 10 --s2-max-steps 500 --ratio-dataset none --out results/accuracy-more
"""
import argparse
import os
import sys
import time
from collections import OrderedDict
from dataclasses import replace
from functools import partial
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch


from cloud.quality import encoder_features, score_quality
from shared.baselines import BASELINES, CMCConfig, CPCConfig, train_baseline
from shared.data.basicmotions import load_basicmotions
from shared.data.dataset import MultimodalDataset
from shared.data.hapt import load_hapt
from shared.data.splits import Normalizer, sample_labels, subject_split
from shared.training.stage1 import CHECKPOINT
from shared.training import (Stage1Config, Stage2Config, accuracy_without, evaluate, finetune, load_encoder_bundle,
                             pretrain)
from shared.config import config_dict
from shared.files import cached_json, write_json
from shared.hparams import STAGE1_PRESETS, STAGE2_PRESETS

from benchmarks.report import paired

# (name, rate, per_class) per dataset
SETTINGS = OrderedDict([
    ("hapt", [("1%", 0.01, None), ("2%", 0.02, None), ("5%", 0.05, None), ("10%", 0.10, None),
              ("100%", 1.0, None)]),
    ("basicmotions", [("1/class", None, 1), ("2/class", None, 2), ("4/class", None, 4)]),
    ("seglearn_watch", [("1%", 0.01, None), ("5%", 0.05, None), ("100%", 1.0, None)]),
    ("crowdsignals", [("1%", 0.01, None), ("5%", 0.05, None), ("100%", 1.0, None)]),
])
QUICK_SETTINGS = {"hapt": ["1%", "5%"], "basicmotions": ["1/class", "4/class"], "seglearn_watch": ["1%", "5%"],
                  "crowdsignals": ["1%", "5%"]}
TITLES = {"hapt": "UCI HAPT (acc + gyro, 6 activities, subject-wise split)",
          "basicmotions": "BasicMotions (acc + gyro, 4 activities, original TRAIN/TEST split)",
          "seglearn_watch": "seglearn watch (smartwatch acc + gyro, 7 shoulder exercises, subject-wise split)",
          "crowdsignals": "CrowdSignals (phone IMU + watch IMU + heart rate, 8 activities, one person, "
                          "time-blocked split)"}
PRETRAINED = ("cmc", "cpc")
SUPERVISED = ("deepsense", "attnsense")
OURS, PAPER = "Cosmo-HAR", "Cosmo (paper)"
COSMOS = (OURS, PAPER)
# Cosmo-HAR without the predictive-coding term of its stage 1 (Stage1Config.predictive = 0): the stage 1
# before the term was chosen on validation (this row's validation accuracy against Cosmo-HAR's)
FUSION_ONLY = "Cosmo-HAR, fusion only"
# the best baseline on HAPT with Cosmo-HAR's stage 2 (pseudo-labels, modality dropout): what that step
# alone gives a baseline, so the table separates it from what the rest of the method gives
CPC_SEMI = "CPC + pseudo-labels"
NOT_BASELINES = COSMOS + (CPC_SEMI, FUSION_ONLY)  # "best baseline" is the best of the others
# stage 1 of each Cosmo (Stage1Config fields over the defaults)
STAGE1 = {"cosmo": STAGE1_PRESETS["cosmo-har"], "cosmo_paper": STAGE1_PRESETS["paper"],
          "cosmo_fusion": dict(STAGE1_PRESETS["cosmo-har"], predictive=0.0)}
STAGE1_DIRS = {"cosmo": "stage1", "cosmo_paper": "stage1_paper", "cosmo_fusion": "stage1_fusion_only"}
# stage 2 of each Cosmo (Stage2Config fields over the run's; the budget stays the run's, equal for all)
BUDGET_FIELDS = ("epochs", "t_iter")
STAGE2 = {k: {f: v for f, v in STAGE2_PRESETS[p].items() if f not in BUDGET_FIELDS}
          for k, p in (("cosmo", "cosmo-har"), ("cosmo_paper", "paper"), ("cosmo_fusion", "cosmo-har"))}


def _slug(name: str) -> str:
    return name.replace("/", "per").replace("%", "pct").replace(" ", "_").replace("(", "").replace(")", "")


def seed_dir(out: str, dataset: str, seed: int) -> str:
    """A seed's folder in an accuracy run's ``--out``: its stage-1 encoders and stage-2 cells
    (``stage2_path``); the other studies reuse runs through it."""
    return os.path.join(out, dataset, "seed{}".format(seed))


def stage2_path(root: str, setting: str, method: str) -> str:
    """The cached stage-2 run of ``method`` at label ``setting`` ("1%", ...) in a seed's folder ``root``
    (``--out/<dataset>/seed<N>``); other studies read an accuracy run's cells through it."""
    return os.path.join(root, "s2_{}_{}.json".format(_slug(setting), _slug(method)))


def prepare_dataset(name: str, seed: int = 0) -> Tuple[MultimodalDataset, MultimodalDataset, MultimodalDataset, str]:
    """Normalized (train, val, test) for ``name`` and a sentence saying how they were split."""
    if name == "hapt":
        ds = load_hapt()
        split = subject_split(ds, seed=seed)
        train, val, test = split.train, split.val, split.test
        how = "subject-wise split (split seed {}): {} train / {} val / {} test subjects".format(
            seed, len(split.train_subjects), len(split.val_subjects), len(split.test_subjects))
    elif name == "basicmotions":
        ds = load_basicmotions()
        orig = np.asarray(ds.meta["original_split"])
        tr_idx, test_idx = np.flatnonzero(orig == "train"), np.flatnonzero(orig == "test")
        rng = np.random.RandomState(seed)
        val_idx = np.sort(np.concatenate([rng.choice(tr_idx[ds.labels[tr_idx] == c], 2, replace=False)
                                          for c in range(ds.num_classes)]))
        tr_idx = np.setdiff1d(tr_idx, val_idx)
        train, val, test = ds.subset(tr_idx), ds.subset(val_idx), ds.subset(test_idx)
        how = ("original TRAIN/TEST split (no subject ids: each series is its own subject); validation = 2 TRAIN "
               "series per class (stratified, split seed {}); {} train / {} val / {} test series".format(
                   seed, len(train), len(val), len(test)))
    elif name in ("seglearn_watch", "crowdsignals"):
        from shared.data import load_named
        ds = load_named(name)
        split = subject_split(ds, seed=seed)
        train, val, test = split.train, split.val, split.test
        unit = "time-folds (each labelled interval cut into 10 consecutive blocks)" if name == "crowdsignals" \
            else "subjects"
        how = "split by {} (split seed {}): {} train / {} val / {} test".format(
            unit, seed, len(split.train_subjects), len(split.val_subjects), len(split.test_subjects))
    else:
        raise SystemExit("unknown dataset {!r}; known: {}".format(name, list(SETTINGS)))
    norm = Normalizer.fit(train)
    return norm.apply(train), norm.apply(val), norm.apply(test), how


def labeled_sets(train: MultimodalDataset, dataset: str, seed: int) -> Tuple[Dict[str, np.ndarray], MultimodalDataset]:
    """The labeled windows (indices into ``train``) of every label setting of ``dataset`` for ``seed``, and
    the unlabeled pool: the training windows outside every labeled set below 100 %, labels removed (what
    stage 1, CMC and CPC pretrain on, and what Cosmo-HAR's stage 2 draws its unlabeled windows from)."""
    all_labeled = OrderedDict((name, sample_labels(train.labels, train.num_classes, rate=rate, per_class=k, seed=seed))
                              for name, rate, k in SETTINGS[dataset])
    held = np.unique(np.concatenate([v for v in all_labeled.values() if len(v) < len(train)]))
    mask = np.ones(len(train), bool)
    mask[held] = False
    unl = train.subset(np.flatnonzero(mask))
    return all_labeled, unl.with_labels(np.full(len(unl), -1, np.int64))


def methods_for(train: MultimodalDataset, only: Optional[List[str]] = None) -> List[Tuple[str, str, Dict[str, Any]]]:
    """(display name, baseline key or "cosmo"/"cosmo_paper", build kwargs) for every method (of ``only``:
    display names)."""
    out = [(OURS, "cosmo", {}), (PAPER, "cosmo_paper", {})]  # type: List[Tuple[str, str, Dict[str, Any]]]
    out += [("SingleModal ({})".format(m), "single_modal", {"modality": m, "out_steps": out_steps_for(train)})
            for m in train.modalities]
    out += [("DeepSense", "deepsense", {}), ("AttnSense", "attnsense", {}), ("CMC", "cmc", {}), ("CPC", "cpc", {})]
    out += [(CPC_SEMI, "cpc", {"stage2": STAGE2["cosmo"]}), (FUSION_ONLY, "cosmo_fusion", {})]
    return [m for m in out if only is None or m[0] in only]


def out_steps_for(ds: MultimodalDataset, layers: int = 4) -> int:
    """The largest encoder ``out_steps`` in (8, 6, 4, 3, 2) that every modality's window pools to evenly
    (8, the default, on HAPT's 128 steps; 6 on BasicMotions' 100); the same for every method."""
    for s in (8, 6, 4, 3, 2):
        ok = True
        for a in ds.x.values():
            t = a.shape[1]
            for _ in range(layers - 1):
                if t // 2 >= s:
                    t //= 2
            ok = ok and t % s == 0
        if ok:
            return s
    raise SystemExit("no encoder out_steps fits windows {}".format([a.shape[1] for a in ds.x.values()]))


def _bs(default: int, n: int) -> int:
    """A pretraining batch that fits a small pool (batches are drop_last)."""
    return max(2, min(default, n))


def _quality(encs: List[torch.nn.Module], unl: MultimodalDataset, num_classes: int, seed: int) -> Dict[str, Any]:
    try:
        return score_quality(encoder_features(encs, unl), num_classes, seed=seed).to_json()
    except Exception as e:  # tiny pools (BasicMotions, small ratios): fall back to a uniform prior
        return {"q": [1.0] * len(encs), "fallback": "uniform ({}: {})".format(type(e).__name__, e)}


# Stage1Config fields added after some runs were cached, with the value that reproduces those runs
_LEGACY_STAGE1 = {"predictive": 0.0, "predictive_steps": 4}


def check_stage1_cache(unl: MultimodalDataset, cfg: Stage1Config, out: str) -> None:
    """A stage 1 cached in ``out`` must have been made with ``cfg`` (its checkpoint records the config):
    otherwise a one-line error, never a silent reuse of other encoders (e.g. after a default changed)."""
    ck = os.path.join(out, CHECKPOINT)
    if not os.path.isfile(ck):
        return
    made = dict(_LEGACY_STAGE1, **(torch.load(ck, map_location="cpu", weights_only=False).get("config") or {}))
    want = config_dict(replace(cfg, batch_size=_bs(cfg.batch_size, len(unl))))
    diff = [k for k in want if k != "device" and made.get(k) != want[k]]
    if diff:
        raise SystemExit("{}: the cached stage 1 was made with other {} ({}); use another --out or move it "
                         "away".format(out, ", ".join(diff), ", ".join("{}={} here".format(k, want[k]) for k in diff)))


def _stage1(unl: MultimodalDataset, cfg: Stage1Config, out: str) -> Dict[str, Any]:
    res = pretrain(unl, replace(cfg, batch_size=_bs(cfg.batch_size, len(unl))), out, progress=False)
    return {"seconds": res["seconds"], "loss": res["history"][-1]["loss"], "windows": len(unl)}


def _pretrain_baseline(key: str, unl: MultimodalDataset, epochs: int, seed: int, path: str) -> Dict[str, Any]:
    cls = CMCConfig if key == "cmc" else CPCConfig
    cfg = cls(epochs=epochs, seed=seed, out_steps=out_steps_for(unl))
    cfg = replace(cfg, batch_size=_bs(cfg.batch_size, len(unl)))
    hist = []  # type: List[Dict[str, Any]]
    t0 = time.time()
    encs = BASELINES[key].pretrain(unl, cfg, progress=False, on_epoch=hist.append)
    torch.save(encs, path)
    return {"seconds": time.time() - t0, "loss": hist[-1].get("loss") if hist else None, "windows": len(unl)}


def _load_modules(path: str) -> List[torch.nn.Module]:
    return torch.load(path, map_location="cpu", weights_only=False)


def _result(res: Dict[str, Any], test: MultimodalDataset, lab: MultimodalDataset) -> Dict[str, Any]:
    t = evaluate(res["model"], test)
    out = {k: t[k] for k in ("accuracy", "macro_f1")}
    if len(test.modalities) > 1 and getattr(res["model"], "encoders", None) is not None and \
            len(res["model"].encoders) == len(test.modalities):  # multimodal: each sensor switched off in turn
        out["without"] = accuracy_without(res["model"], test)
    return {"val": {k: res["val"][k] for k in ("accuracy", "macro_f1")},
            "test": out, "best_epoch": res["best_epoch"],
            "seconds": res["seconds"], "labeled": len(lab),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"}


def budget(cfg: Stage2Config, labeled: int, max_steps: int) -> Stage2Config:
    """The stage-2 config of one label setting: ``cfg.epochs``, capped so that the run takes at most
    about ``max_steps`` optimizer steps (0: no cap) but at least 4 epochs; ``t_iter`` shrinks with a capped
    run (``epochs // 4``, at least 1) so the iterative schedule still alternates encoder and classifier
    epochs. The same for every method of a setting, so the budget stays equal."""
    if max_steps <= 0:
        return cfg
    per_epoch = max(1, -(-labeled // cfg.batch_size))
    epochs = min(cfg.epochs, max(4, -(-max_steps // per_epoch)))
    return replace(cfg, epochs=epochs, t_iter=max(1, min(cfg.t_iter, epochs // 4)))


def train_method(key: str, kw: Dict[str, Any], enc_path: Optional[str], q: Optional[List[float]],
                 lab: MultimodalDataset, val: MultimodalDataset, cfg: Stage2Config,
                 unl: Optional[MultimodalDataset] = None) -> Dict[str, Any]:
    """One method's stage 2 / supervised run (``finetune``'s or ``train_baseline``'s result, the model
    included); ``unl``: the unlabeled pool, which the stage-2 configurations that learn from unlabeled
    windows (``unlabeled_weight`` > 0) draw from."""
    if key in STAGE1:
        assert enc_path is not None
        cfg = replace(cfg, **STAGE2[key])
        return finetune(load_encoder_bundle(enc_path), lab, val, cfg, quality=q, progress=False, unlabeled=unl)
    if key in PRETRAINED:  # what train_baseline does, with the pretrained encoders cached once per seed
        assert enc_path is not None
        cfg = replace(cfg, **kw.get("stage2", {}))
        return finetune(_load_modules(enc_path), lab, val, cfg, quality=q, progress=False, unlabeled=unl)
    return train_baseline(key, lab, val, cfg, progress=False, **kw)


def _run_method(key: str, kw: Dict[str, Any], enc_path: Optional[str], q: Optional[List[float]],
                lab: MultimodalDataset, val: MultimodalDataset, test: MultimodalDataset,
                cfg: Stage2Config, unl: Optional[MultimodalDataset] = None) -> Dict[str, Any]:
    """``train_method``, scored on ``test``."""
    return _result(train_method(key, kw, enc_path, q, lab, val, cfg, unl), test, lab)


def stage1_dir(root: str, key: str) -> str:
    """Where ``pretrained`` keeps the encoders of ``key`` for one seed (``root``: ``OUT/DATASET/seedN``)."""
    return os.path.join(root, STAGE1_DIRS.get(key, key))


def pretrained(key: str, root: str, unl: MultimodalDataset, num_classes: int, epochs: int, seed: int,
               reuse_only: bool = False) -> Tuple[str, List[float]]:
    """The pretrained encoders of ``key`` (``"cosmo"``, ``"cosmo_paper"``, ``"cmc"``, ``"cpc"``) for one
    seed, in this benchmark's layout under ``root`` (``OUT/DATASET/seedN``): their path and quality scores
    ``q``, pretrained on ``unl`` for ``epochs`` and scored unless cached there. ``reuse_only``: a missing
    file is a one-line error instead (another study reusing this run's encoders)."""
    out = stage1_dir(root, key)
    enc, summary = os.path.join(out, "encoders.pt"), os.path.join(out, "summary.json")
    if reuse_only and not os.path.isfile(enc):
        raise SystemExit("--stage1-from: {} not found (run benchmarks.accuracy for that seed first)".format(enc))
    os.makedirs(out, exist_ok=True)
    if os.path.isfile(summary) and not os.path.isfile(enc):
        os.remove(summary)  # a summary whose encoders are gone: pretrain again
    if key in STAGE1:
        cfg = Stage1Config(**dict(STAGE1[key], epochs=epochs, seed=seed, out_steps=out_steps_for(unl)))
        if not reuse_only:  # reused encoders are whatever that run made (its own flags)
            check_stage1_cache(unl, cfg, out)
        cached_json(summary, partial(_stage1, unl, cfg, out))
        load = load_encoder_bundle  # type: Any
    else:
        cached_json(summary, partial(_pretrain_baseline, key, unl, epochs, seed, enc))
        load = _load_modules
    q = cached_json(os.path.join(out, "quality.json"), lambda: _quality(load(enc), unl, num_classes, seed))
    return enc, q["q"]


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/accuracy")
    ap.add_argument("--datasets", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--s1-epochs", type=int, default=Stage1Config().epochs,
                    help="stage-1 epochs; also the CMC and CPC pretraining epochs")
    ap.add_argument("--s2-epochs", type=int, default=Stage2Config().epochs, help="stage-2 epochs, every method")
    ap.add_argument("--s2-max-steps", type=int, default=0,
                    help="cap on stage-2 optimizer steps per run (0: none); see budget()")
    ap.add_argument("--ratio-dataset", default="hapt", help="dataset of the unlabeled-ratio sweep ('none': skip)")
    ap.add_argument("--ratio-setting", default="1%", help="label setting of the unlabeled-ratio sweep")
    ap.add_argument("--ratios", nargs="+", default=["1", "5", "20", "all"],
                    help="unlabeled windows as a multiple of the labeled count ('all': the whole pool)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true",
                    help="HAPT 1%% and 5%%, BasicMotions 1 and 4 per class, 1 seed, few epochs, ratios 1, 5, all")
    ap.add_argument("--no-report", action="store_true", help="run and cache, but write no report")
    ap.add_argument("--report-only", action="store_true", help="run nothing: the report of the runs cached in --out")
    ap.add_argument("--settings", nargs="+", help="only these label settings (e.g. 1%% 5%%; default: every one of "
                    "each dataset)")
    ap.add_argument("--methods", nargs="+", help="only these methods, by table name (e.g. Cosmo-HAR 'Cosmo (paper)' "
                    "AttnSense; SingleModal ones as 'SingleModal (acc)'; default: all); runs into the same --out "
                    "combine, the report marks cells never run")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    settings = OrderedDict((d, list(SETTINGS[d])) for d in a.datasets)
    if a.quick:
        a.seeds, a.s1_epochs, a.s2_epochs, a.ratios = [0], 3, 20, ["1", "5", "all"]
        settings = OrderedDict((d, [s for s in SETTINGS[d] if s[0] in QUICK_SETTINGS[d]]) for d in a.datasets)
    if a.settings:
        settings = OrderedDict((d, [s for s in sets if s[0] in a.settings]) for d, sets in settings.items())
    do_ratio = a.ratio_dataset in settings and any(s[0] == a.ratio_setting for s in settings[a.ratio_dataset]) \
        and not a.report_only
    from tqdm import tqdm

    os.makedirs(a.out, exist_ok=True)
    t_start = time.time()
    data = OrderedDict((d, prepare_dataset(d)) for d in settings)
    if a.methods:
        known = [m for d in settings for m, _, _ in methods_for(data[d][0])]
        unknown = [m for m in a.methods if m not in known]
        if unknown:
            raise SystemExit("--methods: unknown {}; known here: {}".format(unknown, sorted(set(known))))
    n_methods = {d: len(methods_for(data[d][0], a.methods)) for d in settings}
    keys = {k for d in settings for _, k, _ in methods_for(data[d][0], a.methods)}
    if a.ratio_dataset in settings:
        keys.add("cosmo")  # the unlabeled-ratio sweep starts from the main run's pool
    n_pre = len(keys & (set(STAGE1) | set(PRETRAINED)))
    total = sum(len(a.seeds) * (n_pre + len(settings[d]) * n_methods[d]) for d in settings)
    total += len(a.seeds) * sum(r != "all" for r in a.ratios) if do_ratio else 0
    bar = tqdm(total=total, desc="accuracy", unit="run", disable=a.report_only)
    runs = OrderedDict()  # type: Dict[str, Any]
    failures = []  # type: List[str]

    def put(key: str, path: str, fn: Any = None) -> Optional[Dict[str, Any]]:
        """``runs[key]``: the run cached at ``path``, else ``fn()`` (cached); with --report-only or no ``fn``,
        only what is cached."""
        if (a.report_only or fn is None) and not os.path.isfile(path):
            return None
        runs[key] = cached_json(path, fn)
        return runs[key]
    s2cfg = Stage2Config(epochs=a.s2_epochs, fusion="concat")
    for d, sets in settings.items():
        train, val, test, _ = data[d]
        for seed in a.seeds:
            root = seed_dir(a.out, d, seed)
            all_labeled, unl = labeled_sets(train, d, seed)
            # pretraining, once per (dataset, seed)
            enc = {}  # type: Dict[str, str]
            qual = {}  # type: Dict[str, List[float]]
            for key in [k for k in list(STAGE1) + list(PRETRAINED) if k in keys]:
                bar.set_postfix_str("{} seed {} {}".format(
                    d, seed, "stage 1 ({})".format(key) if key in STAGE1 else "{} pretraining".format(key)))
                sub = stage1_dir(root, key)
                enc[key] = os.path.join(sub, "encoders.pt")
                if not a.report_only:  # pretrains and scores unless cached (a cache of another config: an error)
                    pretrained(key, root, unl, train.num_classes, a.s1_epochs, seed)
                put("pretrain|{}|{}|{}".format(d, key, seed), os.path.join(sub, "summary.json"))
                q = put("quality|{}|{}|{}".format(d, key, seed), os.path.join(sub, "quality.json"))
                if q:
                    qual[key] = q["q"]
                bar.update(1)
            # stage 2 / supervised training, every method on the same labels and budget
            cfg = replace(s2cfg, seed=seed)
            for name, _, _ in sets:
                lab = train.subset(all_labeled[name])
                scfg = budget(cfg, len(lab), a.s2_max_steps)
                for disp, key, kw in methods_for(train, a.methods):
                    bar.set_postfix_str("{} seed {} {} {}".format(d, seed, name, disp))
                    path = stage2_path(root, name, disp)
                    try:
                        r = put("{}|{}|{}|{}".format(d, name, disp, seed), path, partial(
                            _run_method, key, kw, enc.get(key), qual.get(key), lab, val, test, scfg, unl))
                        if r:
                            r.setdefault("epochs", scfg.epochs)
                    except Exception as e:  # keep going; the report marks the missing cell
                        failures.append("{} {} {} seed {}: {}: {}".format(d, name, disp, seed, type(e).__name__, e))
                    bar.update(1)
            # Figure 12: Cosmo with stage 1 on a subsampled unlabeled pool
            if do_ratio and d == a.ratio_dataset:
                lab = train.subset(all_labeled[a.ratio_setting])
                for ratio in a.ratios:
                    key = "ratio|{}|{}|{}".format(d, ratio, seed)
                    if ratio == "all":
                        main_run = runs.get("{}|{}|{}|{}".format(d, a.ratio_setting, OURS, seed))
                        if main_run is not None:
                            runs[key] = dict(main_run, unlabeled=len(unl))
                        continue
                    bar.set_postfix_str("{} seed {} unlabeled x{}".format(d, seed, ratio))
                    try:
                        runs[key] = _ratio_run(float(ratio), unl, lab, val, test, train.num_classes, seed, a,
                                               budget(cfg, len(lab), a.s2_max_steps),
                                               os.path.join(root, "ratio{}".format(_slug(ratio))))
                    except Exception as e:
                        failures.append("{} ratio {} seed {}: {}: {}".format(d, ratio, seed, type(e).__name__, e))
                    bar.update(1)
    bar.close()
    if a.no_report:
        return 0
    report = _report(runs, settings, data, a, do_ratio, failures, time.time() - t_start)
    write_json(os.path.join(a.out, "results.json"), {"args": vars(a), "runs": runs, "tables": report["tables"],
                                                     "ratio_table": report["ratio_table"], "failures": failures})
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write(report["markdown"])
    _plot_labels(report["tables"], os.path.join(a.out, "accuracy_vs_labels.png"))
    if report["ratio_table"]:
        _plot_ratio(report["ratio_table"], a, os.path.join(a.out, "unlabeled_ratio.png"))
    print(report["markdown"])
    return 1 if failures else 0


def _sensor_off_lines(d: str, sets: Any, methods: List[str], runs: Dict[str, Any], seeds: List[int],
                      mods: List[str]) -> List[str]:
    """Markdown: test accuracy with one sensor off, per multimodal method, and each Cosmo's against the
    SingleModal baseline of the sensor left (the bar of a sensor that is off), paired by seed."""
    if len(mods) < 2:
        return []
    lines = []  # type: List[str]
    for name, _, _ in sets:
        cells, bars = [], []
        for m in methods:
            rs = [runs.get("{}|{}|{}|{}".format(d, name, m, s)) for s in seeds]
            if all(r is not None and "without" in r["test"] for r in rs):
                cells.append("{}: {}".format(m, ", ".join("{} off {}".format(
                    x, _ms([r["test"]["without"][x] for r in rs])) for x in mods)))
                if m in COSMOS + (FUSION_ONLY,) and len(mods) == 2:
                    for off, left in (mods, mods[::-1]):
                        ref = [runs.get("{}|{}|SingleModal ({})|{}".format(d, name, left, s)) for s in seeds]
                        if all(ref) and len(rs) > 1:
                            p = paired([r["test"]["accuracy"] for r in ref], [r["test"]["without"][off] for r in rs])
                            bars.append("{}, {} off − SingleModal ({}): {:+.1f} [{:+.1f}, {:+.1f}]".format(
                                m, off, left, 100 * p["mean"], 100 * p["ci_low"], 100 * p["ci_high"]))
        if cells:
            lines += ["{}: test accuracy (%) with one sensor switched off (input zeroed, masked out of the "
                      "attention, as the edge serves it): ".format(name) + "; ".join(cells) + ".", ""]
        if bars:
            lines += ["{}: a sensor off against the SingleModal baseline of the sensor left, paired by seed (points, "
                      "95 % CI): ".format(name) + "; ".join(bars), ""]
    return lines


def _ratio_run(ratio: float, unl: MultimodalDataset, lab: MultimodalDataset, val: MultimodalDataset,
               test: MultimodalDataset, num_classes: int, seed: int, a: Any, cfg: Stage2Config, out: str
               ) -> Dict[str, Any]:
    n = int(min(len(unl), max(2, round(ratio * len(lab)))))
    sub = unl.subset(np.sort(np.random.RandomState(seed).choice(len(unl), n, replace=False)))
    s1cfg = Stage1Config(epochs=a.s1_epochs, seed=seed, out_steps=out_steps_for(sub))
    check_stage1_cache(sub, s1cfg, out)
    s1 = cached_json(os.path.join(out, "summary.json"), partial(_stage1, sub, s1cfg, out))
    enc_path = os.path.join(out, "encoders.pt")
    q = cached_json(os.path.join(out, "quality.json"),
                lambda: _quality(load_encoder_bundle(enc_path), sub, num_classes, seed))
    r = cached_json(os.path.join(out, "s2.json"), partial(_run_method, "cosmo", {}, enc_path, q["q"], lab, val, test, cfg,
                                                               sub))
    return dict(r, unlabeled=n, stage1=s1)


def _ms(v: List[float]) -> str:
    if not v:
        return "–"
    return "{:.1f} ± {:.1f}".format(100 * np.mean(v), 100 * np.std(v))


def _report(runs: Dict[str, Any], settings: Any, data: Any, a: Any, do_ratio: bool, failures: List[str],
            seconds: float) -> Dict[str, Any]:
    tables = OrderedDict()  # type: Dict[str, Any]
    devices = sorted({r["device"] for r in runs.values() if isinstance(r, dict) and "device" in r}) or ["?"]
    compute = sum(r.get("seconds", 0.0) for r in runs.values() if isinstance(r, dict))
    compute += sum(r["stage1"]["seconds"] for k, r in runs.items() if k.startswith("ratio|") and "stage1" in r)
    lines = ["# Accuracy of Cosmo-HAR and the paper's Cosmo against the baselines", "",
             "Test accuracy / macro-F1 in %, mean ± std over seeds {} (n per cell in the JSON); pretraining "
             "(Cosmo stage 1, CMC, CPC): {} epochs once per dataset and seed; stage 2 / supervised training: {} epochs{}, "
             "the same Stage2Config for every method of a setting, model chosen on validation; ran on {}: {:.0f} s of "
             "training in all runs (cached ones included), {:.0f} s in this invocation.".format(
                 a.seeds, a.s1_epochs, a.s2_epochs,
                 " capped at about {} optimizer steps per run (at least 4 epochs; column 'epochs')".format(
                     a.s2_max_steps) if getattr(a, "s2_max_steps", 0) else "",
                 ", ".join(devices), compute, seconds), ""]
    for d, sets in settings.items():
        train, _, _, how = data[d]
        methods = [m for m, _, _ in methods_for(train)
                   if any("{}|{}|{}|{}".format(d, name, m, s) in runs for name, _, _ in sets for s in a.seeds)]
        rows = []
        for name, _, _ in sets:
            row = OrderedDict([("setting", name)])  # type: Dict[str, Any]
            for m in methods:
                rs = [runs[k] for k in ("{}|{}|{}|{}".format(d, name, m, s) for s in a.seeds) if k in runs]
                row[m] = {"accuracy": [r["test"]["accuracy"] for r in rs], "macro_f1": [r["test"]["macro_f1"] for r in rs],
                          "labeled": rs[0]["labeled"] if rs else None,
                          "epochs": rs[0].get("epochs", a.s2_epochs) if rs else None,
                          "seconds": [r["seconds"] for r in rs]}
            rows.append(row)
        tables[d] = {"methods": methods, "rows": rows}
        pools = sorted({r["windows"] for k, r in runs.items() if k.startswith("pretrain|{}|".format(d))})
        lines += ["## {}".format(TITLES[d]), "", "Split: {}. Pretraining pool: {} unlabeled windows per seed "
                  "(training windows minus every labeled set below 100 %).".format(how, pools), ""]
        for metric, label in (("accuracy", "Accuracy"), ("macro_f1", "Macro-F1")):
            lines += ["{} (%):".format(label), "",
                      "| labels | windows | epochs | " + " | ".join(methods) + " |",
                      "|---|---|---|" + "---|" * len(methods)]
            for row in rows:
                lab = next((row[m]["labeled"] for m in methods if row[m]["labeled"] is not None), "?")
                ep = next((row[m]["epochs"] for m in methods if row[m]["epochs"] is not None), "?")
                lines.append("| {} | {} | {} | ".format(row["setting"], lab, ep) +
                             " | ".join(_ms(row[m][metric]) for m in methods) + " |")
            lines.append("")
        mods = list(data[d][0].modalities)
        for key, disp in (("cosmo", OURS), ("cosmo_paper", PAPER), ("cosmo_fusion", FUSION_ONLY)):
            qs = [runs.get("quality|{}|{}|{}".format(d, key, sd), {}).get("q") for sd in a.seeds]
            qs = [q for q in qs if q]
            if qs:
                qa = np.asarray(qs, float)
                lines += ["{} stage-1 quality scores q per modality (Hopkins statistic of the encoder features; "
                          "mean ± std over seeds): ".format(disp) + ", ".join(
                              "{} {:.3f} ± {:.3f}".format(m, qa[:, j].mean(), qa[:, j].std())
                              for j, m in enumerate(mods)), ""]
        for ours in COSMOS + (FUSION_ONLY,):
            best = OrderedDict()  # per setting: this Cosmo - the best baseline (by mean), paired by seed
            for row in rows:
                if ours not in row:
                    continue
                means = {m: np.mean(row[m]["accuracy"]) for m in methods
                         if row[m]["accuracy"] and m not in NOT_BASELINES}
                if means and row[ours]["accuracy"]:
                    b = max(means, key=lambda m: means[m])
                    if len(row[b]["accuracy"]) == len(row[ours]["accuracy"]) > 1:
                        best[row["setting"]] = (b, paired(row[b]["accuracy"], row[ours]["accuracy"]))
            if best:
                lines += ["{} − the best baseline, paired by seed (points, 95 % CI): ".format(ours) + "; ".join(
                    "{} vs {}: {:+.1f} [{:+.1f}, {:+.1f}]".format(k, b, 100 * p["mean"], 100 * p["ci_low"],
                                                                100 * p["ci_high"]) for k, (b, p) in best.items()), ""]
        full = next((row for row in rows if row["setting"] == "100%" and row.get("AttnSense", {}).get("accuracy")), None)
        if full is not None:  # the paper's headline: Cosmo with few labels against AttnSense with all of them
            ref = full["AttnSense"]["accuracy"]
            vs = [(m, row["setting"], paired(ref, row[m]["accuracy"])) for row in rows if row is not full
                  for m in COSMOS if m in row and len(row[m]["accuracy"]) == len(ref) > 1]
            if vs:
                lines += ["Against AttnSense with 100 % labels, paired by seed (points, 95 % CI): " + "; ".join(
                    "{} at {}: {:+.1f} [{:+.1f}, {:+.1f}]".format(m, k, 100 * p["mean"], 100 * p["ci_low"],
                                                                100 * p["ci_high"]) for m, k, p in vs), ""]
        for other in (PAPER, CPC_SEMI, FUSION_ONLY):
            both = [(row["setting"], paired(row[other]["accuracy"], row[OURS]["accuracy"])) for row in rows
                    if OURS in row and other in row and len(row[OURS]["accuracy"]) == len(row[other]["accuracy"]) > 1]
            if both:
                lines += ["{} − {}, paired by seed (points, 95 % CI): ".format(OURS, other) + "; ".join(
                    "{}: {:+.1f} [{:+.1f}, {:+.1f}]".format(k, 100 * p["mean"], 100 * p["ci_low"], 100 * p["ci_high"])
                    for k, p in both), ""]
        if FUSION_ONLY in methods:  # the stage-1 choice looks at validation only
            cells = []
            for name, _, _ in sets:
                vs = {m: [runs[k]["val"]["accuracy"] for k in ("{}|{}|{}|{}".format(d, name, m, sd) for sd in a.seeds)
                          if k in runs] for m in (OURS, FUSION_ONLY)}
                if all(vs.values()):
                    cells.append("{}: {} {} vs {} {}".format(name, OURS, _ms(vs[OURS]), FUSION_ONLY, _ms(vs[FUSION_ONLY])))
            if cells:
                lines += ["Stage-1 choice, validation accuracy (%, mean ± std over seeds): " + "; ".join(cells) + ".", ""]
        lines += _sensor_off_lines(d, sets, methods, runs, a.seeds, mods)
    ratio_table = []  # type: List[Dict[str, Any]]
    if do_ratio:
        for ratio in a.ratios:
            rs = [runs[k] for k in ("ratio|{}|{}|{}".format(a.ratio_dataset, ratio, s) for s in a.seeds) if k in runs]
            if rs:
                ratio_table.append({"ratio": ratio, "unlabeled": [r["unlabeled"] for r in rs],
                                    "accuracy": [r["test"]["accuracy"] for r in rs],
                                    "macro_f1": [r["test"]["macro_f1"] for r in rs]})
        lines += ["## Accuracy versus the amount of unlabeled data (cf. the paper's Figure 12)", "",
                  "Cosmo on {} at {} labels; stage 1 on the unlabeled pool subsampled (seeded) to the ratio times the "
                  "labeled count ('all': the whole pool, the run of the table above).".format(
                      a.ratio_dataset, a.ratio_setting), "",
                  "| unlabeled : labeled | unlabeled windows | accuracy | macro-F1 |", "|---|---|---|---|"]
        for r in ratio_table:
            lines.append("| {} | {} | {} | {} |".format(r["ratio"], ",".join(str(u) for u in r["unlabeled"]),
                                                       _ms(r["accuracy"]), _ms(r["macro_f1"])))
        lines.append("")
    if failures:
        lines += ["## Failed runs", ""] + ["* " + f for f in failures] + [""]
    return {"tables": tables, "ratio_table": ratio_table, "markdown": "\n".join(lines)}


def _plot_labels(tables: Dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4), squeeze=False)
    for ax, (d, t) in zip(axes[0], tables.items()):
        x = np.arange(len(t["rows"]))
        for m in t["methods"]:
            acc = [100 * np.mean(r[m]["accuracy"]) if r[m]["accuracy"] else np.nan for r in t["rows"]]
            err = [100 * np.std(r[m]["accuracy"]) if r[m]["accuracy"] else 0 for r in t["rows"]]
            ax.errorbar(x, acc, yerr=err, marker="o", capsize=3, label=m, lw=2.5 if m == OURS else 1.2)
        ax.set_xticks(x)
        ax.set_xticklabels([r["setting"] for r in t["rows"]])
        ax.set_xlabel("labels")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(TITLES[d].split(" (")[0])
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_ratio(rows: List[Dict[str, Any]], a: Any, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(len(rows))
    ax.errorbar(x, [100 * np.mean(r["accuracy"]) for r in rows], yerr=[100 * np.std(r["accuracy"]) for r in rows],
                marker="o", capsize=3, label="accuracy")
    ax.errorbar(x, [100 * np.mean(r["macro_f1"]) for r in rows], yerr=[100 * np.std(r["macro_f1"]) for r in rows],
                marker="s", capsize=3, label="macro-F1")
    ax.set_xticks(x)
    ax.set_xticklabels(["{}\n({})".format(r["ratio"], int(np.mean(r["unlabeled"]))) for r in rows])
    ax.set_xlabel("unlabeled : labeled (unlabeled windows)")
    ax.set_ylabel("test (%)")
    ax.set_title("{}, {} at {} labels".format(OURS, a.ratio_dataset, a.ratio_setting))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
