"""The lab imesh that the mesh and membership tests share, and how they act on its nodes."""

import json
import os
import shlex
import subprocess

from fabfile.lab import access
from fabfile.lab.nodes import Lab

MESH = Lab("imesh")
ROOT = "/srv/replimesh/data"


def on(node, command, check=True, stdin=""):
    """Run a command on a node as root over real SSH, stdin given to it."""
    done = subprocess.run(["ssh", *access.ssh_options(MESH), f"root@{node.address}", command],
                          input=stdin, capture_output=True, text=True, timeout=300,
                          check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{node.name}: {command} failed: {done.stderr or done.stdout}")
    return done


def as_sync_user(node, command, check=True, stdin=""):
    return on(node, f"runuser -u replimesh -- {command}", check=check, stdin=stdin)


def write(node, name, text):
    on(node, f"printf %s {shlex.quote(text)} > {ROOT}/{name} && chown replimesh: {ROOT}/{name}")


def listing(node):
    return sorted(on(node, f"ls -A {ROOT}").stdout.split())


def sync(node):
    done = as_sync_user(node, "replimesh sync --json", check=False)
    return done.returncode, {p["peer"]: p for p in json.loads(done.stdout)["peers"]}


def peer_list(node):
    """{name: entry} of the node's peer list."""
    done = as_sync_user(node, "replimesh peers list --json")
    return {e["name"]: e for e in json.loads(done.stdout)["peers"]}


def fab_mesh(task):
    """`fab mesh.*` against the lab's inventory, as an operator runs it."""
    env = dict(os.environ, REPLIMESH_INVENTORY=str(MESH.inventory_dir))
    return subprocess.run(["fab", task], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
