"""A fleet against one ``cloud-server serve``: publish fan-out to N edges, on this machine, over loopback.

For every N of ``--edges``: a fresh data dir holding version 1 of a model; a real ``cloud-server serve``
process; N simulated edges in ``--procs`` processes (asyncio, one connection per edge) that do on the
wire what ``edge-agent run`` does: ``WatchModels(send_current)``; on a new version ``GetManifest``, then
``Download`` of every file with sha256 verification, then ``ReportMetrics`` (busy answers retried with
jittered backoff, as ``shared.client`` does). ``--stalled`` more connections open a Download each and
stop reading after the first chunk. Once every edge watches, a prober process calls health ``Check``
and ``ListModels`` back to back, and version 2 is published into the registry from this process (the
server hears of it as of a job worker's publish). Measured: time from the publish call until each edge
holds verified files (p50 / p99 / max), health and ListModels latency during the fan-out (p50 / p99),
aggregate download throughput, the server's CPU seconds during the fan-out and its peak RSS.

Writes ``fleet.json``, ``fleet.md`` and ``fleet.png`` into ``--out``.

    python -m benchmarks.fleet --edges 10 100 1000 --out docs/benchmarks/fleet
"""
import argparse
import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

import numpy as np

from benchmarks.report import command_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL = "fleet-model"
BUSY = ("RESOURCE_EXHAUSTED", "UNAVAILABLE")


# ------------------------------------------------------------------------------------------ edges

async def _retry(fn: Any, *args: Any) -> Any:
    """``await fn(*args)``, retrying a busy server with the client helper's jittered backoff."""
    import grpc

    from shared.client import backoff
    for attempt in range(1, 30):
        try:
            return await fn(*args)
        except grpc.aio.AioRpcError as e:
            if e.code().name not in BUSY:
                raise
            await asyncio.sleep(backoff(0.2, attempt, cap_s=5.0))
    raise RuntimeError("still busy after 30 tries")


async def _edge(i: int, target: str, have: int, ready: asyncio.Event, out: Dict[str, Any]) -> None:
    import grpc

    from shared.rpc import ModelRegistryStub, pb
    from shared.rpc.chunks import decode_chunk
    # a local subchannel pool: every edge its own TCP connection, as separate devices would have
    ch = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
    stub = ModelRegistryStub(ch)
    try:
        out["stage"] = "watch"
        watch = stub.WatchModels(pb.WatchModelsRequest(name=MODEL, send_current=True))
        async for ev in watch:
            if ev.version <= have:
                ready.set()
                continue
            out["stage"] = "manifest"
            man = await _retry(stub.GetManifest, pb.GetManifestRequest(name=MODEL, version=ev.version))
            nbytes = 0
            out["stage"] = "download"
            for f in man.files:
                async def fetch(f: Any = f, version: int = man.version) -> int:
                    h, n = hashlib.sha256(), 0
                    async for m in stub.DownloadRaw(pb.DownloadRequest(name=MODEL, version=version, file=f.path)):
                        data = decode_chunk(m)[1]
                        h.update(data)
                        n += len(data)
                    if n != f.size or h.hexdigest() != f.sha256:
                        raise RuntimeError("edge {}: {} failed verification".format(i, f.path))
                    return n
                nbytes += await _retry(fetch)
            out["verified_at"], out["bytes"], out["stage"] = time.time(), nbytes, "report"
            await _retry(stub.ReportMetrics, pb.ReportMetricsRequest(
                edge_id="sim-{}".format(i), name=MODEL, version=man.version, device="simulated",
                stages=[pb.StageMetric(stage="pull", wall_seconds=0.0)]))
            watch.cancel()
            return
    except Exception as e:  # noqa: BLE001 - counted and reported, never hidden
        out["error"] = "edge {} {} ({}): {}".format(i, type(e).__name__, out.get("stage"), e)[:300]
        out["failed_at"] = time.time()
    finally:
        ready.set()  # a failed edge must not hold the others back
        await ch.close()


def edge_main(target: str, first: int, count: int, have: int, timeout_s: float) -> None:
    """One edge process: ``count`` edges; prints READY once all watch, then one JSON line of results."""
    async def run() -> None:
        outs = [dict() for _ in range(count)]  # type: List[Dict[str, Any]]
        readies = [asyncio.Event() for _ in range(count)]
        tasks = [asyncio.create_task(_edge(first + k, target, have, readies[k], outs[k])) for k in range(count)]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), timeout_s)
        print("READY", flush=True)
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for t in pending:
            t.cancel()
        print(json.dumps(outs), flush=True)
    asyncio.run(run())


