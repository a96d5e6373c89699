"""Serving latency of the edge: the served model in ONNX Runtime and in torch eager, Predict over gRPC
against the in-process call, cold start and memory of `edge-agent serve`. One run, side by side.

On the served model (``--model``: a fine-tuned folder with model.onnx, finetuned.pt, encoders.pt and
manifest.json; default: the demo's) and real windows (``--windows``: default the demo's test split):

1. ``engines``: the same windows through ONNX Runtime and through the torch model (eager, no_grad), one
   thread each, at batch 1 and 32: p50/p99 latency and windows/s, and the ORT/torch speed-up.
2. ``grpc``: Predict at batch 1 over gRPC to ``edge-agent serve`` processes (loopback TCP and a unix
   socket; compact ``raw`` windows, and the repeated-float form of old clients) against
   ``Runtime.predict`` in-process, p50/p99; an empty RPC (health Check), the floor of a round trip; and
   ``StreamPredict`` as continuous inference uses it (one open stream, each window's samples out and its
   prediction back: the round trip per window).
3. ``cold_start``: ``edge-agent serve`` started as a process until its first Predict is answered, and
   its peak RSS (VmHWM) and whether any torch library is mapped; against a bare server built from
   ``edge.service`` + ``edge.runtime`` alone (the floor). Medians over ``--starts`` starts, interleaved,
   after one untimed start of each (bytecode compiled, as ``pip install`` leaves it; files cached).

Writes ``latency.json``, ``latency.md`` and ``latency.png`` into ``--out``.

    python -m benchmarks.latency --out docs/benchmarks/latency
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Sequence

import numpy as np


from benchmarks.report import command_line, write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDLE_GAP_S = 0.0005  # about an empty RPC: how long a server's model sits idle between Predicts
DEMO_MODEL = os.path.join(ROOT, "runs", "demo", "edge", "state", "finetuned", "cosmo-hapt", "v1")
DEMO_WINDOWS = os.path.join(ROOT, "runs", "demo", "edge", "labels", "test.npz")
# the floor: a server from edge.service + edge.runtime alone (no CLI, no agent), serving the same model
BARE_SERVER = r"""
import os, sys, threading
from edge.runtime import Runtime
from edge.service import ModelHolder, serve_inference
server, port = serve_inference(ModelHolder(Runtime.load(sys.argv[1])), sys.argv[2])
with open(sys.argv[3] + ".tmp", "w") as f:
    f.write(str(port))
os.replace(sys.argv[3] + ".tmp", sys.argv[3])
threading.Event().wait()
"""


def timed(fn: Callable[[], Any], n: int, warmup: int = 5, gap_s: float = 0.0) -> Dict[str, float]:
    """p50/p99 of ``n`` calls of ``fn``, after ``warmup``; ``gap_s``: idle time before each (not timed)."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(n):
        if gap_s:
            time.sleep(gap_s)
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ms = np.array(ts) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": n}


def engines(model_dir: str, windows: Dict[str, np.ndarray], n: int) -> Dict[str, Any]:
    """ORT vs torch eager on the same inputs (normalized and masked exactly as serving does), one thread."""
    import torch

    from shared.models.finetuned import load_finetuned
    from edge.runtime import Runtime, SessionSettings
    from shared.contract import ENCODERS, FINETUNED
    rt = Runtime.load(model_dir, settings=SessionSettings(intra_op_threads=1))
    torch.set_num_threads(1)
    model = load_finetuned(os.path.join(model_dir, FINETUNED), os.path.join(model_dir, ENCODERS), rt.modalities,
                           len(rt.classes)).eval()
    out = {"conv_macs_per_window": _conv_macs(model, rt, windows)}  # type: Dict[str, Any]
    for batch in (1, 32):
        w = {m: a[:batch] for m, a in windows.items()}
        present = rt.present_mask(w, batch)
        xs = [((w[m] - rt._mean[j]) / rt._std[j]).astype(np.float32) for j, m in enumerate(rt.modalities)]
        feed = dict(zip(rt.modalities, xs), present=present.astype(np.float32))
        mask = torch.from_numpy(present)
        ts = [torch.from_numpy(x) for x in xs]

        def ort_run(feed: Dict[str, np.ndarray] = feed) -> Any:
            return rt._session.run(None, feed)

        def torch_run(ts: List[Any] = ts, mask: Any = mask) -> Any:
            with torch.no_grad():
                return model.forward_with_embedding(ts, mask)
        got, want = ort_run()[0], torch_run()[0].numpy()
        assert np.allclose(got, want, rtol=1e-3, atol=1e-4), "ORT and torch disagree"
        r = {}
        for name, fn in (("onnxruntime", ort_run), ("torch_eager", torch_run)):
            t = timed(fn, n)
            t["windows_per_s"] = batch / (t["p50_ms"] / 1000.0)
            r[name] = t
        r["ort_speedup_p50"] = r["torch_eager"]["p50_ms"] / r["onnxruntime"]["p50_ms"]
        out["batch_{}".format(batch)] = r
    return out


