"""``edge-agent``: the device side's command line.

Subcommands:
  export    ONNX export of a fine-tuned model (checked against torch at batch 1 and 8).
  run       the daemon: follow the cloud registry (WatchModels), pull each new version, fine-tune it on
            the local labels, export and verify ONNX, hot-swap it into the Inference service, report
            timings and accuracy to the cloud; with --aligned-model NAME also follows that aligned
            (IMU <-> text) model, for Embed in the text space and Search.
  pull      download a version into the state folder (resumable, sha256-verified, atomic).
  serve     serve the installed model (Inference gRPC service) without following the cloud
            (--aligned-dir FOLDER: also an aligned model folder, for Search).
  search    client: the windows most similar to a text ("walking upstairs"), from the Search RPC.
  info      installed versions, the serving one, the execution provider in use.
  rollback  serve the previous version again.
  labels    write a device's labeled / validation / test windows from a dataset (the demo's stand-in
            for labels collected on the device; same split and sampling as the cloud's hold-out).
  finetune  Cosmo stage 2 on the device's labeled windows, starting from shipped stage-1 encoders.
"""
import argparse
import os
import sys
import time
from typing import Any, List, Optional

from shared.errors import CosmoError

# Serving commands (serve, predict, search, info, rollback, the serving half of run) import no torch:
# training modules are imported inside the commands and agent steps that fine-tune.


def cmd_finetune(a: argparse.Namespace) -> int:
    from shared.config import load_config
    from shared.hparams import STAGE2_PRESETS, Stage2Config

    from .finetune import run_finetune, summarize
    overrides = {"epochs": a.epochs, "t_iter": a.t_iter, "encoder_lr": a.encoder_lr,
                 "classifier_lr": a.classifier_lr, "seed": a.seed, "fusion": a.fusion, "lam": a.lam,
                 "schedule": a.schedule, "device": a.device, "modality_dropout": a.modality_dropout,
                 "selection": a.selection, "unlabeled_weight": a.unlabeled_weight, "threshold": a.threshold}
    cfg = load_config(Stage2Config, a.config, overrides, base=STAGE2_PRESETS[a.preset])
    m = run_finetune(a.model, a.labels, a.out, cfg, pretrained=a.pretrained, use_quality=not a.no_quality,
                     progress=not a.no_progress)
    print(summarize(m))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    """ONNX export of a fine-tuned model (``finetune --out DIR``) with the parity checks of the agent."""
    import json
    import shutil

    from shared.contract import ENCODERS, FINETUNED, MANIFEST
    from shared.manifest import read_manifest

    from .export import export_finetuned
    from shared.models.finetuned import load_finetuned
    man = read_manifest(a.model)
    model = load_finetuned(os.path.join(a.finetuned, FINETUNED), os.path.join(a.model, ENCODERS),
                           list(man["input_schema"]), len(man["classes"]))
    entry = export_finetuned(model, man, a.finetuned)
    shutil.copyfile(os.path.join(a.model, ENCODERS), os.path.join(a.finetuned, ENCODERS))
    with open(os.path.join(a.finetuned, MANIFEST), "w") as f:
        json.dump(dict(man, files=list(man["files"]) + [entry]), f, indent=2, sort_keys=True)
    print("wrote {} ({} bytes, sha256 {}); `edge-agent serve` can serve {} once it is installed".format(
        os.path.join(a.finetuned, entry["path"]), entry["size"], entry["sha256"][:12], a.finetuned))
    return 0


def cmd_labels(a: argparse.Namespace) -> int:
    from shared.data import load_named
    from shared.experiment import prepare
    if a.label_rate is None and a.labels_per_class is None:
        a.label_rate = 0.01
    prep = prepare(load_named(a.dataset), label_rate=a.label_rate, labels_per_class=a.labels_per_class,
                   seed=a.seed, split_seed=a.split_seed)
    os.makedirs(a.out, exist_ok=True)
    for name, ds in (("labeled", prep.labeled), ("unlabeled", prep.unlabeled), ("val", prep.split.val),
                     ("test", prep.split.test)):
        ds.save(os.path.join(a.out, name))
        print("{}: {} windows, subjects {}".format(name, len(ds), sorted(set(ds.subjects.tolist()))))
    return 0


