"""The full mesh on the 4-node lab imesh: site.yml, rounds, dead peers, forced command,
the sync module, fab mesh.*, and cron running rounds by itself."""

import json
import shlex
import time

import pytest

from fabfile.lab import control

from .helpers import playbook, recap, role, running_nodes, wait_until
from .mesh_lab import MESH, ROOT, as_sync_user, fab_mesh, listing, on, sync, write

CONNECT_TIMEOUT = 10  # replimesh_connect_timeout's default
KNOWN_HOSTS = "cat /var/lib/replimesh/mesh/known_hosts"


@pytest.fixture
def nodes(mesh):
    return {n.name: n for n in running_nodes(MESH)}


def test_every_file_reaches_every_node_after_each_node_syncs_once(nodes):
    pinned = {name: on(node, KNOWN_HOSTS).stdout for name, node in nodes.items()}
    for name, node in nodes.items():
        write(node, f"from-{name}.txt", f"written on {name}")
    for node in nodes.values():
        code, peers = sync(node)
        assert code == 0 and {p["result"] for p in peers.values()} == {"ok"}
    # Rounds never add host keys to what the deploy pinned.
    assert {name: on(node, KNOWN_HOSTS).stdout for name, node in nodes.items()} == pinned
    expected = sorted(f"from-{name}.txt" for name in nodes)
    for node in nodes.values():
        assert set(expected) <= set(listing(node))
        assert on(node, f"cat {ROOT}/from-node3.txt").stdout == "written on node3"


def test_a_dead_peer_costs_at_most_the_connect_timeout(nodes):
    node1 = nodes["node1"]
    started = time.monotonic()
    assert sync(node1)[0] == 0
    baseline = time.monotonic() - started

    control.stop(MESH, "node4")
    write(node1, "while-node4-is-down.txt", "v1")
    started = time.monotonic()
    code, peers = sync(node1)
    degraded = time.monotonic() - started

    assert code == 0
    assert peers["node4"]["result"] == "unreachable"
    assert {peers[n]["result"] for n in ("node2", "node3")} == {"ok"}
    assert degraded <= baseline + CONNECT_TIMEOUT + 2, (baseline, degraded)
    for name in ("node2", "node3"):
        assert on(nodes[name], f"cat {ROOT}/while-node4-is-down.txt").stdout == "v1"
    status = json.loads(as_sync_user(node1, "replimesh status --json").stdout)
    assert status["peers"]["node4"]["result"] == "unreachable"

    control.start(MESH, "node4")
    assert sync(nodes["node4"])[0] == 0
    assert on(nodes["node4"], f"cat {ROOT}/while-node4-is-down.txt").stdout == "v1"


@pytest.mark.parametrize("request_", [
    "", "id", "sh -c id", "unison -server; id", "scp -t /tmp", "rsync --server . /tmp",
])
def test_a_peer_key_runs_nothing_but_replimesh(nodes, request_):
    key = "/var/lib/replimesh/.ssh/id_ed25519"
    attempt = as_sync_user(
        nodes["node1"],
        f"ssh -i {key} -T {nodes['node2'].address} {shlex.quote(request_)} </dev/null",
        check=False)
    assert attempt.returncode != 0
    assert "replimesh: refused:" in attempt.stderr
    assert "uid=" not in attempt.stdout
    log = on(nodes["node2"], "tail -1 /var/log/replimesh/serve.log").stdout
    assert " refused node1: " in log


def test_a_peer_key_cannot_forward_ports(nodes):
    key = "/var/lib/replimesh/.ssh/id_ed25519"
    attempt = as_sync_user(
        nodes["node1"],
        f"timeout 20 ssh -i {key} -W 127.0.0.1:22 {nodes['node2'].address} </dev/null",
        check=False)
    assert attempt.returncode == 255
    assert "administratively prohibited" in attempt.stderr


def test_sync_module_check_mode_syncs_nothing_then_a_pass_converges(nodes):
    write(nodes["node1"], "module.txt", "from the module test")
    checked = playbook(MESH, "sync.yml", "--check")
    assert {t["changed"] for t in recap(checked.stdout).values()} == {0}
    assert "module.txt" not in listing(nodes["node2"])

    applied = playbook(MESH, "sync.yml")
    assert recap(applied.stdout)["node1"]["changed"] == 1
    for node in nodes.values():
        assert "module.txt" in listing(node)


def test_sync_pass_goes_on_when_a_node_is_down(nodes):
    control.stop(MESH, "node2")
    write(nodes["node1"], "pass-without-node2.txt", "x")
    done = playbook(MESH, "sync.yml", check=False)
    totals = recap(done.stdout)
    assert totals["node2"]["ignored"] == 1  # unreachable, reported
    assert totals["node1"]["failed"] == totals["node3"]["failed"] == 0
    assert "pass-without-node2.txt" in listing(nodes["node3"])


def test_fab_mesh_sync_and_status(nodes):
    # Converged first: rounds started at once on every node then have nothing to carry.
    # (Two of them carrying the same new file at once can fail one path until the next
    # round; replica locks come with the fault-tolerance issue.)
    playbook(MESH, "sync.yml")
    done = fab_mesh("mesh.sync")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()}
    assert lines == dict.fromkeys(nodes, "ok")

    status = fab_mesh("mesh.status").stdout.splitlines()
    assert status[0].split() == ["NODE", "\\", "PEER", "node1", "node2", "node3", "node4"]
    row = status[1].split()  # node1 - ok 2s ok 2s ok 2s
    assert row[:2] == ["node1", "-"] and row[2::2] == ["ok"] * 3


def test_fab_mesh_sync_reports_a_node_that_is_down(nodes):
    control.stop(MESH, "node3")
    done = fab_mesh("mesh.sync")
    assert done.returncode == 1
    assert done.stderr.strip() == "mesh: 1 of 4 nodes did not complete their round"
    lines = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert lines["node3"].split()[1] == "UNREACHABLE"
    assert "node3 unreachable" in lines["node1"]
    status = fab_mesh("mesh.status").stdout
    assert "node3: status not read" in status


def test_bad_config_is_a_one_line_error_and_exit_2(nodes):
    done = as_sync_user(nodes["node1"], "env REPLIMESH_CONFIG=/nonexistent replimesh sync",
                        check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "replimesh: config /nonexistent does not exist: deploy the node with "
        "playbooks/site.yml (or point REPLIMESH_CONFIG at the node's config)"]


def test_cron_runs_rounds_by_itself(nodes):
    # Only the schedule changes: the cron role, as site.yml runs it, and nothing else.
    role(MESH, "replimesh_cron", "-e", "replimesh_cron_interval=1", "-e", "replimesh_cron_splay=0")
    try:
        write(nodes["node3"], "by-cron.txt", "cron carried me")
        wait_until(lambda: "by-cron.txt" in listing(nodes["node1"]), 150,
                   "a cron round carried by-cron.txt from node3 to node1")
        log = on(nodes["node3"], "cat /var/log/replimesh/sync.log").stdout
        assert "node3: sync round" in log
    finally:
        role(MESH, "replimesh_cron")
