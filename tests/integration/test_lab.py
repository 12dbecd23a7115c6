"""The lab over real SSH: reachability, pinned host keys, stop/start, Ansible."""

import json
import subprocess

from fabfile.lab import access, control
from fabfile.lab.nodes import exec_in, list_nodes

from .helpers import wait_until


def test_every_node_runs_a_command_over_ssh(lab, nodes):
    assert [n.name for n in nodes] == ["node1", "node2", "node3"]
    for node in nodes:
        done = access.ssh(lab, node, "hostname && pgrep -x cron >/dev/null && echo cron-up")
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [node.name, "cron-up"]


def test_host_keys_are_pinned_not_trusted_on_first_use(lab, nodes, tmp_path):
    strangers = tmp_path / "known_hosts"
    strangers.write_text("")
    options = [o.replace(str(access.known_hosts_path(lab)), str(strangers))
               for o in access.ssh_options(lab)]
    refused = subprocess.run(["ssh", *options, f"root@{nodes[0].address}", "true"],
                             capture_output=True, text=True, timeout=30, check=False)
    assert refused.returncode == 255
    assert "Host key verification failed" in refused.stderr
    assert strangers.read_text() == ""


def test_each_node_has_its_own_host_key(lab, nodes):
    keys = [exec_in(lab, n.name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").split()[1]
            for n in nodes]
    assert len(set(keys)) == len(nodes)
    pinned = access.known_hosts_path(lab).read_text()
    assert all(key in pinned for key in keys)


def test_ansible_reaches_every_node_with_strict_host_keys(lab, nodes):
    done = subprocess.run(
        ["ansible", "-i", str(lab.inventory_dir), "mesh", "-m", "ansible.builtin.ping"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(nodes)


def test_a_stopped_node_comes_back_with_its_address_and_host_key(lab, nodes):
    node2 = nodes[1]
    pinned_before = access.known_hosts_path(lab).read_text()
    control.stop(lab, "node2")
    stopped = {n.name: n for n in list_nodes(lab)}["node2"]
    assert stopped.state == "exited"
    assert access.ssh(lab, stopped, "true", timeout=30).returncode == 255
    inventory = (lab.inventory_dir / "hosts.yml").read_text()
    assert "node2" in inventory  # still a member while it is down

    control.start(lab, "node2")
    back = {n.name: n for n in list_nodes(lab)}["node2"]
    assert (back.state, back.address) == ("running", node2.address)
    assert access.known_hosts_path(lab).read_text() == pinned_before
    assert access.ssh(lab, back, "hostname").stdout.strip() == "node2"


def test_up_again_is_harmless_and_a_larger_count_adds_nodes(lab, nodes):
    ids_before = _container_ids(lab)
    pinned_before = access.known_hosts_path(lab).read_text()
    control.up(lab, 4)
    try:
        after = list_nodes(lab)
        assert [n.name for n in after] == ["node1", "node2", "node3", "node4"]
        assert {k: v for k, v in _container_ids(lab).items() if k != "node4"} == ids_before
        pinned_after = access.known_hosts_path(lab).read_text()
        assert pinned_after.startswith(pinned_before)
        assert "node4," in pinned_after
        lab_json = json.loads((lab.inventory_dir / "lab.json").read_text())
        assert [n["name"] for n in lab_json["nodes"]] == [n.name for n in after]
        wait_until(lambda: access.ssh(lab, after[3], "true").returncode == 0, 30,
                   "node4 answers SSH")
    finally:
        subprocess.run(["docker", "rm", "-f", lab.container("node4")], capture_output=True,
                       check=True)
        control.up(lab, 3)


def _container_ids(lab):
    return {n.name: subprocess.run(["docker", "inspect", "-f", "{{.Id}}", n.container],
                                   capture_output=True, text=True, check=True).stdout.strip()
            for n in list_nodes(lab)}
