"""Download throughput of the registry over gRPC against a plain TCP socket, on loopback.

Same bytes, same machine, same run: a blob of ``--mb`` MiB is published into a fresh registry and
(1) streamed with ``ModelRegistry.Download`` (1 MiB chunks by default), (2) fetched with the client
helper ``shared.client.download_file`` (adds writing to disk and sha256), (3) sent over a plain TCP
socket by a thread that reads the same blob file. Time to first byte is measured from the request to
the first chunk. Writes ``transfer.json`` and ``transfer.md`` into ``--out``.

    python benchmarks/transfer.py --out results/transfer --mb 256 --repeats 5
"""
import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List

import grpc
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cloud.server import CloudServer  # noqa: E402
from shared.client import download_file  # noqa: E402
from shared.rpc import ModelRegistryStub, pb  # noqa: E402


def grpc_stream(stub: Any, version: int, chunk: int) -> Dict[str, float]:
    t0 = time.perf_counter()
    first = None
    n = 0
    for c in stub.Download(pb.DownloadRequest(name="bench", version=version, file="blob.bin", chunk_size=chunk)):
        if first is None:
            first = time.perf_counter() - t0
        n += len(c.data)
    return {"seconds": time.perf_counter() - t0, "ttfb_s": first or 0.0, "bytes": n}


def tcp_stream(path: str, chunk: int) -> Dict[str, float]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def send() -> None:
        conn, _ = srv.accept()
        with conn, open(path, "rb") as f:
            conn.recv(16)  # the request
            for block in iter(lambda: f.read(chunk), b""):
                conn.sendall(block)
    th = threading.Thread(target=send)
    th.start()
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
    th.join()
    srv.close()
    return {"seconds": dt, "ttfb_s": first or 0.0, "bytes": n}


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/transfer")
    ap.add_argument("--mb", type=int, default=128, help="blob size in MiB")
    ap.add_argument("--chunk-kb", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    chunk = a.chunk_kb * 1024
    with tempfile.TemporaryDirectory() as tmp:
        blob = os.path.join(tmp, "blob.bin")
        with open(blob, "wb") as f:
            f.write(np.random.RandomState(0).bytes(a.mb << 20))
        srv = CloudServer(os.path.join(tmp, "data"), "127.0.0.1:0")
        port = srv.start()
        try:
            man = srv.registry.publish("bench", {"blob.bin": (blob, "blob")}, {"format": "cosmo-har/manifest"})
            f0 = man["files"][0]
            stored, _, _ = srv.registry.open_blob("bench", man["version"], "blob.bin")
            ch = grpc.insecure_channel("127.0.0.1:{}".format(port))
            stub = ModelRegistryStub(ch)
            runs: Dict[str, List[Dict[str, float]]] = {"grpc_download": [], "client_helper": [], "tcp_socket": []}
            for r in range(a.repeats):
                runs["grpc_download"].append(grpc_stream(stub, man["version"], chunk))
                dest = os.path.join(tmp, "got{}.bin".format(r))
                t0 = time.perf_counter()
                download_file(stub, "bench", man["version"], "blob.bin", dest, f0["size"], f0["sha256"], chunk_size=chunk)
                runs["client_helper"].append({"seconds": time.perf_counter() - t0, "ttfb_s": float("nan"),
                                              "bytes": f0["size"]})
                os.remove(dest)
                runs["tcp_socket"].append(tcp_stream(stored, chunk))
            ch.close()
        finally:
            srv.stop(grace=1)
    summary = {}
    for k, rs in runs.items():
        mbps = [r["bytes"] / r["seconds"] / 1e6 for r in rs]
        ttfb = [r["ttfb_s"] * 1e3 for r in rs if r["ttfb_s"] == r["ttfb_s"]]
        summary[k] = {"MB_per_s_median": statistics.median(mbps), "MB_per_s": mbps,
                      "ttfb_ms_median": statistics.median(ttfb) if ttfb else None}
    ratio = summary["grpc_download"]["MB_per_s_median"] / summary["tcp_socket"]["MB_per_s_median"]
    result = {"mb": a.mb, "chunk_bytes": chunk, "repeats": a.repeats, "summary": summary,
              "grpc_over_tcp": ratio, "host": os.uname().nodename, "grpcio": grpc.__version__}
    with open(os.path.join(a.out, "transfer.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = ["# Download throughput on loopback ({} MiB, {} KiB chunks, median of {})".format(a.mb, a.chunk_kb, a.repeats),
             "", "| path | MB/s | time to first byte (ms) |", "|---|---|---|"]
    for k, s in summary.items():
        lines.append("| {} | {:.0f} | {} |".format(k, s["MB_per_s_median"],
                                                  "{:.2f}".format(s["ttfb_ms_median"]) if s["ttfb_ms_median"] else "-"))
    lines += ["", "gRPC Download / plain TCP: {:.2f}".format(ratio)]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "transfer.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
