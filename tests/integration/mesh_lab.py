"""How tests act on a deployed lab's nodes over real SSH, and the lab imesh that the mesh
and membership tests share."""

import json
import os
import shlex
import subprocess

from fabfile.lab import access, faults
from fabfile.lab.nodes import Lab

from .helpers import running_nodes

ROOT = "/srv/replimesh/data"
BACKUP = ".replimesh-backup"  # under each root, never synced
HOME = "/var/lib/replimesh"
MESH_FILES = f"{HOME}/mesh"  # the peer list, known_hosts, round results
# The tests that run rounds by hand and look at what each did deploy without watchers
# (test_watch.py starts them); replimesh_watch is on by default.
NO_WATCHER = ["-e", "replimesh_watch=false"]
# The fault tests' lab and the chaos run: short timeouts keep them fast (a dead peer
# costs 3 s, a vanished one 6 s, a session held open with nothing sent 15 s), and no
# cron rounds (fresh_replicas leaves none).
FAULT = Lab(os.environ.get("REPLIMESH_FAULT_LAB", "ifault"))
DEPLOY = ["-e", "replimesh_connect_timeout=3", "-e", "replimesh_ssh_keepalive_interval=2",
          "-e", "replimesh_ssh_keepalive_count=3", "-e", "replimesh_agent_idle_timeout=15",
          *NO_WATCHER, "-e", "replimesh_watch_fallback=5"]
IDLE_TIMEOUT_S = 15


class Nodes:
    """Commands on the nodes of one lab, as root or as the sync user."""

    def __init__(self, lab: Lab):
        self.lab = lab

    def on(self, node, command, check=True, stdin="", timeout=300):
        """Run a command on a node as root over real SSH, stdin given to it."""
        done = subprocess.run(["ssh", *access.ssh_options(self.lab), f"root@{node.address}",
                               command], input=stdin, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"{node.name}: {command} failed: {done.stderr or done.stdout}")
        return done

    def as_sync_user(self, node, command, check=True, stdin="", timeout=300):
        return self.on(node, f"runuser -u replimesh -- {command}", check=check, stdin=stdin,
                       timeout=timeout)

    def write(self, node, name, text):
        path = shlex.quote(f"{ROOT}/{name}")
        self.on(node, f"printf %s {shlex.quote(text)} > {path} && chown replimesh: {path}")

    def listing(self, node):
        return sorted(self.on(node, f"ls -A {ROOT}").stdout.split())

    def contents(self, node):
        """{name: text} of the regular files at the top of the root (backups left out);
        files of 4 KiB or more are given by their md5."""
        done = self.on(node, f"cd {ROOT} && for f in *; do [ -f \"$f\" ] || continue; "
                             "if [ $(stat -c %s \"$f\") -lt 4096 ]; then t=$(cat \"$f\"); "
                             "else t=md5:$(md5sum < \"$f\"); fi; "
                             "printf '%s\\0%s\\0' \"$f\" \"$t\"; done; true")
        fields = done.stdout.split("\0")
        return dict(zip(fields[0:-1:2], fields[1::2]))

    def sync(self, node, *flags):
        done = self.as_sync_user(node, " ".join(["replimesh sync --json", *flags]), check=False)
        return done.returncode, {p["peer"]: p for p in json.loads(done.stdout)["peers"]}


def fresh_replicas(lab: Lab) -> dict:
    """Every node running, linked, unshaped, with no Unison left, empty replicas and no
    history: no Unison archives, no records of the replicas (counts, indexes, histories;
    their locks stay), no backups. {name: node}."""
    faults.heal(lab)
    found = {n.name: n for n in running_nodes(lab)}
    nodes = Nodes(lab)
    for node in found.values():
        nodes.on(node, f"tc qdisc del dev eth0 root 2>/dev/null; pkill -x unison; "
                       f"find {ROOT} -mindepth 1 -delete; "
                       f"find {HOME}/.unison -type f -delete; "
                       f"find {HOME}/replicas -type f ! -name '*.lock' -delete; true")
    return found


MESH = Lab("imesh")
_MESH = Nodes(MESH)
on, as_sync_user, write, listing, sync = (_MESH.on, _MESH.as_sync_user, _MESH.write,
                                          _MESH.listing, _MESH.sync)


def peer_list(node):
    """{name: entry} of the node's peer list."""
    done = as_sync_user(node, "replimesh peers list --json")
    return {e["name"]: e for e in json.loads(done.stdout)["peers"]}


def fab_mesh(task):
    """`fab mesh.*` against the lab's inventory, as an operator runs it."""
    env = dict(os.environ, REPLIMESH_INVENTORY=str(MESH.inventory_dir))
    return subprocess.run(["fab", task], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, env=env, timeout=300, check=False)
