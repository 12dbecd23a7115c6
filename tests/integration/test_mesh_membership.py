"""Membership on the lab imesh, after test_mesh.py: a node added and one removed through
the inventory while another node is down, both learned peer to peer from one round,
entries not signed by the operator ignored, a damaged list kept, fab
mesh.peers/propagate, a broken inventory."""

import json
import subprocess
from dataclasses import replace

import pytest
import yaml

from fabfile.lab import control
from fabfile.lab.nodes import list_nodes
from plugins.module_utils.replimesh import peers as peer_lists
from plugins.module_utils.replimesh import signature

from .helpers import playbook, recap, running_nodes
from .mesh_lab import (
    MESH,
    NO_WATCHER,
    ROOT,
    as_sync_user,
    fab_mesh,
    listing,
    on,
    peer_list,
    sync,
    write,
)

PEERS_JSON = "/var/lib/replimesh/mesh/peers.json"
# What sshd gets for the sync user's keys (run as sshd runs it).
AUTHORIZED_KEYS = ("runuser -u replimesh-keys -- /usr/local/sbin/replimesh-authorized-keys "
                   "replimesh")


@pytest.fixture(scope="module")
def before(mesh):
    """node1's list before any membership change: what a node that missed them all holds."""
    running = running_nodes(MESH)
    for node in running:
        no_cron(node)
    return on(running[0], f"cat {PEERS_JSON}").stdout


def no_cron(node):
    """Stop cron on a node: these tests show what one round run by hand does, and a
    scheduled round in between would blur it."""
    on(node, "pkill -x cron || true")


def start(name):
    control.start(MESH, name)
    no_cron(nodes()[name])


def nodes():
    """The lab's nodes as they are now (some may be stopped)."""
    return {n.name: n for n in list_nodes(MESH)}


def test_a_node_added_and_one_removed_while_another_is_down_are_learned_from_one_round(
        before):
    control.up(MESH, 5)  # node5: a new container, added to group mesh of the inventory
    no_cron(nodes()["node5"])
    control.remove(MESH, "node3")  # = fab lab.remove node3: to group mesh_removed
    control.stop(MESH, "node4")
    deployed = recap(playbook(MESH, "site.yml", *NO_WATCHER, check=False).stdout)
    assert deployed["node4"]["unreachable"] == 1
    for name in ("node1", "node2", "node3", "node5"):  # node3 told it is out
        assert deployed[name]["failed"] == deployed[name]["unreachable"] == 0, deployed
    node3_data = listing(nodes()["node3"])

    start("node4")
    node = nodes()
    assert "node5" not in peer_list(node["node4"])  # it missed the deploy
    assert "--peer node3" in on(node["node4"], AUTHORIZED_KEYS).stdout
    _, peers = sync(node["node1"])  # one round, on one node that reaches node4
    assert "node3" not in peers and peers["node4"]["result"] == "ok", peers
    assert peer_list(node["node4"])["node5"]["state"] == "active"
    assert peer_list(node["node4"])["node3"]["state"] == "removed"
    learned = on(node["node4"], "grep 'took node5' /var/log/replimesh/peers.log").stdout
    assert f" {node['node1'].address} took node5 " in learned  # from node1's session
    assert "--peer node3" not in on(node["node4"], AUTHORIZED_KEYS).stdout
    refused = as_sync_user(node["node3"], f"ssh {node['node4'].address} replimesh peers "
                                          "exchange </dev/null", check=False)
    assert refused.returncode == 255 and "Permission denied" in refused.stderr

    write(node["node5"], "from-node5.txt", "node5 joined")
    _, peers = sync(node["node5"])
    assert peers["node4"]["result"] == "ok", peers
    assert on(node["node4"], f"cat {ROOT}/from-node5.txt").stdout == "node5 joined"

    assert on(node["node3"], "test -e /etc/cron.d/replimesh", check=False).returncode == 1
    own_round = as_sync_user(node["node3"], "replimesh sync", check=False)
    assert own_round.returncode == 2 and "node3 is removed from the mesh" in own_round.stderr
    for name in ("node2", "node4"):
        sync(node[name])
    for name, each in node.items():  # node3 never comes back, not even in its own list
        assert peer_list(each)["node3"]["state"] == "removed", name
    assert listing(node["node3"]) == node3_data  # the removed node's data is left alone


def forged(node1_list, key):
    """node1's list with node4 moved to a new address and an intruder added, both signed
    by a key that is not the operator's."""
    entries = peer_lists.parse(json.loads(node1_list))
    node4 = entries["node4"]
    intruder = peer_lists.Entry("intruder", ("172.29.255.254",), node4.ssh_key,
                                node4.host_keys, version=node4.version + 1000)
    moved = replace(node4, addresses=("172.29.255.253",),
                               version=node4.version + 1000)
    for entry in (intruder, moved):
        entries[entry.name] = replace(
            entry, signature=signature.sign(key, peer_lists.payload(entry)))
    return peer_lists.dumps(entries)


