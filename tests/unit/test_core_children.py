"""A child started with children.tied() dies with the process that started it, even
one killed with SIGKILL (a killed round must not leave its Unison running)."""

import os
import signal
import subprocess
import sys
import time

from tests.unit.support import REPO

PARENT = """
import subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from plugins.module_utils.replimesh import children
child = subprocess.Popen(["sleep", "60"], preexec_fn=children.tied(), start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_child_dies_with_its_killed_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT, REPO], stdout=subprocess.PIPE,
                              text=True)
    child = int(parent.stdout.readline())
    assert alive(child)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)
