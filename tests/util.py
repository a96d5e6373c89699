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
