"""``cloud-server``: the cloud side's command line.

Subcommands:
  serve     the gRPC daemon: model registry (SQLite + blobs under --data-dir) and training jobs.
  pretrain  Cosmo stage 1 on the unlabeled windows of a dataset, quality scoring and ONNX export,
            locally (no daemon); also writes the edge's labeled, validation and test windows.
  quality   (Re)score modality quality for a finished pretrain output.
  submit    submit a job to a running daemon (--wait follows its progress).
  job       show a job; cancel: cancel it.
  models    list published versions; download: fetch one (resumable, sha256-verified, atomic).
"""
import argparse
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional

import grpc

from shared.errors import CosmoError

from shared.flags import finish_cli, positive, setup_logging

from .flags import add_package_args, add_stage1_args

log = logging.getLogger("cloud")


def cmd_pretrain(a: argparse.Namespace) -> int:
    from shared.manifest import MANIFEST
    from shared.training.stage1 import CHECKPOINT

    from .pipeline import run_pretrain, stage1_config
    cfg = stage1_config(a)
    if not a.resume and os.path.exists(os.path.join(a.out, CHECKPOINT)):
        os.remove(os.path.join(a.out, CHECKPOINT))

    def show(p: Dict[str, Any]) -> None:
        if p["stage"] == "prepare":
            return
        if p["stage"] != "pretrain":
            print(p.get("message", p["stage"]))
    res = run_pretrain(a.out, a.dataset, cfg, label_rate=a.label_rate, labels_per_class=a.labels_per_class,
                       split_seed=a.split_seed, name=a.name, features=a.features, quality=not a.no_quality,
                       onnx=not a.no_onnx, resume=a.resume, progress=not a.no_progress, edge_data=a.edge_data,
                       on_progress=show)
    prep, s1 = res["prepared"], res["stage1"]
    print(prep.norm(prep.unlabeled).summary())
    print("split: train subjects {}, val {}, test {}; {} labeled windows held out of pretraining".format(
        prep.split.train_subjects, prep.split.val_subjects, prep.split.test_subjects, len(prep.labeled)))
    print("stage 1: {} epochs ({} run now) in {:.1f} s, final loss {:.4f}".format(
        cfg.epochs, s1["epochs_run"], s1["seconds"], s1["history"][-1]["loss"]))
    if res["quality"] is not None:
        r = res["quality"]
        print("quality ({} features, {} points):\n{}".format(r.features, r.points, r.table()))
    print("wrote {}: {}; edge data in {}".format(
        a.out, ", ".join(f["path"] for f in res["manifest"]["files"]) + ", " + MANIFEST, res["edge_data"]))
    return 0


def cmd_quality(a: argparse.Namespace) -> int:
    from .pipeline import PREPARED, prepare_from, run_quality
    path = os.path.join(a.model, PREPARED)
    if not os.path.isfile(path):
        raise CosmoError("{}: not found; run `cloud-server pretrain` into {} first".format(path, a.model))
    with open(path) as f:
        prep_args = json.load(f)
    prep = prepare_from(prep_args)
    report = run_quality(a.model, prep.norm(prep.unlabeled), a.features, a.seed)
    print("quality ({} features, {} points):\n{}".format(report.features, report.points, report.table()))
    return 0


def _channel(a: argparse.Namespace) -> Any:
    from shared.client import connect_link
    return connect_link(a, a.server)


def cmd_serve(a: argparse.Namespace) -> int:
    from .admission import ServerLimits
    from shared.flags import check_metrics_flag
    from shared.rpc.auth import check_exposure, read_token, server_credentials

    from .registry import InvalidArgument, Retention
    from .server import check_listen, serve
    check_listen(a.listen)
    check_metrics_flag(a.metrics_listen)
    token, tls = read_token(a.token_file), server_credentials(a.tls_cert, a.tls_key, a.tls_ca)
    check_exposure(a.listen, token, tls, a.insecure)
    try:
        limits = ServerLimits(**{f: getattr(a, f) for f in _LIMIT_FLAGS})
        retention = Retention(**{f: getattr(a, f) for f in _RETENTION_FLAGS})
    except InvalidArgument as e:  # e.field is the dataclass field behind the flag
        raise CosmoError("--{}: {}".format(e.field.replace("_", "-"), e.message)) from None
    return serve(a.data_dir, a.listen, token=token, tls=tls, max_jobs=a.max_jobs, grace=a.grace,
                 ready_file=a.ready_file, limits=limits, retention=retention, prune_interval_s=a.prune_interval_s,
                 scrub_interval_s=a.scrub_interval_s, datasets_dir=a.datasets_dir, metrics_listen=a.metrics_listen)


