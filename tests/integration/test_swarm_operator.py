"""Swarm mode from the operator's seat, on the deployed lab ifault (shared with the fault
tests): `fab swarm.publish`
watches a file reach every node, `fab swarm.status` lists it, and
playbooks/swarm_publish.yml publishes from one node and waits on all. Files are checked
by their SHA-256 on every node; the names are this module's own (the lab is shared)."""

import os
import re
import subprocess

import pytest

from .helpers import playbook, recap, running_nodes
from .mesh_lab import Nodes

SWARM_ROOT = "/srv/replimesh/swarm"
SIZE = 8 << 20


def fab_swarm(lab, *args):
    """`fab swarm.*` against the lab's inventory, as an operator runs it (no terminal)."""
    env = dict(os.environ, REPLIMESH_INVENTORY=str(lab.inventory_dir))
    return subprocess.run(["fab", *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, env=env, timeout=600, check=False)


@pytest.fixture(scope="module")
def swarm_nodes(swarm_lab):
    nodes = running_nodes(swarm_lab)
    return Nodes(swarm_lab), {n.name: n for n in nodes}


def make_file(nodes, node, name, size=SIZE):
    """size random bytes at the swarm root of node, owned by the sync user."""
    path = f"{SWARM_ROOT}/{name}"
    nodes.on(node, f"head -c {size} /dev/urandom > {path}.tmp && chown replimesh: {path}.tmp"
                   f" && mv {path}.tmp {path}")
    return path


def sha256s(nodes, by_name, path):
    return {name: nodes.on(node, f"sha256sum {path} 2>/dev/null || echo missing",
                           check=False).stdout.split()[0]
            for name, node in by_name.items()}


def test_fab_publish_shows_every_node_complete(swarm_lab, swarm_nodes):
    nodes, by_name = swarm_nodes
    path = make_file(nodes, by_name["node2"], "operator-fab.bin")
    done = fab_swarm(swarm_lab, "swarm.publish", "--path", "operator-fab.bin",
                     "--host", "node2", "--timeout", "300")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("node2: hashing operator-fab.bin")
    assert lines[1].startswith("node2: published operator-fab.bin (8.4 MB) as ")
    assert {line.split()[2] for line in lines[2:5]} == {"node1", "node3", "node4"}
    assert all(line.split()[3] == "offered" for line in lines[2:5])
    # the final view: one line per node, all complete, then the count
    last = max(i for i, line in enumerate(lines) if "4 of 4 nodes complete" in line)
    assert [line.split()[:2] for line in lines[last - 4:last]] == [
        [name, "complete"] for name in ("node1", "node2", "node3", "node4")]
    assert lines[-1].startswith("operator-fab.bin complete on all 4 nodes")
    assert "\x1b[" not in done.stdout  # no terminal: plain lines, no redraw
    hashes = sha256s(nodes, by_name, path)
    assert len(set(hashes.values())) == 1 and "missing" not in hashes.values(), hashes

    table = fab_swarm(swarm_lab, "swarm.status")
    assert table.returncode == 0, table.stderr
    rows = [re.split(r" {2,}", line.strip()) for line in table.stdout.splitlines()]
    assert rows[0] == ["FILE \\ NODE", "node1", "node2", "node3", "node4"]
    assert ["operator-fab.bin"] + ["complete 100%"] * 4 in rows


def test_fab_publish_refuses_a_host_not_in_the_mesh_and_a_path_not_there(swarm_lab):
    done = fab_swarm(swarm_lab, "swarm.publish", "--path", "x.bin", "--host", "node9")
    assert done.returncode == 2
    assert "node9 is not a node of the mesh" in done.stderr
    done = fab_swarm(swarm_lab, "swarm.publish", "--path", "operator-none.bin",
                     "--host", "node1")
    assert done.returncode == 1
    assert "swarm: publish on node1 failed: replimesh: " in done.stderr
    assert "operator-none.bin is not a regular file" in done.stderr


def test_playbook_publishes_from_one_node_and_waits_on_all(swarm_lab, swarm_nodes):
    nodes, by_name = swarm_nodes
    # not a whole number of pieces: the manifest's last piece is short
    path = make_file(nodes, by_name["node3"], "operator-play.bin", SIZE + 12345)
    done = playbook(swarm_lab, "swarm_publish.yml", "-e", "swarm_source=node3",
                    "-e", "swarm_path=operator-play.bin", "-e", "swarm_timeout=300")
    totals = recap(done.stdout)
    assert {name: (t["failed"], t["unreachable"]) for name, t in totals.items()
            if name != "localhost"} == {n: (0, 0) for n in by_name}
    assert totals["node3"]["changed"] == 1
    hashes = sha256s(nodes, by_name, path)
    assert len(set(hashes.values())) == 1 and "missing" not in hashes.values(), hashes


def test_playbook_without_a_source_says_what_it_needs(swarm_lab):
    done = playbook(swarm_lab, "swarm_publish.yml", "-e", "swarm_path=operator-play.bin",
                    check=False)
    assert done.returncode != 0
    assert "swarm_publish.yml needs -e swarm_source=NODE" in done.stdout
    assert "Hash the file" not in done.stdout  # nothing was published
