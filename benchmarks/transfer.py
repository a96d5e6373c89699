"""Download throughput of the registry over gRPC against a plain TCP socket, on loopback.

Same bytes, same machine, same run, each server in its own process as in a deployment: a blob of
``--mb`` MiB is published into a real ``cloud-server serve``'s registry, then, for every chunk size of
``--chunk-kb`` and ``--repeats`` times (interleaved, so drift hits every path alike):

1. ``grpc_download``: ``ModelRegistry.Download`` read to the end (the bare stream, in this process with
   malloc tuned as the client helper and the server tune it: ``shared.alloc``; ``--default-malloc``
   leaves it alone in all three);
2. ``client_helper``: ``shared.client.download_file`` (adds sha256, writing to disk, fsync);
3. ``tcp_socket``: a plain TCP server process that reads the same blob file in 1 MiB blocks and
   ``sendall``-s them to a client that ``recv_into``-s it (what a bare socket server costs).

Reports MB/s (median over repeats), time to first byte, gRPC/TCP and helper/stream ratios, the
receiving client's minor page faults per GB, how many cores client and server kept busy together (the
server's CPU is read in 10 ms clock ticks: meaningful from blobs of some 64 MiB up), and the best chunk
size. Writes ``transfer.json`` and ``transfer.md`` into ``--out``.

    python -m benchmarks.transfer --out results/transfer --mb 256 --repeats 3 --chunk-kb 256 1024 3072
"""
import argparse
import hashlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

import grpc
import numpy as np


from benchmarks.fleet import proc_stat
from cloud.registry import Registry
from shared.alloc import tune_for_large_messages
from shared.client import download_file
from shared.rpc import ModelRegistryStub, pb
from shared.rpc.chunks import decode_chunk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TCP_SERVER = r"""
import os, socket, sys
path = sys.argv[1]
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(8)
print(srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    with conn, open(path, "rb") as f:
        conn.recv(16)
        for block in iter(lambda: f.read(1 << 20), b""):
            conn.sendall(block)
"""


def grpc_stream(stub: Any, version: int, chunk: int) -> Dict[str, float]:
    """The bare stream, read the way the client helper reads it (raw messages, zero-copy views)."""
    t0 = time.perf_counter()
    first = None
    n = 0
    for m in stub.DownloadRaw(pb.DownloadRequest(name="bench", version=version, file="blob.bin", chunk_size=chunk)):
        if first is None:
            first = time.perf_counter() - t0
        n += len(decode_chunk(m)[1])
    return {"seconds": time.perf_counter() - t0, "ttfb_s": first or 0.0, "bytes": n}


def sha256_alone(path: str, chunk: int) -> Dict[str, float]:
    """What the client helper adds that no transport can hide: sha256 over the same bytes, already in
    memory (the file read first, untimed), in ``chunk``-sized updates as the helper hashes them."""
    with open(path, "rb") as f:
        data = memoryview(f.read())
    h = hashlib.sha256()
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(data), chunk):
        h.update(data[i:i + chunk])
    return {"seconds": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "bytes": len(data)}


def tcp_stream(port: int, chunk: int) -> Dict[str, float]:
    t0 = time.perf_counter()
    cli = socket.create_connection(("127.0.0.1", port))
    cli.sendall(b"GET")
    first, n = None, 0
    buf = bytearray(chunk)
    while True:
        k = cli.recv_into(buf)
        if not k:
            break
        if first is None:
            first = time.perf_counter() - t0
        n += k
    dt = time.perf_counter() - t0
    cli.close()
    return {"seconds": dt, "ttfb_s": first or 0.0, "bytes": n}


def _measured(fn: Any, pid: int, *args: Any) -> Dict[str, float]:
    """``fn(*args)`` plus the CPU seconds the server process ``pid`` spent meanwhile, and the CPU seconds
    (all threads) and minor page faults of this, the receiving, process."""
    c0, u0 = proc_stat(pid)["cpu_s"], resource.getrusage(resource.RUSAGE_SELF)
    r = fn(*args)
    r["server_cpu_s"] = proc_stat(pid)["cpu_s"] - c0
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    r["client_cpu_s"] = u1.ru_utime + u1.ru_stime - u0.ru_utime - u0.ru_stime
    r["client_minflt"] = u1.ru_minflt - u0.ru_minflt
    return r