def stalled_main(target: str, count: int, version: int, file: str) -> None:
    """``count`` connections that each take one Download chunk and then stop reading."""
    import grpc

    from shared.rpc import ModelRegistryStub, pb
    chans = [grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1), ("grpc.http2.bdp_probe", 0)])
             for _ in range(count)]
    calls = [ModelRegistryStub(c).Download(pb.DownloadRequest(name=MODEL, version=version, file=file)) for c in chans]
    for c in calls:
        next(c)
    print("READY", flush=True)
    time.sleep(3600)


def probe_main(target: str, seconds: float) -> None:
    """Health Check and ListModels back to back for ``seconds``; prints ``[[t, kind, ms, ok], ...]``."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from shared.rpc import ModelRegistryStub, pb
    ch = grpc.insecure_channel(target)
    health, reg = health_pb2_grpc.HealthStub(ch), ModelRegistryStub(ch)
    rows = []
    end = time.time() + seconds
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))  # the driver ends the probe: print, then exit
    print("READY", flush=True)
    while time.time() < end and not stop:
        for kind, call in (("health", lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10)),
                           ("list", lambda: reg.ListModels(pb.ListModelsRequest(), timeout=10))):
            t = time.time()
            t0 = time.perf_counter()
            try:
                call()
                ok = True
            except grpc.RpcError as e:
                ok = e.code().name
            rows.append([t, kind, (time.perf_counter() - t0) * 1e3, ok])
        time.sleep(0.01)
    print(json.dumps(rows), flush=True)


# ------------------------------------------------------------------------------------------ driver

def proc_stat(pid: int) -> Dict[str, float]:
    with open("/proc/{}/stat".format(pid)) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    mem = {}
    with open("/proc/{}/status".format(pid)) as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                mem[line.split(":")[0]] = int(line.split()[1]) / 1024.0
    return {"cpu_s": cpu, "peak_rss_mb": mem.get("VmHWM", 0.0), "rss_mb": mem.get("VmRSS", 0.0),
            "fds": len(os.listdir("/proc/{}/fd".format(pid)))}


def _pct(xs: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def _spawn(args: List[str], log: str, nice: int = 0) -> subprocess.Popen:
    """A role of this script in its own process; stderr to ``log`` (a pipe nobody reads would block it)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-m", "benchmarks.fleet"] + args, stdout=subprocess.PIPE,
                            stderr=open(log, "ab"), text=True, cwd=ROOT, env=env,
                            preexec_fn=(lambda: os.nice(nice)) if nice else None)


def _tail(path: str, n: int = 2000) -> str:
    with open(path, "rb") as f:
        return f.read()[-n:].decode(errors="replace")


def _ready(p: subprocess.Popen, what: str, log: str) -> None:
    line = p.stdout.readline()
    if line.strip() != "READY":
        raise RuntimeError("{} did not start: {}{}".format(what, line, _tail(log)))