# ``serve`` flags of ServerLimits and Retention fields (defaults and help from the dataclasses)
_LIMIT_FLAGS = {
    "max_rpcs": "unary cosmo calls in flight; more get RESOURCE_EXHAUSTED at once",
    "max_streams": "server streams open (Download, WatchModels, WatchJob)",
    "max_watchers": "WatchModels + WatchJob streams open (one or two per edge agent)",
    "max_downloads": "Download streams open",
    "stream_idle_s": "end a stream whose reader has not taken a message for this many seconds",
    "stream_max_s": "a stream's whole life in seconds (watchers then re-subscribe, downloads resume)",
    "keepalive_s": "HTTP/2 ping interval in seconds on every connection",
    "keepalive_timeout_s": "seconds a peer has to answer a ping before its connection is dropped",
    "max_message_bytes": "largest request message accepted, in bytes",
    "executor_threads": "threads for blocking registry work (SQLite, blob reads)",
}
_RETENTION_FLAGS = {
    "jobs_keep": "finished jobs kept (and their folders)",
    "jobs_max_age_s": "finished jobs older than this many seconds are removed",
    "reports_keep": "edge metric reports kept",
    "reports_max_age_s": "edge metric reports older than this many seconds are removed",
    "events_keep": "rows of the event log kept (it feeds live delivery only)",
    "events_max_age_s": "event log rows older than this many seconds are removed",
}


def _print_job(j: Any) -> None:
    from shared.rpc import pb
    p = j.progress
    state = pb.Job.State.Name(j.state)
    line = "job {} {} [{}]".format(j.id[:8], state, p.stage)
    if p.stage in ("pretrain", "align") and p.epoch:
        line += " epoch {}/{} loss {:.4f}".format(p.epoch, p.epochs, p.loss)
        if p.eta_seconds:
            line += " eta {:.0f} s".format(p.eta_seconds)
    if p.message:
        line += " " + p.message
    if j.error:
        line += " error: " + j.error
    print(line, flush=True)


def cmd_submit(a: argparse.Namespace) -> int:
    from shared.client import submit_job, wait_job
    from shared.rpc import pb
    try:
        config = json.loads(a.config_json) if a.config_json else {}
    except ValueError as e:
        raise CosmoError("--config-json: not valid JSON ({})".format(e)) from None
    if not isinstance(config, dict):
        raise CosmoError("--config-json: must be a JSON object, e.g. '{\"epochs\": 20}'")
    ch = _channel(a)
    j = submit_job(ch, a.kind, a.dataset, config)
    _print_job(j)
    if a.wait:
        j = wait_job(ch, j.id, on_update=_print_job)
        return 0 if j.state == pb.Job.SUCCEEDED else 1
    return 0


def cmd_job(a: argparse.Namespace) -> int:
    """job / cancel / watch ID (the id or a unique prefix of it, as `submit` and `jobs` print it)."""
    from shared.client import wait_job
    from shared.rpc import TrainingStub, pb
    ch = _channel(a)
    if a.command == "watch":
        j = wait_job(ch, a.id, on_update=_print_job)
        return 0 if j.state == pb.Job.SUCCEEDED else 1
    stub = TrainingStub(ch)
    _print_job((stub.CancelJob if a.command == "cancel" else stub.GetJob)(pb.JobRef(id=a.id)))
    return 0