def helper_download(stub: Any, version: int, chunk: int, dest: str, size: int, sha256: str) -> Dict[str, float]:
    """The client helper to the end: stream, sha256, write, fsync (the file is removed after)."""
    t0 = time.perf_counter()
    download_file(stub, "bench", version, "blob.bin", dest, size, sha256, chunk_size=chunk)
    r = {"seconds": time.perf_counter() - t0, "ttfb_s": float("nan"), "bytes": size}
    os.remove(dest)
    return r


def _start(cmd: List[str], env: Dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/transfer")
    ap.add_argument("--mb", type=int, default=128, help="blob size in MiB")
    ap.add_argument("--chunk-kb", type=int, nargs="+", default=[256, 1024, 3072], help="chunk sizes to compare (KiB)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--default-malloc", action="store_true",
                    help="glibc malloc at its defaults in this process and the cloud-server "
                    "(COSMO_MALLOC_TUNING=0), for an A/B")
    a = ap.parse_args(argv)
    if a.default_malloc:
        os.environ["COSMO_MALLOC_TUNING"] = "0"  # also for the client helper's calls and the server
    malloc_tuned = tune_for_large_messages()
    os.makedirs(a.out, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=ROOT)
    runs: Dict[str, Dict[str, List[Dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        blob = os.path.join(tmp, "blob.bin")
        with open(blob, "wb") as f:
            f.write(np.random.RandomState(0).bytes(a.mb << 20))
        data = os.path.join(tmp, "data")
        with Registry(data) as reg:
            man = reg.publish("bench", {"blob.bin": (blob, "blob")}, {"format": "cosmo-har/manifest"})
            stored = str(reg.open_blob("bench", man["version"], "blob.bin")[0])
        os.sync()  # the setup's dirty pages (blob, registry copy) on disk now, not in the first measured fsync
        f0 = man["files"][0]
        ready = os.path.join(tmp, "port")
        cloud = _start([os.path.join(os.path.dirname(sys.executable), "cloud-server"), "serve", "--data-dir", data, "--listen", "127.0.0.1:0",
                        "--ready-file", ready], env)
        tcp = _start([sys.executable, "-c", TCP_SERVER, stored], env)
        try:
            tcp_port = int(tcp.stdout.readline())
            for _ in range(600):
                if os.path.exists(ready):
                    break
                time.sleep(0.1)
            ch = grpc.insecure_channel("127.0.0.1:" + open(ready).read().strip())
            stub = ModelRegistryStub(ch)
            grpc_stream(stub, man["version"], 1 << 20)  # warm up: connection, page cache
            for kb in a.chunk_kb:
                chunk = kb * 1024
                r = runs[str(kb)] = {"grpc_download": [], "client_helper": [], "tcp_socket": []}
                for _ in range(a.repeats):
                    r["grpc_download"].append(_measured(grpc_stream, cloud.pid, stub, man["version"], chunk))
                    r["client_helper"].append(_measured(helper_download, cloud.pid, stub, man["version"], chunk,
                                                        os.path.join(tmp, "got.bin"), f0["size"], f0["sha256"]))
                    r["tcp_socket"].append(_measured(tcp_stream, tcp.pid, tcp_port, chunk))
                    r.setdefault("sha256_alone", []).append(sha256_alone(stored, chunk))
            ch.close()
        finally:
            for p in (cloud, tcp):
                p.terminate()
                p.wait(30)
    summary: Dict[str, Any] = {}
    for kb, paths in runs.items():
        s = summary[kb] = {}
        for k, rs in paths.items():
            if k == "sha256_alone":
                s[k] = {"MB_per_s_median": statistics.median(r["bytes"] / r["seconds"] / 1e6 for r in rs)}
                continue
            short = [r["bytes"] for r in rs if r["bytes"] != a.mb << 20]
            if short:  # a stream that ended early would pass for a fast one
                raise SystemExit("transfer: {} at {} KiB received {} of {} bytes".format(k, kb, short[0], a.mb << 20))
            mbps = [r["bytes"] / r["seconds"] / 1e6 for r in rs]
            ttfb = [r["ttfb_s"] * 1e3 for r in rs if r["ttfb_s"] == r["ttfb_s"]]
            cpu = [r["server_cpu_s"] / (r["bytes"] / 1e9) for r in rs if "server_cpu_s" in r]
            flt = [r["client_minflt"] / (r["bytes"] / 1e9) for r in rs if "client_minflt" in r]
            both = [(r["client_cpu_s"] + r["server_cpu_s"]) / r["seconds"] for r in rs if "client_cpu_s" in r]
            s[k] = {"MB_per_s_median": statistics.median(mbps), "MB_per_s": mbps,
                    "ttfb_ms_median": statistics.median(ttfb) if ttfb else None,
                    "server_cpu_s_per_GB_median": statistics.median(cpu) if cpu else None,
                    "client_minflt_per_GB_median": statistics.median(flt) if flt else None,
                    "cores_busy_median": statistics.median(both) if both else None}
        s["grpc_over_tcp"] = s["grpc_download"]["MB_per_s_median"] / s["tcp_socket"]["MB_per_s_median"]
        s["helper_time_over_stream"] = s["grpc_download"]["MB_per_s_median"] / s["client_helper"]["MB_per_s_median"]
        # the helper's floor here: the stream's CPU (client + server) and the hashing's, spread over every core
        g = s["grpc_download"]
        sha_cpu_per_byte = statistics.median(r["cpu_s"] / r["bytes"] for r in paths["sha256_alone"])
        stream_s_per_byte = 1e-6 / g["MB_per_s_median"]
        cpu_per_byte = g["cores_busy_median"] * stream_s_per_byte + sha_cpu_per_byte
        s["helper_floor_over_stream"] = max(1.0, cpu_per_byte / (os.cpu_count() or 1) / stream_s_per_byte)
    best = max(summary, key=lambda kb: summary[kb]["grpc_over_tcp"])
    result = {"mb": a.mb, "repeats": a.repeats, "chunk_kb": a.chunk_kb, "summary": summary, "best_chunk_kb": int(best),
              "grpc_over_tcp": summary[best]["grpc_over_tcp"], "host": os.uname().nodename, "cpus": os.cpu_count(),
              "grpcio": grpc.__version__, "malloc_tuned": malloc_tuned}
    with open(os.path.join(a.out, "transfer.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = ["# Download throughput on loopback ({} MiB blob, median of {}; servers in their own processes)".format(
        a.mb, a.repeats), "",
        "| chunk (KiB) | gRPC Download MB/s | client helper MB/s | plain TCP MB/s | gRPC / TCP | helper time / stream time "
        "| server CPU s per GB, gRPC / TCP | first byte gRPC / TCP (ms) | client page faults per GB, gRPC / TCP "
        "| cores busy (client + server CPU / wall), gRPC / helper / TCP | sha256 alone MB/s "
        "| helper floor / stream time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for kb, s in summary.items():
        lines.append("| {} | {:.0f} | {:.0f} | {:.0f} | {:.2f} | {:.2f} | {:.2f} / {:.2f} | {:.2f} / {:.2f} "
                     "| {:.0f} / {:.0f} | {:.2f} / {:.2f} / {:.2f} | {:.0f} | {:.2f} |".format(
            kb, s["grpc_download"]["MB_per_s_median"], s["client_helper"]["MB_per_s_median"],
            s["tcp_socket"]["MB_per_s_median"], s["grpc_over_tcp"], s["helper_time_over_stream"],
            s["grpc_download"]["server_cpu_s_per_GB_median"], s["tcp_socket"]["server_cpu_s_per_GB_median"],
            s["grpc_download"]["ttfb_ms_median"], s["tcp_socket"]["ttfb_ms_median"],
            s["grpc_download"]["client_minflt_per_GB_median"], s["tcp_socket"]["client_minflt_per_GB_median"],
            s["grpc_download"]["cores_busy_median"], s["client_helper"]["cores_busy_median"],
            s["tcp_socket"]["cores_busy_median"], s["sha256_alone"]["MB_per_s_median"], s["helper_floor_over_stream"]))
    lines += ["", "Best chunk size: {} KiB (gRPC / TCP {:.2f}). Receiving client's malloc: {}. This machine has {} "
              "cores: a path whose client and server together keep them busy is CPU-bound.".format(
                  best, summary[best]["grpc_over_tcp"], "tuned for large messages (shared.alloc)" if malloc_tuned
                  else "glibc defaults (--default-malloc)", os.cpu_count()),
              "", "*helper floor*: the fastest the client helper could be here if the stream's CPU (client and "
              "server) and sha256's own were spread perfectly over all {} cores, in units of the bare stream's time; "
              "a helper/stream ratio below it would need faster hashing or more cores, not a better transport.".format(
                  os.cpu_count())]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "transfer.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