def _agent(a: argparse.Namespace, channel: bool = True, existing: bool = False) -> Any:
    """The agent of ``--state-dir``; ``existing``: the folder must exist already (commands that only read
    it), else it is created (and said so)."""
    from shared.client import connect_link

    from .agent import Agent
    from .runtime import SessionSettings

    def config() -> Any:  # built when a fine-tune runs (training imports torch)
        from shared.config import load_config
        from shared.hparams import STAGE2_PRESETS, Stage2Config
        return load_config(Stage2Config, getattr(a, "config", None), {
            "seed": getattr(a, "seed", None), "epochs": getattr(a, "epochs", None),
            "modality_dropout": getattr(a, "modality_dropout", None), "selection": getattr(a, "selection", None),
            "unlabeled_weight": getattr(a, "unlabeled_weight", None), "threshold": getattr(a, "threshold", None)},
            base=STAGE2_PRESETS[getattr(a, "preset", None) or "cosmo-har"])
    if getattr(a, "config", None) and not os.path.isfile(a.config):
        raise CosmoError("--config {}: file not found".format(a.config))
    ch = connect_link(a, a.cloud) if channel and getattr(a, "cloud", None) else None
    state_dir = os.path.abspath(a.state_dir)
    if not os.path.isdir(state_dir):
        if existing:
            raise CosmoError("--state-dir {}: no such folder (edge-agent run or pull creates it)".format(a.state_dir))
        print("edge-agent: creating the state folder {}".format(state_dir), file=sys.stderr)
    settings = SessionSettings(intra_op_threads=getattr(a, "ort_threads", 0) or 0,
                               graph_optimization=getattr(a, "graph_optimization", None) or "all",
                               spin=not getattr(a, "ort_no_spin", False),
                               engine_cache=None if getattr(a, "no_engine_cache", False)
                               else os.path.join(state_dir, "engine_cache"))
    return Agent(state_dir, getattr(a, "labels", None) or "", channel=ch, model_name=a.name, config=config,
                 edge_id=getattr(a, "edge_id", "") or "", require_gpu=getattr(a, "require_gpu", False),
                 watts=getattr(a, "watts", None) or 5.0, aligned_model=getattr(a, "aligned_model", "") or "",
                 index_capacity=getattr(a, "index_capacity", None) or 10000, settings=settings)


def _serve_until_signal(agent: Any, a: argparse.Namespace, loop: Optional[Any] = None) -> int:
    import signal
    import threading

    from shared.flags import check_metrics_flag
    from shared.rpc.auth import check_exposure, read_token, server_credentials

    from .service import EdgeLimits, EdgeServer
    check_metrics_flag(a.metrics_listen)
    token = read_token(a.listen_token_file, "--listen-token-file")
    tls = server_credentials(a.listen_tls_cert, a.listen_tls_key, a.listen_tls_ca, flag="--listen-tls")
    check_exposure(a.listen, token, tls, a.insecure, token_flag="--listen-token-file", tls_flag="--listen-tls-cert")
    limits = EdgeLimits(**{f: getattr(a, f) for f in _LIMIT_FLAGS})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    user_windows = None
    if a.personal_windows:
        from .personal import UserWindows
        user_windows = UserWindows(agent.state_dir, a.personal_windows)
    server = EdgeServer(agent.holder, a.listen, limits=limits, aligned=agent.aligned, token=token, tls=tls,
                        metrics_listen=a.metrics_listen, user_windows=user_windows)
    port = server.start()
    print("Inference service on {} (port {})".format(a.listen, port), flush=True)
    if server.metrics is not None:
        print("Prometheus metrics on http://{}:{}/metrics".format(server.metrics.httpd.server_address[0],
                                                                  server.metrics_port), flush=True)
    if a.ready_file:
        from shared.files import write_text
        write_text(a.ready_file, str(port))
    try:
        if loop is not None:
            loop(stop)
        else:
            agent._watch_state(stop, 1.0)
    finally:
        server.stop(5)
    return 0


