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