def cmd_jobs(a: argparse.Namespace) -> int:
    from shared.rpc import TrainingStub, pb
    resp = TrainingStub(_channel(a)).ListJobs(pb.ListJobsRequest(
        states=[pb.Job.State.Value(s) for s in a.state or []], limit=a.limit))
    for j in resp.jobs:
        print("{} {:<9} {:<8} {:<20} {} {}".format(j.id[:8], pb.Job.State.Name(j.state), j.kind, j.dataset[:20],
                                                  j.created_at, j.error or j.progress.message), flush=True)
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from shared.rpc import ModelRegistryStub, pb
    resp = ModelRegistryStub(_channel(a)).ListModels(pb.ListModelsRequest(name=a.name or ""))
    if not resp.versions:
        print("cloud-server: {}".format("no versions of {!r} on {}".format(a.name, a.server) if a.name
                                         else "no models on {}".format(a.server)), file=sys.stderr)
        return 1
    for v in resp.versions:
        print("{} v{} [{}] {} files, created {}".format(v.name, v.version, ",".join(v.aliases), len(v.files),
                                                      v.created_at))
    return 0


def cmd_admin(a: argparse.Namespace) -> int:
    """alias / pin / unpin / delete on a running daemon (behind its token)."""
    from shared.rpc import ModelRegistryStub, pb
    stub = ModelRegistryStub(_channel(a))
    if a.command == "alias":
        v = stub.SetAlias(pb.SetAliasRequest(name=a.name, alias=a.alias, version=a.version))
    elif a.command in ("pin", "unpin"):
        v = stub.PinVersion(pb.PinRequest(name=a.name, version=a.version, pinned=a.command == "pin"))
    else:
        stub.DeleteVersion(pb.VersionRef(name=a.name, version=a.version))
        print("deleted {} v{} (its blobs go at the next gc)".format(a.name, a.version))
        return 0
    print("{} v{} [{}]{}".format(v.name, v.version, ",".join(v.aliases), " pinned" if a.command == "pin" else ""))
    return 0


def cmd_reports(a: argparse.Namespace) -> int:
    """What the edges reported (ReportMetrics), newest first."""
    from shared.rpc import ModelRegistryStub, pb
    resp = ModelRegistryStub(_channel(a)).ListReports(pb.ListReportsRequest(name=a.name or "", version=a.version or 0,
                                                                            limit=a.limit))
    for r in resp.reports:
        stages = ", ".join("{} {:.1f} s".format(st.stage, st.wall_seconds) for st in r.stages)
        metrics = ", ".join("{} {:.4f}".format(k, v) for k, v in sorted(r.metrics.items()))
        print("{} {} {} v{}: {}; {}; {}".format(r.created_at, r.edge_id, r.name, r.version, stages, metrics,
                                              r.execution_provider))
    return 0


def cmd_download(a: argparse.Namespace) -> int:
    from shared.client import pull
    t0 = time.time()
    folder, man = pull(_channel(a), a.name, a.out, version=a.version, alias=None if a.version else a.alias)
    size = sum(f["size"] for f in man["files"])
    print("installed {} v{} into {} ({} files, {:.1f} MB, verified sha256) in {:.1f} s".format(
        man["name"], man["version"], folder, len(man["files"]), size / 1e6, time.time() - t0))
    return 0


def cmd_registry(a: argparse.Namespace) -> int:
    """Local administration of a registry data dir (the daemon may be running: SQLite WAL, atomic ops)."""
    from .registry import Registry, RegistryError
    from .registry.db import DB_FILE
    if not os.path.isfile(os.path.join(a.data_dir, DB_FILE)):
        raise CosmoError("--data-dir {}: no registry there (cloud-server serve --data-dir creates one)".format(
            a.data_dir))
    reg = Registry(a.data_dir)
    try:
        if a.action == "list":
            for m in reg.list_versions(a.name):
                print("{} v{} [{}] {}{}".format(m["name"], m["version"], ",".join(m.get("aliases", [])),
                                                m.get("created_at", ""), " pinned" if reg.is_pinned(m["name"], m["version"])
                                                else ""))
        elif a.action == "alias":
            reg.set_alias(a.name, a.alias, a.version)
        elif a.action in ("pin", "unpin", "delete"):
            getattr(reg, a.action)(a.name, a.version)
        elif a.action == "gc":
            print(reg.gc())
    except RegistryError as e:
        print("cloud-server: error: {}".format(e), file=sys.stderr)
        return 2
    finally:
        reg.close()
    return 0