_LIMIT_FLAGS = {
    "max_batch": "windows per Predict/Embed request",
    "max_inflight": "Predict/Embed/Search/Info calls at once; more get RESOURCE_EXHAUSTED",
    "max_streams": "StreamPredict streams open at once; more get RESOURCE_EXHAUSTED",
    "stream_idle_s": "end a stream idle (nothing sent or read) for this many seconds",
    "max_message_bytes": "largest request accepted, in bytes",
    "workers": "threads that run the model",
}


def cmd_run(a: argparse.Namespace) -> int:
    agent = _agent(a)
    return _serve_until_signal(agent, a, loop=agent.run)


def cmd_serve(a: argparse.Namespace) -> int:
    agent = _agent(a, channel=False)
    if agent.load_serving() is None:
        print("edge-agent: no model installed yet in {}; serving FAILED_PRECONDITION until one is".format(
            a.state_dir), file=sys.stderr)
    if a.aligned_dir:
        art = agent.install_aligned(a.aligned_dir)
        print("aligned model {} v{} from {}; search index {} of {} windows".format(
            art.name, art.version, a.aligned_dir, agent.aligned.index.size, agent.index_capacity), flush=True)
    else:
        try:
            agent.load_aligned()
        except (CosmoError, OSError) as e:
            print("edge-agent: the installed aligned model cannot be loaded ({}); Search is off".format(e),
                  file=sys.stderr)
    return _serve_until_signal(agent, a)


def cmd_pull(a: argparse.Namespace) -> int:
    res = _agent(a).pull(version=a.version)
    print("installed {} v{} into {}".format(res["manifest"]["name"], res["manifest"]["version"], res["folder"]))
    return 0


def cmd_info(a: argparse.Namespace) -> int:
    agent = _agent(a, channel=False, existing=True)
    st = agent.state()
    installed = agent.installed()
    if a.name_given and not any(e["name"] == a.name for e in installed):
        raise CosmoError("--name {}: not installed in {} (installed: {})".format(
            a.name, a.state_dir, ", ".join(sorted({e["name"] for e in installed})) or "none"))
    for e in installed:
        mark = "*" if st.get("serving") and st["serving"]["path"] == e["path"] else " "
        print("{} {} v{}  val accuracy {}  {}".format(mark, e["name"], e["version"], e["val_accuracy"], e["path"]))
    rt = agent.load_serving()
    if rt is None:
        print("no model serving")
    else:
        print("serving {} v{} with {} ({})".format(rt.name, rt.version, rt.provider, rt.fallback))
        if os.sep + "personalized" + os.sep in (st.get("serving") or {}).get("path", ""):
            print("  personalized for this device's user: {} (`edge-agent rollback` returns to the fine-tuned "
                  "model)".format(st["serving"]["path"]))
    al = st.get("aligned")
    if al:
        from .agent import INDEX
        from .index import WindowIndex
        print("aligned model {} v{} ({}); search index {} windows ({})".format(
            al["name"], al["version"], al["path"], WindowIndex.stored(os.path.join(a.state_dir, INDEX)),
            os.path.join(a.state_dir, INDEX)))
    return 0


def cmd_rollback(a: argparse.Namespace) -> int:
    prev = _agent(a, channel=False, existing=True).rollback()
    print("now serving {} v{} ({}); a running agent picks it up within a second".format(
        prev["name"], prev["version"], prev["path"]))
    return 0


