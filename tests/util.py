"""Small helpers shared by the tests."""
import time


def wait_until(cond, timeout=30.0, what="a condition", every=0.05):
    """Poll ``cond()`` until it is true; ``AssertionError`` naming ``what`` after ``timeout`` seconds. A guard
    against a hang, not a timing assertion."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(every)
    raise AssertionError("timed out waiting for " + what)


def self_signed(tmp_path, name):
    """A self-signed certificate for localhost / 127.0.0.1: (cert path, key path); skips without openssl."""
    import shutil
    import subprocess

    import pytest
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    key, cert = tmp_path / (name + ".key"), tmp_path / (name + ".crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return str(cert), str(key)


def synthetic_pretrain(root, epochs=2, extra=()):
    """`cloud-server pretrain` of a small synthetic set (modalities a, b; 3 classes) into root/cloud: its
    edge data are root/cloud/edge_data. Returns the output folder."""
    from cloud.cli import main as cloud_main
    from shared.data import make_synthetic
    ds = make_synthetic(num_subjects=8, windows_per_subject=30, num_classes=3,
                        modalities=(("a", 32, 3), ("b", 32, 3)), informativeness=(1.0, 0.3), seed=0)
    ds.save(str(root / "syn"))
    cfg = root / "s1.yaml"
    cfg.write_text("encoder_widths: [8, 8, 8]\nout_steps: 4\nproj_hidden: 32\nbatch_size: 32\n")
    out = root / "cloud"
    assert cloud_main(["pretrain", "--dataset", str(root / "syn.npz"), "--config", str(cfg), "--epochs", str(epochs),
                       "--labels-per-class", "3", "--out", str(out), "--no-progress"] + list(extra)) == 0
    return out


def scrape(port, host="127.0.0.1"):
    """``{(name, ((label, value), ...)): value}`` of a daemon's ``/metrics`` (Prometheus text format, parsed
    by the client library's own parser)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen("http://{}:{}/metrics".format(host, port), timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def sample(metrics, metric, **labels):
    """The value of series ``metric{labels}`` (a subset of its labels is enough if it picks one), else 0."""
    hits = [v for (n, ls), v in metrics.items() if n == metric and set(labels.items()) <= set(ls)]
    assert len(hits) <= 1, "{}{} matches {} series".format(metric, labels, len(hits))
    return hits[0] if hits else 0.0