def cmd_align(a: argparse.Namespace) -> int:
    from shared.training.align import AlignConfig
    from shared.config import config_from_dict

    from .align import ALIGN_DEFAULTS, default_encoder, export_aligned, run_align, summary
    from .align import text_encoder_folder
    d = dict(ALIGN_DEFAULTS)
    if a.encoder and a.encoder != d["encoder"]:
        d["encoder"], d["encoder_config"] = a.encoder, {}
    d.update({k: v for k, v in (("epochs", a.epochs), ("batch_size", a.batch_size), ("optimizer", a.optimizer),
                                ("lr", a.lr), ("kd", a.kd), ("lambda_kd", a.lambda_kd), ("seed", a.seed))
              if v is not None})
    cfg = config_from_dict(AlignConfig, d, where="align flags")
    encoder = default_encoder(a.out)
    r = run_align(a.out, a.dataset, cfg, encoder, holdout=a.holdout or (), progress=not a.no_progress,
                  max_windows=a.max_windows)
    print(summary(r))
    print("wrote {}/results.json, aligned_imu.pt and tsne_test.png".format(a.out))
    if a.publish:
        from .registry import Registry
        text = text_encoder_folder(os.path.join(a.publish, "text_encoders"), encoder)
        man = export_aligned(a.out, os.path.join(a.out, "version"), text, name=a.model_name)
        reg = Registry(a.publish)
        try:
            pub = reg.publish_folder(os.path.join(a.out, "version"))
        finally:
            reg.close()
        print("published {} v{} into {} ({} files, text encoder {})".format(
            pub["name"], pub["version"], a.publish, len(man["files"]), man["text_encoder"]["name"]))
    return 0


def cmd_cross_modal(a: argparse.Namespace) -> int:
    from shared.files import write_json

    from .align import cross_modal_retrieval
    r = cross_modal_retrieval(a.stage1, a.dataset, split_seed=a.split_seed, pool=a.pool)
    print("IMU -> other modality retrieval on {} test windows of {} (stage 1: {} epochs; one positive per query)"
          .format(r["pool"], r["dataset"], r["epochs"]))
    for k in r["pretrained"]:
        p, f = r["pretrained"][k], r["random_init"][k]
        print("  {:>12}: R@1 {:.3f}  R@10 {:.3f}  R@50 {:.3f}  MRR {:.3f}   (random init: R@1 {:.3f}, MRR {:.3f})"
              .format(k, p["R@1"], p["R@10"], p["R@50"], p["MRR"], f["R@1"], f["MRR"]))
    if a.out:
        write_json(a.out, r)
    return 0