def cmd_personalize(a: argparse.Namespace) -> int:
    from shared.config import load_config
    from shared.hparams import AdaptConfig

    from .personal import personalize
    if not os.path.isdir(a.labels):
        raise CosmoError("--labels {}: not a folder (it needs val.npz: the verification data)".format(a.labels))
    cfg = load_config(AdaptConfig, None, {f: getattr(a, f) for f in _ADAPT_FLAGS})
    res = personalize(_agent(a, channel=False, existing=True), cfg)
    if not res["adapted"]:
        print("not personalized ({}); the model serving is unchanged".format(res["reason"]))
        return 0
    print("personalized on {} windows of this device's user (top-class confidence {:.3f} -> {:.3f}); accuracy on "
          "--labels val.npz (other people's windows) {:.4f}, ONNX {:.4f}; now serving {}; a running agent picks it up "
          "within a second".format(
              res["windows"], res["confidence_before"], res["confidence_after"], res["val_accuracy"],
              res["onnx_val_accuracy"], res["folder"]))
    return 0


_ADAPT_FLAGS = ("bn_mix", "self_train_epochs", "threshold", "gate", "min_windows", "seed")


def cmd_predict(a: argparse.Namespace) -> int:
    """A client of the Inference service: send saved windows, print predictions and their accuracy."""
    import grpc
    import numpy as np

    from shared.client import connect_link
    from shared.data.dataset import MultimodalDataset
    from shared.rpc import InferenceStub, pb

    from .wire import encode_windows
    ds = MultimodalDataset.load(a.windows)
    idx = np.random.RandomState(a.seed).choice(len(ds), min(a.n, len(ds)), replace=False)
    drop = set(a.drop or [])
    if drop - set(ds.modalities):
        raise CosmoError("--drop {}: {} has no such modality (it has {})".format(
            " ".join(sorted(drop - set(ds.modalities))), a.windows, ", ".join(ds.modalities)))
    if drop >= set(ds.modalities):
        raise CosmoError("--drop: leaves no modality to predict from")
    stub = InferenceStub(connect_link(a, a.server))
    deadline = time.time() + a.wait
    while True:
        try:
            info = stub.Info(pb.InfoRequest(), timeout=5)
            break
        except grpc.RpcError as e:
            if time.time() > deadline or e.code() not in (grpc.StatusCode.FAILED_PRECONDITION,
                                                          grpc.StatusCode.UNAVAILABLE):
                raise
            time.sleep(1.0)
    correct, t0, preds = 0, time.time(), []
    for start in range(0, len(idx), a.batch):
        b = idx[start:start + a.batch]
        req = encode_windows({m: x[b] for m, x in ds.x.items() if m not in drop},
                             {m: ds.specs[m].rate_hz for m in ds.x})
        resp = stub.Predict(req, timeout=30)
        for i, p in zip(b, resp.predictions):
            correct += int(p.label == ds.labels[i])
            preds.append((i, p))
    dt = time.time() - t0
    print("model {} v{} on {} ({}); {} windows of {}{}".format(
        info.model_name, info.model_version, info.provider, info.fallback, len(idx), a.windows,
        " without " + ",".join(sorted(drop)) if drop else ""))
    for i, p in preds[:a.show]:
        print("  window {:5d}: {:<20} (true {:<20}) p={:.2f} beta={}".format(
            i, p.label_name, ds.class_names[ds.labels[i]], max(p.proba), ["{:.2f}".format(v) for v in p.beta]))
    print("accuracy {:.4f} ({}/{}); {:.1f} windows/s over gRPC".format(correct / len(idx), correct, len(idx),
                                                                      len(idx) / dt))
    return 0


