"""Helpers for integration tests: the operator's CLI, and waiting on a condition."""

import os
import subprocess
import time

from fabfile.lab import control
from fabfile.lab.nodes import list_nodes


def fab(*args, lab_name, check=True):
    """Run the operator's real CLI, as an operator would."""
    done = subprocess.run(["fab", *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=600,
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


def playbook(lab, name, *args, check=True):
    """Run one of the project's playbooks on a lab, as an operator would."""
    done = subprocess.run(["ansible-playbook", "-i", str(lab.inventory_dir),
                           f"playbooks/{name}", *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=900, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    return done


def role(lab, name, *args, check=True):
    """Run one role of site.yml, alone, on the lab's mesh: for a test that changes only
    what that role deploys (a full site.yml costs minutes)."""
    done = subprocess.run(["ansible", "-i", str(lab.inventory_dir), "mesh",
                           "-m", "ansible.builtin.include_role", "-a", f"name={name}", *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=900, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"role {name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    return done


def recap(output):
    """{host: {ok, changed, unreachable, failed, ...}} from ansible-playbook's PLAY RECAP."""
    totals = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        words = line.split()
        if len(words) > 2 and words[1] == ":":
            totals[words[0]] = {k: int(v) for k, v in (w.split("=") for w in words[2:])}
    return totals


def running_nodes(lab):
    """The lab's nodes, all running: a test that stopped one gets it back for the next."""
    for node in list_nodes(lab):
        if node.state != "running":
            control.start(lab, node.name)
    return list_nodes(lab)