def cmd_summarize(a: argparse.Namespace) -> int:
    from .align import default_encoder, summarize_recording
    r = summarize_recording(a.model, default_encoder(a.model), a.subject, a.out, min_segment_s=a.min_segment_s)
    for rec in r["recordings"]:
        print("subject {} recording {} ({:.0f} s): frame accuracy {:.3f}, segment accuracy {:.3f} ({} true segments)"
              .format(a.subject, rec["recording"], rec["duration_s"], rec["frame_accuracy"], rec["segment_accuracy"],
                      rec["true_segments"]))
        print("  " + rec["summary"][:600] + (" ..." if len(rec["summary"]) > 600 else ""))
        print("  timeline: " + rec["png"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cloud-server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level to stderr")
    sub = p.add_subparsers(dest="command")
    pt = sub.add_parser("pretrain", help="Cosmo stage 1 + quality scoring + ONNX export, locally",
                        description="Cosmo stage 1 (contrastive fusion pretraining on the unlabeled windows), "
                        "quality scoring and ONNX export into OUT, with the edge's labeled/val/test windows; the "
                        "same stages as a pretrain job. Data-parallel on several processes or GPUs, same flags: "
                        "torchrun --standalone --nproc_per_node N -m cloud.ddp_pretrain --dataset hapt --out DIR "
                        "(--batch-size is then the global batch; negatives are gathered across ranks).")
    add_stage1_args(pt)
    pt.add_argument("--out", required=True, help="output folder")
    add_package_args(pt)
    pt.set_defaults(func=cmd_pretrain)
    q = sub.add_parser("quality", help="score modality quality of a pretrain output")
    q.add_argument("--model", required=True, help="a pretrain output folder")
    q.add_argument("--features", choices=["encoder", "raw"], default="encoder")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_quality)

    sv = sub.add_parser("serve", help="run the gRPC daemon")
    sv.add_argument("--data-dir", required=True, help="registry database, blobs and job folders")
    sv.add_argument("--listen", default="127.0.0.1:50051", help="host:port (port 0: any free port)")
    sv.add_argument("--tls-cert")
    sv.add_argument("--tls-key")
    sv.add_argument("--tls-ca", help="with cert + key: require client certificates signed by this CA (mTLS)")
    sv.add_argument("--token-file", help="require the bearer token in this file on every call but health checks")
    sv.add_argument("--insecure", action="store_true",
                    help="allow a --listen address other hosts can reach without a token or TLS")
    sv.add_argument("--datasets-dir", help="jobs may train on dataset paths under this folder (NAME:PATH or "
                    "PATH.npz, relative to it); without it only the packaged datasets (hapt, basicmotions, "
                    "seglearn_watch, crowdsignals, synthetic)")
    sv.add_argument("--max-jobs", type=int, default=1, help="jobs running at once")
    sv.add_argument("--grace", type=float, default=5.0, help="seconds in-flight RPCs get on SIGTERM")
    sv.add_argument("--ready-file", help="write the bound port here once serving")
    from .admission import ServerLimits
    from .registry import Retention
    from shared.flags import add_field_flags, add_metrics_flag
    add_metrics_flag(sv)
    add_field_flags(sv, ServerLimits(), _LIMIT_FLAGS)
    add_field_flags(sv, Retention(), _RETENTION_FLAGS)
    sv.add_argument("--prune-interval-s", type=float, default=600.0,
                    help="seconds between retention passes (0: never; default 600)")
    sv.add_argument("--scrub-interval-s", type=float, default=6 * 3600.0,
                    help="seconds between re-hashes of every blob (0: never; default 21600)")
    sv.set_defaults(func=cmd_serve, daemon=True)

    def client(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        from shared.client import add_link_args
        add_link_args(sp, "--server", "127.0.0.1:50051", "cloud-server serve")
        return sp
    sb = client(sub.add_parser("submit", help="submit a training job to the daemon"))
    sb.add_argument("kind", choices=["pretrain", "quality", "align"])
    sb.add_argument("--dataset", default="hapt")
    sb.add_argument("--config-json", default="{}", help='e.g. \'{"epochs": 20, "label_rate": 0.01}\'')
    sb.add_argument("--wait", action="store_true", help="follow progress until the job ends")
    sb.set_defaults(func=cmd_submit)
    for verb, text in (("job", "show a job"), ("cancel", "cancel a job"), ("watch", "follow a job until it ends")):
        jb = client(sub.add_parser(verb, help=text))
        jb.add_argument("id", help="the job id or a unique prefix of it (the 8 characters `submit` prints)")
        jb.set_defaults(func=cmd_job)
    js = client(sub.add_parser("jobs", help="list jobs, newest first"))
    js.add_argument("--state", nargs="*", choices=["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"])
    js.add_argument("--limit", type=positive(int), default=20)
    js.set_defaults(func=cmd_jobs)
    ls = client(sub.add_parser("models", help="list published model versions"))
    ls.add_argument("--name")
    ls.set_defaults(func=cmd_models)
    for verb, text in (("alias", "point ALIAS at VERSION on the daemon (atomic)"), ("pin", "protect a version from "
                       "delete"), ("unpin", "undo pin"), ("delete", "delete a version (refused while aliased or pinned)")):
        ad = client(sub.add_parser(verb, help=text))
        ad.add_argument("name")
        if verb == "alias":
            ad.add_argument("alias")
        ad.add_argument("version", type=positive(int))
        ad.set_defaults(func=cmd_admin)
    rp = client(sub.add_parser("reports", help="what the edges reported (timings, energy, accuracy), newest first"))
    rp.add_argument("--name")
    rp.add_argument("--version", type=positive(int))
    rp.add_argument("--limit", type=positive(int), default=20)
    rp.set_defaults(func=cmd_reports)
    dl = client(sub.add_parser("download", help="download a model version (resumable, verified, atomic)"))
    dl.add_argument("--name", default="cosmo-encoders")
    dl.add_argument("--version", type=int)
    dl.add_argument("--alias", default="latest")
    dl.add_argument("--out", required=True, help="installs into OUT/<name>/v<version>")
    dl.set_defaults(func=cmd_download)
    al = sub.add_parser("align", help="IMU<->text alignment (IMU2CLIP-style) with evaluation")
    al.add_argument("--dataset", default="hapt")
    al.add_argument("--out", required=True)
    al.add_argument("--encoder", help="encoder registry name (default: cloud.align.ALIGN_DEFAULTS)")
    al.add_argument("--epochs", type=int)
    al.add_argument("--batch-size", type=int)
    al.add_argument("--optimizer", choices=["adam", "adagrad", "sgd"])
    al.add_argument("--lr", type=float)
    al.add_argument("--kd", help="a distillation loss added to InfoNCE, e.g. attention_transfer")
    al.add_argument("--lambda-kd", type=float)
    al.add_argument("--max-windows", type=int, default=0, help="cap every split at N windows (0: all)")
    al.add_argument("--publish", metavar="DATA_DIR",
                    help="also export (ONNX: aligned IMU encoder + text encoder) and publish into this registry")
    al.add_argument("--model-name", default="cosmo-aligned", help="registry name of the published version")
    al.add_argument("--holdout", nargs="*", help="activities kept out of training (zero-shot on them)")
    al.add_argument("--seed", type=int, default=0)
    al.add_argument("--no-progress", action="store_true")
    al.set_defaults(func=cmd_align)
    cm = sub.add_parser("cross-modal", help="IMU -> other modality retrieval in a stage-1 model's shared space")
    cm.add_argument("--stage1", required=True, help="folder with encoders.pt and stage1_last.pt")
    cm.add_argument("--dataset", default="hapt")
    cm.add_argument("--split-seed", type=int, default=0)
    cm.add_argument("--pool", type=int, default=320)
    cm.add_argument("--out", help="write the results as JSON here")
    cm.set_defaults(func=cmd_cross_modal)
    sm = sub.add_parser("summarize", help="summarize a subject's HAPT recordings with an aligned model")
    sm.add_argument("--model", required=True, help="a `cloud-server align` output folder")
    sm.add_argument("--subject", type=int, required=True)
    sm.add_argument("--out", required=True)
    sm.add_argument("--min-segment-s", type=float, default=5.0)
    sm.set_defaults(func=cmd_summarize)
    rg = sub.add_parser("registry", help="administer a registry data dir: list, alias, pin, unpin, delete, gc")
    rg.add_argument("--data-dir", required=True)
    rsub = rg.add_subparsers(dest="action", required=True)
    rl = rsub.add_parser("list")
    rl.add_argument("--name")
    ra = rsub.add_parser("alias", help="point ALIAS at VERSION (atomic)")
    ra.add_argument("name")
    ra.add_argument("alias")
    ra.add_argument("version", type=int)
    for verb in ("pin", "unpin", "delete"):
        rp = rsub.add_parser(verb, help="delete is refused while an alias points at the version or it is pinned"
                             if verb == "delete" else None)
        rp.add_argument("name")
        rp.add_argument("version", type=int)
    rsub.add_parser("gc", help="remove blobs no version references")
    rg.set_defaults(func=cmd_registry)
    finish_cli(p, "cloud-server")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    setup_logging(a.verbose, daemon=getattr(a, "daemon", False))
    if not getattr(a, "func", None):
        p.print_help()
        return 2
    try:
        return int(a.func(a))
    except CosmoError as e:
        print("cloud-server: error: {}".format(e), file=sys.stderr)
        return 2
    except grpc.RpcError as e:
        print("cloud-server: {}: {}".format(e.code().name, e.details()), file=sys.stderr)  # type: ignore[attr-defined]
        return 3


if __name__ == "__main__":
    sys.exit(main())
