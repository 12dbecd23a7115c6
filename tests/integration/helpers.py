"""Helpers for integration tests: the operator's CLI, and waiting on a condition."""

import os
import subprocess
import time


def fab(*args, lab_name, check=True):
    """Run the operator's real CLI, as an operator would."""
    done = subprocess.run(["fab", *args], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, REPLIMESH_LAB=lab_name), check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"fab {' '.join(args)} failed: {done.stderr}")
    return done


def wait_until(condition, deadline_s, what):
    """Poll a condition until it holds; fail naming it when the deadline passes."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline_s} s: {what}")
        time.sleep(0.3)