def _conv_macs(model: Any, rt: Any, windows: Dict[str, np.ndarray]) -> int:
    """Multiply-adds of the model's convolutions for one window (counted on the torch model's layers)."""
    import torch
    from torch import nn
    macs = [0]

    def count(mod: Any, inp: Any, out: Any) -> None:
        macs[0] += int(out.numel()) * (mod.in_channels // mod.groups) * int(np.prod(mod.kernel_size))
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    try:
        with torch.no_grad():
            model.forward_with_embedding([torch.from_numpy(np.ascontiguousarray(windows[m][:1])) for m in rt.modalities],
                                         torch.ones(1, len(rt.modalities), dtype=torch.bool))
    finally:
        for h in hooks:
            h.remove()
    return macs[0]


def _server_env() -> Dict[str, str]:
    """A server process's environment, as installed: pip compiles every module's bytecode."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _serve(state: str, listen: str, ready: str, extra: Sequence[str] = ()) -> Any:
    """``edge-agent serve`` as its own process (as apps meet it); returns (process, port)."""
    if os.path.exists(ready):
        os.remove(ready)
    proc = subprocess.Popen(_edge_agent() + ["serve", "--state-dir", state, "--listen", listen, "--ready-file", ready]
                            + list(extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_server_env())
    end = time.time() + 60
    while not os.path.exists(ready):
        if proc.poll() is not None or time.time() > end:
            raise RuntimeError("edge-agent serve did not start: {}".format(proc.stderr.read().decode()[-500:]))
        time.sleep(0.01)
    with open(ready) as f:
        return proc, int(f.read())


def over_grpc(model_dir: str, windows: Dict[str, np.ndarray], n: int, tmp: str) -> Dict[str, Any]:
    """Predict at batch 1 from this process to ``edge-agent serve`` processes (TCP loopback, unix socket),
    against ``Runtime.predict`` here; an empty RPC (health Check) shows the floor of a round trip."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from edge.agent import Agent
    from edge.runtime import Runtime
    from edge.wire import encode_windows
    from shared.rpc import InferenceStub, pb
    rt = Runtime.load(model_dir)
    w = {m: a[:1] for m, a in windows.items()}
    w64 = {m: a[:64] for m, a in windows.items()}
    state = os.path.join(tmp, "grpc_state")
    Agent(state, "").swap_to(model_dir)
    sock = os.path.join(tmp, "bench.sock")
    tcp, port = _serve(state, "127.0.0.1:0", os.path.join(tmp, "ready_tcp"))
    unix, _ = _serve(state, "unix:" + sock, os.path.join(tmp, "ready_unix"))
    no_spin_proc, no_spin_port = _serve(state, "127.0.0.1:0", os.path.join(tmp, "ready_no_spin"), ["--ort-no-spin"])
    def floats(ws: Dict[str, np.ndarray]) -> Any:  # what an old client builds per call
        return pb.PredictRequest(windows=[pb.ModalityWindows(modality=m, shape=list(a.shape), data=a.ravel().tolist())
                                          for m, a in ws.items()])
    res = {}  # type: Dict[str, Any]
    try:
        channels = {"loopback": grpc.insecure_channel("127.0.0.1:{}".format(port)),
                    "unix_socket": grpc.insecure_channel("unix:" + sock)}
        no_spin = grpc.insecure_channel("127.0.0.1:{}".format(no_spin_port))  # --ort-no-spin
        rates = {m: float(d["rate_hz"]) for m, d in rt.schema.items()}
        for _ in range(2):  # interleaved halves: drift hits every path alike
            parts = {"in_process": lambda: rt.predict(w), "in_process_b64": lambda: rt.predict(w64)}
            for name, ch in channels.items():
                stub = InferenceStub(ch)
                parts[name] = lambda stub=stub: stub.Predict(encode_windows(w), timeout=10)
                parts[name + "_repeated_float"] = lambda stub=stub: stub.Predict(floats(w), timeout=10)
                if name == "loopback":
                    parts[name + "_b64"] = lambda stub=stub: stub.Predict(encode_windows(w64), timeout=10)
                    parts[name + "_b64_repeated_float"] = lambda stub=stub: stub.Predict(floats(w64), timeout=10)
                h = health_pb2_grpc.HealthStub(ch)
                parts[name + "_empty_rpc"] = lambda h=h: h.Check(health_pb2.HealthCheckRequest(), timeout=10)
            sleepy = InferenceStub(no_spin)
            parts["loopback_no_spin"] = lambda s=sleepy: s.Predict(encode_windows(w), timeout=10)
            parts["loopback_no_spin_b64"] = lambda s=sleepy: s.Predict(encode_windows(w64), timeout=10)
            for k, fn in parts.items():
                t = timed(fn, n // 2)
                res.setdefault(k, []).append(t)
            res.setdefault("in_process_gap", []).append(timed(lambda: rt.predict(w), n // 2, gap_s=IDLE_GAP_S))
            for name, ch in channels.items():  # open only while timed: an open stream sends Predict to a thread
                st = StreamWindows(InferenceStub(ch), w64, rates)
                res.setdefault(name + "_stream", []).append(timed(st, n // 2))
                st.close()
        res = {k: {"p50_ms": float(np.median([t["p50_ms"] for t in ts])),
                   "p99_ms": float(max(t["p99_ms"] for t in ts)), "n": sum(t["n"] for t in ts)}
               for k, ts in res.items()}
        res["inside_server"] = inside_server(state, windows, n, tmp)
        res["request_bytes"] = {"raw": encode_windows(w).ByteSize(), "repeated_float": floats(w).ByteSize()}
    finally:
        for p in (tcp, unix, no_spin_proc):
            p.terminate()
            p.wait(30)
    res["ratio_p50"] = {k: res[k]["p50_ms"] / res["in_process_b64" if "_b64" in k else "in_process"]["p50_ms"]
                        for k in res if k not in ("in_process", "in_process_b64", "request_bytes", "inside_server")}
    return res


class StreamWindows(object):
    """``StreamPredict`` as a device app uses it for continuous inference: one stream stays open and each
    call sends every modality's next window of samples (hop = window) and reads that window's prediction;
    the call's time is the round trip of one window. The first call's window may be predicted before the
    later modalities joined (timed() warms up past it)."""

    def __init__(self, stub: Any, windows: Dict[str, np.ndarray], rates: Dict[str, float]) -> None:
        import queue

        from shared.rpc import pb
        self.q = queue.Queue()  # type: Any
        self.chunks = [[pb.SamplesChunk(modality=m, channels=a.shape[2], raw=np.ascontiguousarray(a[i], "<f4").tobytes(),
                                        rate_hz=rates[m], hop_fraction=1.0) for m, a in windows.items()]
                       for i in range(len(next(iter(windows.values()))))]
        self.i = 0
        self.responses = stub.StreamPredict(iter(self.q.get, None), timeout=3600)

    def __call__(self) -> Any:
        for c in self.chunks[self.i % len(self.chunks)]:
            self.q.put(c)
        self.i += 1
        return next(self.responses)

    def close(self) -> None:
        self.q.put(None)
        for _ in self.responses:
            pass


def inside_server(state: str, windows: Dict[str, np.ndarray], n: int, tmp: str) -> Dict[str, float]:
    """Where a Predict's round trip goes: ``n`` Predicts at batch 1 to a server started with
    ``--metrics-listen``, the client's p50 against the mean time the server itself spent in the call
    (``cosmo_edge_model_seconds``: decoding, the model, the response). Its own server: the metrics add a
    little to every call, so the figures of ``over_grpc`` come from servers without them."""
    import re
    import socket
    import urllib.request

    import grpc

    from edge.wire import encode_windows
    from shared.rpc import InferenceStub
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        mport = s.getsockname()[1]
    proc, port = _serve(state, "127.0.0.1:0", os.path.join(tmp, "ready_metrics"),
                        ["--metrics-listen", "127.0.0.1:{}".format(mport)])
    try:
        stub = InferenceStub(grpc.insecure_channel("127.0.0.1:{}".format(port)))
        w = {m: a[:1] for m, a in windows.items()}
        t = timed(lambda: stub.Predict(encode_windows(w), timeout=10), n, warmup=0)
        text = urllib.request.urlopen("http://127.0.0.1:{}/metrics".format(mport), timeout=10).read().decode()
    finally:
        proc.terminate()
        proc.wait(30)
    got = {k: float(re.search(r'cosmo_edge_model_seconds_{}{{method="Predict"}} (\S+)'.format(k), text).group(1))
           for k in ("sum", "count")}
    return {"client_p50_ms": t["p50_ms"], "server_mean_ms": 1000.0 * got["sum"] / got["count"], "n": n}


def ort_profile(model_dir: str, windows: Dict[str, np.ndarray], batch: int = 32, runs: int = 50) -> List[Any]:
    """Where ONNX Runtime spends its time at ``batch`` (one thread): [op type, share of node time]."""
    import onnxruntime as ort

    from edge.runtime import Runtime
    rt = Runtime.load(model_dir)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    sess = ort.InferenceSession(os.path.join(model_dir, "model.onnx"), sess_options=so,
                                providers=["CPUExecutionProvider"])
    w = {m: a[:batch] for m, a in windows.items()}
    present = rt.present_mask(w, batch)
    feed = {m: ((w[m] - rt._mean[j]) / rt._std[j]).astype(np.float32) for j, m in enumerate(rt.modalities)}
    feed["present"] = present.astype(np.float32)
    for _ in range(runs):
        sess.run(None, feed)
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    by_op = {}  # type: Dict[str, float]
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            by_op[op] = by_op.get(op, 0.0) + float(e.get("dur", 0))
    total = sum(by_op.values()) or 1.0
    return [[op, t / total] for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])[:8]]


def _edge_agent() -> List[str]:
    """The installed console script (what a deployment runs), else ``python -m edge.cli``."""
    script = os.path.join(os.path.dirname(sys.executable), "edge-agent")
    return [script] if os.path.isfile(script) else [sys.executable, "-m", "edge.cli"]


def _peak_rss_mb(pid: int) -> float:
    with open("/proc/{}/status".format(pid)) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _torch_mapped(pid: int) -> bool:
    with open("/proc/{}/maps".format(pid)) as f:
        maps = f.read()
    return "libtorch" in maps or "/torch/" in maps


def _start(cmd: List[str], ready: str, windows: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """Start ``cmd``, wait for its ready file, send one Predict; time to that answer, peak RSS, torch."""
    import grpc

    from edge.wire import encode_windows
    from shared.rpc import InferenceStub
    if os.path.exists(ready):
        os.remove(ready)
    req = encode_windows({m: a[:1] for m, a in windows.items()})
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_server_env())
    try:
        while not os.path.exists(ready):
            if proc.poll() is not None:
                raise RuntimeError("server exited: {}".format(proc.stderr.read().decode()[-500:]))
            time.sleep(0.005)
        with open(ready) as f:
            port = int(f.read())
        InferenceStub(grpc.insecure_channel("127.0.0.1:{}".format(port))).Predict(req, timeout=60,
                                                                                  wait_for_ready=True)
        dt = time.perf_counter() - t0
        return {"seconds": dt, "peak_rss_mb": _peak_rss_mb(proc.pid), "torch_mapped": _torch_mapped(proc.pid)}
    finally:
        proc.terminate()
        proc.wait(30)


def cold_start(model_dir: str, windows: Dict[str, np.ndarray], starts: int, tmp: str) -> Dict[str, Any]:
    from edge.agent import Agent
    state = os.path.join(tmp, "state")
    Agent(state, "").swap_to(model_dir)
    ready = os.path.join(tmp, "ready")
    cmds = {"edge_agent_serve": _edge_agent() + ["serve", "--state-dir", state, "--listen", "127.0.0.1:0",
                                                 "--ready-file", ready],
            "bare_ort_server": [sys.executable, "-c", BARE_SERVER, model_dir, "127.0.0.1:0", ready]}
    runs = {k: [] for k in cmds}  # type: Dict[str, List[Dict[str, Any]]]
    for cmd in cmds.values():  # untimed: writes the bytecode caches and warms the page cache
        _start(cmd, ready, windows)
    for _ in range(starts):  # interleaved: drift hits both alike
        for k, cmd in cmds.items():
            runs[k].append(_start(cmd, ready, windows))
    out = {}  # type: Dict[str, Any]
    for k, rs in runs.items():
        out[k] = {"seconds_median": statistics.median(r["seconds"] for r in rs),
                  "seconds": [r["seconds"] for r in rs],
                  "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in rs),
                  "torch_mapped": any(r["torch_mapped"] for r in rs)}
    out["ratio_seconds"] = out["edge_agent_serve"]["seconds_median"] / out["bare_ort_server"]["seconds_median"]
    return out


def conv_reading(e: Dict[str, Any], profile: List[Any]) -> str:
    """How fast the convolutions already run at batch 32, and what 3x torch would ask of them."""
    macs = 32 * e["conv_macs_per_window"]
    conv_share = sum(share for op, share in profile if "Conv" in op)
    ort_ms, torch_ms = e["batch_32"]["onnxruntime"]["p50_ms"], e["batch_32"]["torch_eager"]["p50_ms"]
    return ("Convolutions: {:.1f} M multiply-adds per window. At batch 32 ONNX Runtime's convolution kernels "
            "run them at {:.0f} GMAC/s on one core ({:.0%} of {:.2f} ms); torch eager's whole batch takes {:.2f} ms "
            "({:.0f} GMAC/s counting the convolutions alone). 3x torch would be {:.2f} ms per batch: the "
            "convolutions alone at {:.0f} GMAC/s even if everything else took no time.".format(
                e["conv_macs_per_window"] / 1e6, macs / (conv_share * ort_ms * 1e6), conv_share, ort_ms, torch_ms,
                macs / (torch_ms * 1e6), torch_ms / 3, macs / (torch_ms / 3 * 1e6)))


def markdown(r: Dict[str, Any]) -> str:
    e, g, c = r["engines"], r["grpc"], r["cold_start"]
    lines = ["# Edge serving latency", "", "`{}` on {} ({} windows of `{}`), {}.".format(
        r["command"], r["machine"], r["windows"], r["windows_file"], r["date"]), "",
        "## ONNX Runtime vs torch eager (one thread each, same inputs)", "",
        "| batch | engine | p50 ms | p99 ms | windows/s |", "|---|---|---|---|---|"]
    for b in ("batch_1", "batch_32"):
        for name in ("onnxruntime", "torch_eager"):
            t = e[b][name]
            lines.append("| {} | {} | {:.3f} | {:.3f} | {:.0f} |".format(b[6:], name, t["p50_ms"], t["p99_ms"],
                                                                         t["windows_per_s"]))
    lines += ["", "ORT speed-up (p50): **{:.1f}x** at batch 1, **{:.1f}x** at batch 32.".format(
        e["batch_1"]["ort_speedup_p50"], e["batch_32"]["ort_speedup_p50"]), "",
        "ONNX Runtime's own profile at batch 32 (share of node time by op type): " + ", ".join(
            "{} {:.0%}".format(op, share) for op, share in r["ort_profile_batch_32"]) + ".", "",
        conv_reading(e, r["ort_profile_batch_32"]), "",
        "## Predict at batch 1: gRPC against the in-process call", "",
        "| path | p50 ms | p99 ms | p50 / in-process |", "|---|---|---|---|",
        "| in-process `Runtime.predict` | {:.3f} | {:.3f} | 1.00 |".format(g["in_process"]["p50_ms"],
                                                                         g["in_process"]["p99_ms"]),
        "| in-process, after {:g} ms idle | {:.3f} | {:.3f} | {:.2f} |".format(
            IDLE_GAP_S * 1000, g["in_process_gap"]["p50_ms"], g["in_process_gap"]["p99_ms"],
            g["ratio_p50"]["in_process_gap"])]
    for k in ("loopback", "unix_socket", "loopback_repeated_float", "unix_socket_repeated_float",
              "loopback_no_spin", "loopback_empty_rpc", "unix_socket_empty_rpc", "loopback_stream",
              "unix_socket_stream"):
        lines.append("| gRPC {} | {:.3f} | {:.3f} | {:.2f} |".format(
            k.replace("_stream", " StreamPredict, per window").replace("_no_spin", " `--ort-no-spin`").replace(
                "_", " "), g[k]["p50_ms"], g[k]["p99_ms"], g["ratio_p50"][k]))
    lines.append("| in-process, batch 64 | {:.3f} | {:.3f} | 1.00 |".format(g["in_process_b64"]["p50_ms"],
                                                                           g["in_process_b64"]["p99_ms"]))
    for k in ("loopback_b64", "loopback_b64_repeated_float", "loopback_no_spin_b64"):
        lines.append("| gRPC {} | {:.3f} | {:.3f} | {:.2f} |".format(
            k.replace("_b64", ", batch 64").replace("_no_spin", " `--ort-no-spin`").replace("_", " "),
            g[k]["p50_ms"], g[k]["p99_ms"], g["ratio_p50"][k]))
    floor = g["ratio_p50"]["unix_socket_empty_rpc"]
    lines += ["", "Reading: an empty RPC alone costs {:.2f}x the in-process Predict, so a Predict over gRPC "
              "cannot get under about {:.1f}x at batch 1 with Python gRPC on this machine; the rest is the model "
              "call and the message conversion. At batch 64 the compact raw form costs {:.2f}x the in-process call "
              "against {:.2f}x for repeated floats. With ONNX Runtime's threads sleeping between calls "
              "(`--ort-no-spin`) the p99 is {:.3f} against {:.3f} ms at batch 1 and {:.3f} against {:.3f} ms at batch "
              "64, the p50 {:.3f} against {:.3f} ms at batch 1. Continuous inference over one open StreamPredict "
              "stream (no "
              "per-call setup, but a message per modality in and a prediction out per window) costs {:.2f}x "
              "(unix socket) per window.".format(
                  floor, 1 + floor, g["ratio_p50"]["loopback_b64"], g["ratio_p50"]["loopback_b64_repeated_float"],
                  g["loopback_no_spin"]["p99_ms"], g["loopback"]["p99_ms"], g["loopback_no_spin_b64"]["p99_ms"],
                  g["loopback_b64"]["p99_ms"], g["loopback_no_spin"]["p50_ms"], g["loopback"]["p50_ms"],
                  g["ratio_p50"]["unix_socket_stream"])]
    ins = g["inside_server"]
    lines += ["", "Inside the server (its own `cosmo_edge_model_seconds`, {} Predicts to a server with "
              "`--metrics-listen`): {:.3f} ms per call (decoding, model, response) of a {:.3f} ms round trip (p50), "
              "against {:.3f} ms for the same call in a tight in-process loop: the server's share alone is {:.2f}x the "
              "in-process call. The model runs slower between RPCs than back to back: the same in-process call "
              "after {:g} ms idle takes {:.3f} ms ({:.2f}x); in the server the transport's work in between also "
              "evicts the model's data from the caches.".format(
                  ins["n"], ins["server_mean_ms"], ins["client_p50_ms"], g["in_process"]["p50_ms"],
                  ins["server_mean_ms"] / g["in_process"]["p50_ms"], IDLE_GAP_S * 1000, g["in_process_gap"]["p50_ms"],
                  g["ratio_p50"]["in_process_gap"])]
    lines += ["", "The server is `edge-agent serve` in its own process, the client this one (as an app on the "
              "device). *empty rpc* is a health Check: the round trip of a call that does no work, the floor "
              "under any Predict.", "",
              "Request size at batch 1: {raw} bytes raw, {repeated_float} bytes repeated-float.".format(
        **g["request_bytes"]), "", "## Cold start to the first answered Predict", "",
        "| server | median s | peak RSS MB | torch mapped |", "|---|---|---|---|"]
    for k in ("edge_agent_serve", "bare_ort_server"):
        lines.append("| {} | {:.2f} | {:.0f} | {} |".format(k.replace("_", " "), c[k]["seconds_median"],
                                                           c[k]["peak_rss_mb_median"], c[k]["torch_mapped"]))
    lines += ["", "`edge-agent serve` / bare server: **{:.2f}x** (medians of {} interleaved starts).".format(
        c["ratio_seconds"], len(c["edge_agent_serve"]["seconds"])), ""]
    return "\n".join(lines)


def plot(r: Dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    e, g, c = r["engines"], r["grpc"], r["cold_start"]
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    for i, b in enumerate(("batch_1", "batch_32")):
        vals = [e[b]["onnxruntime"]["p50_ms"], e[b]["torch_eager"]["p50_ms"]]
        ax[0].bar([i - 0.2, i + 0.2], vals, width=0.4, color=["tab:blue", "tab:orange"])
    ax[0].set_xticks([0, 1])
    ax[0].set_xticklabels(["batch 1", "batch 32"])
    ax[0].set_ylabel("p50 ms")
    ax[0].set_yscale("log")
    ax[0].legend(handles=[plt.Rectangle((0, 0), 1, 1, color="tab:blue"), plt.Rectangle((0, 0), 1, 1, color="tab:orange")],
                 labels=["ONNX Runtime", "torch eager"])
    ax[0].set_title("engine, one thread")
    keys = ["in_process", "loopback", "unix_socket", "loopback_repeated_float", "unix_socket_stream"]
    ax[1].bar(range(len(keys)), [g[k]["p50_ms"] for k in keys], color="tab:green")
    ax[1].set_xticks(range(len(keys)))
    ax[1].set_xticklabels(["in-process", "gRPC tcp", "gRPC unix", "gRPC tcp\nold floats", "stream unix\nper window"],
                          fontsize=8)
    ax[1].set_ylabel("p50 ms")
    ax[1].set_title("Predict, batch 1")
    ks = ["edge_agent_serve", "bare_ort_server"]
    ax[2].bar([0, 1], [c[k]["seconds_median"] for k in ks], color="tab:purple")
    for i, k in enumerate(ks):
        ax[2].text(i, c[k]["seconds_median"], "{:.0f} MB".format(c[k]["peak_rss_mb_median"]), ha="center",
                   va="bottom")
    ax[2].set_xticks([0, 1])
    ax[2].set_xticklabels(["edge-agent serve", "bare ORT server"])
    ax[2].set_ylabel("s to first Predict (label: peak RSS)")
    ax[2].set_title("cold start")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEMO_MODEL, help="a fine-tuned model folder (default: the demo's)")
    ap.add_argument("--windows", default=DEMO_WINDOWS, help="a saved dataset .npz (default: the demo's test split)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "latency"))
    ap.add_argument("--n", type=int, default=300, help="timed calls per measurement")
    ap.add_argument("--starts", type=int, default=5, help="cold starts per server")
    a = ap.parse_args(argv)
    for path, flag in ((os.path.join(a.model, "model.onnx"), "--model"), (a.windows, "--windows")):
        if not os.path.exists(path):
            print("latency: {} {}: not found; run `bash scripts/demo.sh` first or pass {}".format(
                flag, path, flag), file=sys.stderr)
            return 2
    from shared.data.dataset import MultimodalDataset
    ds = MultimodalDataset.load(a.windows)
    windows = {m: np.ascontiguousarray(x[:64], np.float32) for m, x in ds.x.items()}
    with tempfile.TemporaryDirectory() as tmp:
        print("cold start ({} starts each) ...".format(a.starts), flush=True)
        cs = cold_start(a.model, windows, a.starts, tmp)
        print("gRPC vs in-process ...", flush=True)
        g = over_grpc(a.model, windows, a.n, tmp)
        print("engines ...", flush=True)
        e = engines(a.model, windows, a.n)
        prof = ort_profile(a.model, windows)
    import platform
    r = {"command": command_line("benchmarks.latency", argv),
         "machine": "{} {} cores, Python {}".format(platform.machine(), os.cpu_count(), platform.python_version()),
         "date": time.strftime("%Y-%m-%d"), "model": a.model, "windows_file": os.path.relpath(a.windows, ROOT),
         "windows": len(ds), "engines": e, "grpc": g, "cold_start": cs, "ort_profile_batch_32": prof}
    write_report(a.out, "latency", r, markdown, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