def run_fleet(n: int, procs: int, file_kb: List[int], stalled: int, timeout_s: float, tmp: str,
              serve_args: List[str], edge_nice: int = 10, logs_dir: str = "") -> Dict[str, Any]:
    from cloud.registry import Registry
    data = os.path.join(tmp, "data-{}".format(n))
    rng = np.random.RandomState(n)
    files = {}
    for v in (1, 2):
        for k, kb in enumerate(file_kb):
            p = os.path.join(tmp, "v{}_f{}.bin".format(v, k))
            with open(p, "wb") as fh:
                fh.write(rng.bytes(kb * 1024))
            files.setdefault(v, {})["file{}.bin".format(k)] = (p, "blob")
    with Registry(data) as reg:
        reg.publish(MODEL, files[1], {"format": "cosmo-har/manifest"})
    ready_file = os.path.join(tmp, "port-{}".format(n))
    logs = os.path.join(logs_dir or tmp, "logs-{}".format(n))
    os.makedirs(logs, exist_ok=True)
    server_log = os.path.join(logs, "server.log")
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "cloud-server"), "serve", "--data-dir",
                               data, "--listen", "127.0.0.1:0", "--ready-file", ready_file] + serve_args,
                              stdout=subprocess.DEVNULL, stderr=open(server_log, "ab"), cwd=ROOT)
    children: List[subprocess.Popen] = []
    try:
        for _ in range(600):
            if os.path.exists(ready_file) or server.poll() is not None:
                break
            time.sleep(0.1)
        if server.poll() is not None:
            raise RuntimeError("cloud-server exited: " + _tail(server_log))
        target = "127.0.0.1:" + open(ready_file).read().strip()
        time.sleep(1.0)
        idle = proc_stat(server.pid)
        t_start = time.time()
        per = [n // procs + (1 if k < n % procs else 0) for k in range(min(procs, n))]
        first = 0
        edges = []
        for count in per:
            edges.append(_spawn(["--role", "edge", target, str(first), str(count), str(timeout_s)],
                                os.path.join(logs, "edges.log"), nice=edge_nice))
            first += count
        children += edges
        if stalled:
            st = _spawn(["--role", "stalled", target, str(stalled), "file0.bin"], os.path.join(logs, "stalled.log"),
                        nice=edge_nice)
            children.append(st)
            _ready(st, "stalled readers", os.path.join(logs, "stalled.log"))
        for p in edges:
            _ready(p, "edge process", os.path.join(logs, "edges.log"))
        t_watching = time.time()
        time.sleep(1.0)
        watching = proc_stat(server.pid)
        probe = _spawn(["--role", "probe", target, str(timeout_s)], os.path.join(logs, "probe.log"))
        children.append(probe)
        _ready(probe, "prober", os.path.join(logs, "probe.log"))
        time.sleep(1.0)  # baseline latency before the publish
        before = proc_stat(server.pid)
        with Registry(data) as reg:
            t_pub = time.time()
            reg.publish(MODEL, files[2], {"format": "cosmo-har/manifest"})
        results = []
        for p in edges:
            out, _ = p.communicate(timeout=timeout_s + 60)
            results += json.loads(out.strip().splitlines()[-1])
        t_end = time.time()
        after = proc_stat(server.pid)
        probe.terminate()
        out, _ = probe.communicate(timeout=60)
        lines = [ln for ln in out.strip().splitlines() if ln.startswith("[")]
        rows = json.loads(lines[-1]) if lines else []
    finally:
        for p in children:
            if p.poll() is None:
                p.kill()
                p.wait()
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    server_warnings = [ln for ln in _tail(server_log, 1 << 20).splitlines() if " WARNING " in ln or " ERROR " in ln]
    verified = [r["verified_at"] - t_pub for r in results if "verified_at" in r]
    errors = [r["error"] for r in results if "error" in r]
    failed_after = [r["failed_at"] - t_pub for r in results if "failed_at" in r]
    last = max(verified) if verified else float("nan")
    during = [r for r in rows if t_pub <= r[0] <= t_pub + max(last, 1.0)]
    lat = {k: [r[2] for r in during if r[1] == k and r[3] is True] for k in ("health", "list")}
    failed = {k: sum(1 for r in during if r[1] == k and r[3] is not True) for k in ("health", "list")}
    codes = sorted({"{}: {}".format(r[1], r[3]) for r in during if r[3] is not True})
    total_bytes = sum(r.get("bytes", 0) for r in results)
    return {
        "edges": n, "edge_procs": len(per), "stalled_readers": stalled, "file_kb": file_kb,
        "verified": len(verified), "errors": len(errors), "error_samples": errors[:5],
        "failed_after_s": {"min": min(failed_after), "max": max(failed_after)} if failed_after else None,
        "connect_s": t_watching - t_start,
        "publish_to_verified_s": {"p50": _pct(verified, 50), "p99": _pct(verified, 99), "max": last},
        "health_ms": {"p50": _pct(lat["health"], 50), "p99": _pct(lat["health"], 99), "max": max(lat["health"] or [0]),
                      "n": len(lat["health"]), "failed": failed["health"]},
        "probe_failures": codes, "server_warnings": len(server_warnings), "server_warning_samples": server_warnings[:5],
        "list_ms": {"p50": _pct(lat["list"], 50), "p99": _pct(lat["list"], 99), "max": max(lat["list"] or [0]),
                    "n": len(lat["list"]), "failed": failed["list"]},
        "download_MB_per_s": total_bytes / 1e6 / last if verified else float("nan"),
        "bytes_total": total_bytes,
        "server_cpu_s": after["cpu_s"] - before["cpu_s"], "server_peak_rss_mb": after["peak_rss_mb"],
        "server_rss_idle_mb": idle["rss_mb"], "server_rss_watching_mb": watching["rss_mb"],
        "server_kb_per_watching_edge": (watching["rss_mb"] - idle["rss_mb"]) * 1024 / (n + stalled),
        "server_fds_idle": idle["fds"], "server_fds_watching": watching["fds"],
        "wall_s": t_end - t_pub,
    }


def _plot(rows: List[Dict[str, Any]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ns = [r["edges"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for key, label in (("health_ms", "health Check"), ("list_ms", "ListModels")):
        ax.plot(ns, [r[key]["p50"] for r in rows], "o-", label=label + " p50")
        ax.plot(ns, [r[key]["p99"] for r in rows], "s--", label=label + " p99")
    ax.axhline(100, color="grey", lw=0.8, ls=":", label="100 ms target (p99)")
    ax.set(xscale="log", yscale="log", xlabel="edges watching", ylabel="latency during fan-out (ms)")
    ax.legend(fontsize=8)
    ax = axes[1]
    for q in ("p50", "p99", "max"):
        ax.plot(ns, [r["publish_to_verified_s"][q] for r in rows], "o-", label=q)
    ax.axhline(30, color="grey", lw=0.8, ls=":", label="30 s target (max)")
    ax.set(xscale="log", xlabel="edges", ylabel="publish -> verified files (s)")
    ax.legend(fontsize=8)
    fig.suptitle("One cloud-server, N edges, publish fan-out ({} CPUs)".format(os.cpu_count()))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Any = None) -> int:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--role":
        role, rest = sys.argv[2], sys.argv[3:]
        if role == "edge":
            edge_main(rest[0], int(rest[1]), int(rest[2]), 1, float(rest[3]))
        elif role == "stalled":
            stalled_main(rest[0], int(rest[1]), 1, rest[2])
        elif role == "probe":
            probe_main(rest[0], float(rest[1]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edges", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--procs", type=int, default=8, help="processes the simulated edges are spread over")
    ap.add_argument("--file-kb", type=int, nargs="+", default=[429, 207, 207, 1],
                    help="sizes of the version's files in KiB (default: a HAPT stage-1 version: state_dict, "
                         "two ONNX encoders, config)")
    ap.add_argument("--stalled", type=int, default=32, help="stalled Download readers held during the fan-out")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds an edge process waits at most")
    ap.add_argument("--edge-nice", type=int, default=10,
                    help="niceness of the simulated edges: they stand in for remote devices, so they yield the "
                         "CPU to the server and the prober they share this machine with (0: compete equally)")
    ap.add_argument("--out", default="results/fleet")
    ap.add_argument("--logs", default="", help="keep the server's and edges' logs in this folder")
    ap.add_argument("--serve-args", default="", help="extra cloud-server serve flags, e.g. '--max-rpcs 512'")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.edges:
            t0 = time.time()
            r = run_fleet(n, a.procs, a.file_kb, a.stalled, a.timeout, tmp, a.serve_args.split(), a.edge_nice,
                          a.logs)
            rows.append(r)
            print("N={}: {} verified, {} errors; publish->verified p50 {:.2f} s p99 {:.2f} s max {:.2f} s; "
                  "health p99 {:.1f} ms, ListModels p99 {:.1f} ms; server CPU {:.1f} s, peak RSS {:.0f} MB ({:.0f} s)"
                  .format(n, r["verified"], r["errors"], r["publish_to_verified_s"]["p50"],
                          r["publish_to_verified_s"]["p99"], r["publish_to_verified_s"]["max"], r["health_ms"]["p99"],
                          r["list_ms"]["p99"], r["server_cpu_s"], r["server_peak_rss_mb"], time.time() - t0),
                  flush=True)
    import grpc
    meta = {"host": os.uname().nodename, "cpus": os.cpu_count(), "grpcio": grpc.__version__,
            "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "args": vars(a)}
    with open(os.path.join(a.out, "fleet.json"), "w") as f:
        json.dump({"meta": meta, "runs": rows}, f, indent=2)
    lines = ["# Fleet fan-out: one cloud-server, N simulated edges ({} CPUs, {}; grpcio {})".format(
        meta["cpus"], meta["date"], meta["grpcio"]), "",
        "Command: `{}`. Version files: {} KiB; {} stalled Download readers held "
        "throughout. Latencies are of a prober calling health Check and ListModels back to back during the "
        "fan-out (from the publish until the last edge verified). The simulated edges run at niceness {} (they stand in "
        "for remote devices on this machine).".format(
            command_line("benchmarks.fleet", argv), "+".join(map(str, a.file_kb)), a.stalled,
            a.edge_nice), "",
        "| edges | verified | errors | publish → verified p50 / p99 / max (s) | health p50 / p99 (ms) | "
        "ListModels p50 / p99 (ms) | probe failures | download MB/s | server CPU (s) | server peak RSS (MB) | "
        "RSS idle → all watching (MB) | fds idle → watching |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["publish_to_verified_s"]
        lines.append("| {} | {} | {} | {:.2f} / {:.2f} / {:.2f} | {:.1f} / {:.1f} | {:.1f} / {:.1f} | {} | {:.0f} | {:.1f} | "
                     "{:.0f} | {:.0f} → {:.0f} | {} → {} |".format(
                         r["edges"], r["verified"], r["errors"], t["p50"], t["p99"], t["max"], r["health_ms"]["p50"],
                         r["health_ms"]["p99"], r["list_ms"]["p50"], r["list_ms"]["p99"],
                         r["health_ms"]["failed"] + r["list_ms"]["failed"], r["download_MB_per_s"], r["server_cpu_s"],
                         r["server_peak_rss_mb"], r["server_rss_idle_mb"], r["server_rss_watching_mb"],
                         r["server_fds_idle"], r["server_fds_watching"]))
    with open(os.path.join(a.out, "fleet.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    _plot(rows, os.path.join(a.out, "fleet.png"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