def cmd_search(a: argparse.Namespace) -> int:
    """A client of the Search RPC: the indexed windows most similar to a text."""
    import grpc

    from shared.client import connect_link
    from shared.rpc import InferenceStub, pb
    channel = connect_link(a, a.server)
    try:
        resp = InferenceStub(channel).Search(pb.SearchRequest(text=a.text, k=a.k), timeout=a.timeout)
    except grpc.RpcError as e:
        print("edge-agent: search failed: {}: {}".format(e.code().name, e.details()), file=sys.stderr)
        return 1
    finally:
        channel.close()
    print("{} hits of {} indexed windows for {!r} (aligned model {} v{}, text encoder {})".format(
        len(resp.hits), resp.index_size, a.text, resp.model_name, resp.model_version, resp.text_encoder))
    for h in resp.hits:
        print("  window {:6d}  score {:.3f}  {:<20} {}  from {}".format(
            h.window_id, h.score, h.predicted_activity,
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.time)), h.source))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from shared.client import add_link_args
    from shared.flags import add_config_flags, finish_cli, fraction, positive
    from shared.hparams import STAGE2_PRESETS, Stage2Config

    s2 = Stage2Config(**STAGE2_PRESETS["cosmo-har"])  # the defaults --help shows: the default preset's

    def robust(sp: argparse.ArgumentParser) -> None:
        """Stage 2 for graceful sensor loss (README, "Missing sensors": 0.3 and subsets on HAPT) and for
        learning from unlabeled windows (README, "Few labels"); ``--preset`` names the starting point."""
        sp.add_argument("--preset", choices=list(STAGE2_PRESETS), default="cosmo-har",
                        help="named stage-2 configuration the flags and --config change: cosmo-har (pseudo-labels "
                        "on unlabeled windows with distribution alignment, modality dropout, an EMA of the weights, "
                        "250 epochs), labels-only (the labeled windows "
                        "alone, 100 epochs), paper (labels-only, encoders trained first); default cosmo-har")
        add_config_flags(sp, s2, {
            "modality_dropout": (positive(float, zero=True), "probability that a training window loses one modality "
                                 "(0: the paper's Cosmo)"),
            "selection": (("full", "subsets"), "keep the epoch best on validation with every sensor (full) or on "
                          "average over every sensor subset (subsets)"),
            "unlabeled_weight": (positive(float, zero=True), "weight of the pseudo-label consistency on unlabeled "
                                 "windows (LABELS/unlabeled.npz and, for run, this device's stored windows; 0: off)"),
            "threshold": (fraction, "confidence a prediction on an unlabeled window needs to be a pseudo-label")})

    p = argparse.ArgumentParser(prog="edge-agent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level to stderr")
    sub = p.add_subparsers(dest="command")
    f = sub.add_parser("finetune", help="Cosmo stage 2 on local labeled windows")
    f.add_argument("--model", required=True, help="folder with encoders.pt + manifest.json (a pretrain output)")
    f.add_argument("--labels", required=True, help="folder with labeled.npz, val.npz (and optionally test.npz)")
    f.add_argument("--out", required=True, help="where to write finetuned.pt and metrics.json")
    f.add_argument("--config", help="YAML file of Stage2Config keys (the flags below win over it)")
    add_config_flags(f, s2, {
        "epochs": (positive(int), "training epochs"),
        "t_iter": (positive(int), "epochs per phase (encoders, then classifier, alternating)"),
        "encoder_lr": (positive(float), "learning rate of the encoders"),
        "classifier_lr": (positive(float), "learning rate of the classifier"),
        "lam": (float, "weight of the quality prior in the attention, 0..1"),
        "fusion": (("sum", "concat"), "how the attention fuses the modalities"),
        "schedule": (("iterative", "joint", "frozen"), "iterative: Cosmo's alternation"),
        "seed": (int, ""),
        "device": (str, "auto (CUDA when present), cpu or cuda"),
    })
    robust(f)
    f.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="ablation: random encoders of the same architecture instead of the shipped ones")
    f.add_argument("--no-quality", action="store_true", help="ignore the manifest's quality scores")
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=cmd_finetune)
    def common(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--state-dir", required=True, help="the agent's folder (models, fine-tuned versions, state)")
        sp.add_argument("--name", default=None, help="model name in the registry (default cosmo-encoders)")
        return sp

    def cloud(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        add_link_args(sp, "--cloud", None, "cloud-server serve")
        return sp

    def listener(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """The Inference service's address, credentials, limits and ONNX Runtime settings."""
        sp.add_argument("--listen", default="127.0.0.1:50061",
                        help="Inference service address: host:port or unix:/path (created owner/group-only)")
        sp.add_argument("--ready-file", help="write the Inference service's port here once serving")
        sp.add_argument("--listen-token-file", help="require the bearer token in this file on every call but health")
        sp.add_argument("--listen-tls-cert", help="serve TLS with this certificate (and --listen-tls-key)")
        sp.add_argument("--listen-tls-key")
        sp.add_argument("--listen-tls-ca", help="with cert + key: require client certificates signed by this CA")
        sp.add_argument("--insecure", action="store_true",
                        help="allow a --listen address other hosts can reach without a token or TLS")
        from shared.flags import add_field_flags, add_metrics_flag

        from .service import EdgeLimits
        add_field_flags(sp, EdgeLimits(), _LIMIT_FLAGS)
        add_metrics_flag(sp)
        sp.add_argument("--personal-windows", type=positive(int, zero=True), default=0,
                        help="keep the last N windows StreamPredict forms, on the device only, for `edge-agent "
                        "personalize` (default 0: keep none)")
        sp.add_argument("--ort-threads", type=int, default=0,
                        help="ONNX Runtime intra-op threads per inference (0: one per core)")
        sp.add_argument("--ort-no-spin", action="store_true",
                        help="ONNX Runtime's intra-op threads sleep between inferences instead of spin-waiting "
                        "(no core burnt between calls; often a lower tail latency on a small CPU, a higher median)")
        sp.add_argument("--graph-optimization", default="all", choices=["disable", "basic", "extended", "all"],
                        help="ONNX Runtime graph optimization level (default all)")
        sp.add_argument("--no-engine-cache", action="store_true",
                        help="do not cache TensorRT engines in STATE_DIR/engine_cache (rebuilt on every start)")
        return sp

    def client(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        add_link_args(sp, "--server", "127.0.0.1:50061", "the Inference service (edge-agent serve/run)")
        return sp
    r = listener(cloud(common(sub.add_parser("run", help="the daemon: follow the registry, fine-tune, serve"))))
    r.add_argument("--labels", required=True, help="folder with labeled.npz and val.npz (test.npz optional)")
    r.add_argument("--config", help="YAML file of Stage2Config keys (the flags below win over it)")
    add_config_flags(r, s2, {"epochs": (positive(int), "fine-tuning epochs per new version"), "seed": (int, "")})
    robust(r)
    r.add_argument("--edge-id", default="")
    r.add_argument("--require-gpu", action="store_true", help="fail instead of running on CPU")
    r.add_argument("--watts", type=positive(float), default=5.0,
                   help="for the energy estimate reported to the cloud: CPU seconds x this (no meter is read)")
    r.add_argument("--aligned-model", default="",
                   help="also follow this aligned (IMU <-> text) model, e.g. cosmo-aligned: enables Search")
    r.add_argument("--index-capacity", type=int, default=10000,
                   help="windows kept in the search index (STATE_DIR/index.sqlite); the oldest go first")
    r.set_defaults(func=cmd_run, daemon=True)
    pl = cloud(common(sub.add_parser("pull", help="download a version into the state folder")))
    pl.add_argument("--version", type=int, help="default: the latest")
    pl.set_defaults(func=cmd_pull)
    sv = listener(common(sub.add_parser("serve", help="serve the installed model")))
    sv.add_argument("--require-gpu", action="store_true")
    sv.add_argument("--aligned-dir", help="an aligned model folder (manifest kind 'aligned') to install for Search")
    sv.add_argument("--index-capacity", type=int, default=10000,
                    help="windows kept in the search index (STATE_DIR/index.sqlite)")
    sv.set_defaults(func=cmd_serve, daemon=True)
    inf = common(sub.add_parser("info", help="installed versions and the execution provider"))
    inf.set_defaults(func=cmd_info)
    rb = common(sub.add_parser("rollback", help="serve the previous version again"))
    rb.set_defaults(func=cmd_rollback)
    pz = common(sub.add_parser("personalize", help="adapt the serving model to this device's user, from the "
                               "windows kept with --personal-windows (verified, then swapped in)"))
    pz.add_argument("--labels", required=True, help="folder with val.npz (the verification every model passes)")
    from .personal import RECOMMENDED
    add_config_flags(pz, RECOMMENDED, {
        "bn_mix": (positive(float, zero=True), "how far BatchNorm statistics move to the user's, 0..1"),
        "self_train_epochs": (positive(int, zero=True), "epochs of self-training on confident predictions"),
        "threshold": (fraction, "confidence a prediction needs to be a pseudo-label"),
        "gate": (("none", "confidence"), "confidence: keep the adaptation only if the mean confidence does not fall"),
        "min_windows": (positive(int), "fewer stored windows: no adaptation"),
        "seed": (int, ""),
    })
    pz.set_defaults(func=cmd_personalize, **{f: getattr(RECOMMENDED, f) for f in _ADAPT_FLAGS})
    ex = sub.add_parser("export", help="ONNX export (opset 13) of a fine-tuned model, checked against torch")
    ex.add_argument("--model", required=True, help="the pulled version the model was fine-tuned from")
    ex.add_argument("--finetuned", required=True, help="the `finetune --out` folder (gets model.onnx)")
    ex.set_defaults(func=cmd_export)
    pr = client(sub.add_parser("predict", help="client: send saved windows to the Inference service, print accuracy"))
    pr.add_argument("--windows", required=True, help="a saved dataset (.npz), e.g. LABELS/test.npz")
    pr.add_argument("--n", type=positive(int), default=200, help="windows to send (random, seeded)")
    pr.add_argument("--batch", type=positive(int), default=64)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--show", type=int, default=5, help="predictions to print")
    pr.add_argument("--drop", nargs="*", help="leave these modalities out (sensor off)")
    pr.add_argument("--wait", type=positive(float, zero=True), default=0.0,
                    help="seconds to wait for a model to be served")
    pr.set_defaults(func=cmd_predict)
    se = client(sub.add_parser("search", help="client: windows most similar to a text, from the Search RPC"))
    se.add_argument("--text", required=True, help='what to look for, e.g. "walking upstairs"')
    se.add_argument("-k", type=positive(int), default=5, help="hits to print")
    se.add_argument("--timeout", type=float, default=30.0)
    se.set_defaults(func=cmd_search)
    lb = sub.add_parser("labels", help="write labeled/val/test windows for finetune from a dataset")
    lb.add_argument("--dataset", default="hapt")
    lb.add_argument("--out", required=True)
    g = lb.add_mutually_exclusive_group()
    g.add_argument("--label-rate", type=fraction, help="fraction of training windows labeled (default 0.01)")
    g.add_argument("--labels-per-class", type=positive(int), help="labeled windows per class")
    lb.add_argument("--seed", type=int, default=0, help="label sampling seed (use the cloud job's seed)")
    lb.add_argument("--split-seed", type=int, default=0)
    lb.set_defaults(func=cmd_labels)
    finish_cli(p, "edge-agent")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    if hasattr(a, "name"):  # whether --name was given (info checks it), then its default
        a.name_given, a.name = a.name is not None, a.name or "cosmo-encoders"
    from shared.flags import setup_logging
    setup_logging(a.verbose, daemon=getattr(a, "daemon", False))
    if not getattr(a, "func", None):
        p.print_help()
        return 2
    import grpc
    try:
        return int(a.func(a))
    except CosmoError as e:
        print("edge-agent: error: {}".format(e), file=sys.stderr)
        return 2
    except grpc.RpcError as e:  # a failed call to the cloud or the Inference service: one line
        print("edge-agent: error: {}: {}".format(e.code().name, e.details()), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