def test_entries_not_signed_by_the_operator_change_nothing(before, tmp_path):
    key = tmp_path / "rogue"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    node = nodes()
    original = on(node["node1"], f"cat {PEERS_JSON}").stdout
    keys = on(node["node1"], AUTHORIZED_KEYS).stdout
    bad = forged(original, str(key))

    # From a peer, in a session: the exchange happens, the forged entries are not taken.
    sent = as_sync_user(node["node4"], f"ssh {node['node1'].address} replimesh peers exchange",
                        stdin=bad, check=False)
    assert sent.returncode == 0, sent.stderr
    # From the operator's path: refused, with exit 1.
    pushed = as_sync_user(node["node1"], "replimesh peers accept -", stdin=bad, check=False)
    assert pushed.returncode == 1
    # Checks stop at a sender's first bad signature (known names come first).
    assert json.loads(pushed.stdout)["ignored"] == ["node4"]

    assert on(node["node1"], f"cat {PEERS_JSON}").stdout == original
    assert on(node["node1"], AUTHORIZED_KEYS).stdout == keys
    log = on(node["node1"], "cat /var/log/replimesh/peers.log").stdout
    assert "ignored node4 v" in log
    assert "from node4: not signed by the operator key; 1 more changed entries" in log


def test_a_peer_list_that_does_not_parse_is_kept_and_reported(before):
    node = nodes()
    good = on(node["node4"], f"cat {PEERS_JSON}").stdout
    as_sync_user(node["node4"], f"tee {PEERS_JSON} >/dev/null", stdin="{damaged")
    try:
        own = as_sync_user(node["node4"], "replimesh sync", check=False)
        assert own.returncode == 2
        assert "cannot be read as JSON" in own.stderr and "kept as it is" in own.stderr
        _, peers = sync(node["node1"])  # node4 refuses sessions it cannot check
        assert peers["node4"]["result"] == "failed"
        assert on(node["node4"], f"cat {PEERS_JSON}").stdout == "{damaged"
    finally:
        as_sync_user(node["node4"], f"tee {PEERS_JSON} >/dev/null", stdin=good)


def test_fab_mesh_propagate_brings_a_lagging_node_up_to_date(before):
    node = nodes()
    as_sync_user(node["node4"], f"tee {PEERS_JSON} >/dev/null", stdin=before)  # missed all
    view = fab_mesh("mesh.peers")
    assert view.returncode == 0, view.stderr
    rows = {line.split()[0]: line for line in view.stdout.splitlines()}
    assert "*" in rows["node5"] and "*" in rows["node3"]

    done = fab_mesh("mesh.propagate")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert "changed: node3, node5" in lines["node4"]
    assert "unchanged" in lines["node1"]
    assert peer_list(node["node4"]) == peer_list(node["node1"])
    assert "all nodes agree" in fab_mesh("mesh.peers").stdout


@pytest.mark.parametrize("breakage, message", [
    ("both", "node2 in both groups mesh and mesh_removed"),
    ("same-address", "nodes share an address"),
])
def test_a_broken_inventory_is_refused_before_anything_changes(before, tmp_path, breakage,
                                                               message):
    inventory = yaml.safe_load((MESH.inventory_dir / "hosts.yml").read_text())
    groups = inventory["all"]["children"]
    if breakage == "both":
        groups["mesh_removed"]["hosts"]["node2"] = groups["mesh"]["hosts"]["node2"]
    else:
        groups["mesh"]["hosts"]["node2"]["replimesh_address"] = \
            groups["mesh"]["hosts"]["node1"]["ansible_host"]
    broken = tmp_path / "hosts.yml"
    broken.write_text(yaml.safe_dump(inventory))
    done = subprocess.run(["ansible-playbook", "-i", str(broken), "playbooks/site.yml"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 2
    assert message in done.stdout
    assert {t["changed"] for t in recap(done.stdout).values()} == {0}


def test_a_rotated_operator_key_signs_every_entry_again_and_the_old_one_stops_working(
        before, tmp_path):
    old_key = MESH.inventory_dir / ".replimesh" / "operator_ed25519"
    new_key = tmp_path / "operator"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(new_key)],
                   check=True)
    node = {n.name: n for n in running_nodes(MESH)}
    old = peer_list(node["node1"])

    rotated = recap(playbook(MESH, "site.yml", *NO_WATCHER, "-e",
                                  f"replimesh_operator_key={new_key}").stdout)
    assert {t["failed"] + t["unreachable"] for t in rotated.values()} == {0}
    signers = on(node["node1"], "cat /etc/replimesh/operator_signers").stdout
    assert new_key.with_suffix(".pub").read_text().split()[1] in signers
    for name, each in node.items():  # node3 too: the removed node is told with the new key
        new = peer_list(each)
        assert sorted(new) == sorted(old)
        assert all(new[n]["version"] > old[n]["version"] for n in old), name

    # An entry signed with the old key is now refused like any stranger's.
    entries = peer_lists.parse(json.loads(on(node["node1"], f"cat {PEERS_JSON}").stdout))
    stale = replace(entries["node5"], version=entries["node5"].version + 1,
                    addresses=("172.29.255.252",))
    entries["node5"] = replace(stale, signature=signature.sign(str(old_key),
                                                               peer_lists.payload(stale)))
    pushed = as_sync_user(node["node1"], "replimesh peers accept -",
                          stdin=peer_lists.dumps(entries), check=False)
    assert pushed.returncode == 1 and json.loads(pushed.stdout)["ignored"] == ["node5"]
