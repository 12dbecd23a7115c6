"""`fab mesh.status`'s table and the inventory's host records: pure parts only."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from fabfile import inventory, mesh

NOW = datetime(2026, 11, 23, 19, 0, 0, tzinfo=timezone.utc)


def ago(**delta):
    return (NOW - timedelta(**delta)).isoformat()


def status_json(**peers):
    return json.dumps({"node": "x", "peers": peers})


@pytest.mark.parametrize("delta, expected", [
    ({"seconds": 0}, "0s"),
    ({"seconds": 59}, "59s"),
    ({"seconds": 60}, "1m"),
    ({"minutes": 59, "seconds": 59}, "59m"),
    ({"hours": 1}, "1h"),
    ({"hours": 23, "minutes": 59}, "23h"),
    ({"days": 1}, "1d"),
    ({"days": 12, "hours": 5}, "12d"),
    ({"seconds": -30}, "0s"),
])
def test_age_uses_the_largest_whole_unit(delta, expected):
    assert mesh.age(ago(**delta), NOW) == expected


def test_age_without_a_stamp_is_unknown():
    assert mesh.age(None, NOW) == "?"


def test_cell_shows_result_conflicts_and_age():
    assert mesh.cell({"result": "ok", "at": ago(minutes=5)}, NOW) == "ok 5m"
    assert mesh.cell({"result": "ok", "conflicts": 2, "at": ago(hours=3)}, NOW) == "ok!2c 3h"
    assert mesh.cell(None, NOW) == "never"


def test_status_table_has_a_row_per_node_and_dashes_on_the_diagonal():
    outcomes = {
        "node1": (0, status_json(node2={"result": "ok", "at": ago(seconds=30)})),
        "node2": (0, status_json(node1={"result": "unreachable", "at": ago(days=2)})),
    }
    lines = mesh.render_status(["node1", "node2"], outcomes, NOW).splitlines()
    assert [line.split() for line in lines] == [
        ["NODE", "\\", "PEER", "node1", "node2"],
        ["node1", "-", "ok", "30s"],
        ["node2", "unreachable", "2d", "-"],
    ]


def test_failures_and_settled_conflicts_are_told_below_the_table():
    outcomes = {"node1": (0, status_json(
        node2={"result": "ok", "at": ago(seconds=5), "conflicts": 1,
               "settled": ["a.txt: node2's version in place, the other kept as a.c.txt"]},
        node3={"result": "failed", "at": ago(seconds=5), "message": "/d: the peer refused"})),
        "node2": (0, status_json()), "node3": (0, status_json())}
    lines = mesh.render_status(["node1", "node2", "node3"], outcomes, NOW).splitlines()
    assert lines[1].split() == ["node1", "-", "ok!1c", "5s", "failed", "5s"]
    assert lines[4:] == [
        "node1 with node2: conflict a.txt: node2's version in place, the other kept as a.c.txt",
        "node1 with node3: failed: /d: the peer refused"]


def test_columns_are_aligned():
    outcomes = {"node1": (0, status_json(node2={"result": "ok", "at": ago(seconds=1)})),
                "node2": (0, status_json())}
    header, first, second = mesh.render_status(["node1", "node2"], outcomes, NOW).splitlines()
    assert header.index("node2") == first.index("ok 1s") == second.index("-")


def test_unreadable_node_gets_question_marks_and_a_note():
    outcomes = {"node1": (0, status_json(node2={"result": "ok", "at": ago(minutes=1)},
                                         node3={"result": "ok", "at": ago(minutes=2)})),
                "node2": (None, "TimeoutError: timed out"),
                "node3": (0, status_json())}
    lines = mesh.render_status(["node1", "node2", "node3"], outcomes, NOW).splitlines()
    assert lines[2].split() == ["node2", "?", "-", "?"]
    assert lines[3].split() == ["node3", "never", "never", "-"]
    assert lines[4] == "node2: status not read (TimeoutError: timed out)"
    assert len(lines) == 5


@pytest.mark.parametrize("outcome", [(2, "replimesh: config missing\n"), (0, "not json")])
def test_failed_or_garbled_status_is_a_note(outcome):
    lines = mesh.render_status(["node1"], {"node1": outcome}, NOW).splitlines()
    assert lines[1].split() == ["node1", "-"]
    assert lines[2] == f"node1: status not read ({outcome[1].strip()})"


def test_group_hosts_follows_children():
    data = {"all": {"children": ["ungrouped", "mesh"]},
            "mesh": {"hosts": ["node1"], "children": ["east", "west"]},
            "east": {"hosts": ["node2", "node3"]},
            "west": {"hosts": ["node3"], "children": ["far"]},
            "far": {"hosts": ["node4"]},
            "other": {"hosts": ["bastion"]}}
    assert inventory._group_hosts(data, "mesh") == {"node1", "node2", "node3", "node4"}
    assert inventory._group_hosts(data, "absent") == set()


def test_host_takes_ansible_connection_variables():
    host = inventory._host("node1", {
        "ansible_host": "172.29.0.11", "ansible_user": "root", "ansible_port": "2222",
        "ansible_private_key_file": "/lab/id_ed25519",
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=yes "
                                   "-o 'UserKnownHostsFile=/lab/known hosts'"})
    assert host == inventory.Host("node1", "172.29.0.11", "root", 2222, "/lab/id_ed25519",
                                  "/lab/known hosts")


def test_host_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("USER", "operator")
    host = inventory._host("node9", {})
    assert host == inventory.Host("node9", "node9", "operator", 22, None,
                                  str(tmp_path / ".ssh" / "known_hosts"))


INVENTORY = {"all": {"children": ["ungrouped", "mesh", "mesh_removed"]},
             "mesh": {"hosts": ["node3", "node1"]},
             "mesh_removed": {"hosts": ["node5", "node2"]},
             "_meta": {"hostvars": {"node1": {"ansible_host": "10.0.0.1"}}}}


def test_hosts_in_lists_the_group_then_the_optional_groups():
    hosts = inventory.hosts_in(INVENTORY, "inv", "mesh", ("mesh_removed", "absent"))
    assert [h.name for h in hosts] == ["node1", "node3", "node2", "node5"]
    assert hosts[0].address == "10.0.0.1"


def test_hosts_in_lists_a_host_of_two_groups_once():
    data = {**INVENTORY, "mesh_removed": {"hosts": ["node3", "node4"]}}
    hosts = inventory.hosts_in(data, "inv", "mesh", ("mesh_removed",))
    assert [h.name for h in hosts] == ["node1", "node3", "node4"]


def test_hosts_in_needs_hosts_in_the_group_but_not_in_optional_ones():
    data = {"mesh": {"hosts": ["node1"]}, "mesh_removed": {}}
    assert [h.name for h in inventory.hosts_in(data, "inv", "mesh", ("mesh_removed",))] == [
        "node1"]
    with pytest.raises(inventory.InventoryError, match="inventory inv has no hosts in group "
                                                       "'mesh'"):
        inventory.hosts_in({"mesh_removed": {"hosts": ["node2"]}}, "inv", "mesh",
                           ("mesh_removed",))


def test_inventory_dir_is_the_folder_or_the_files_folder(tmp_path):
    (tmp_path / "hosts.yml").write_text("all: {}\n")
    assert inventory.inventory_dir(str(tmp_path)) == tmp_path
    assert inventory.inventory_dir(str(tmp_path / "hosts.yml")) == tmp_path
    assert inventory.inventory_dir("inventory/absent.yml").as_posix() == "inventory"


def test_controller_list_path_follows_the_inventory(tmp_path, monkeypatch):
    (tmp_path / "hosts.yml").write_text("all: {}\n")
    expected = tmp_path / ".replimesh" / "peers.json"
    assert mesh.controller_list_path(str(tmp_path)) == expected
    assert mesh.controller_list_path(str(tmp_path / "hosts.yml")) == expected
    monkeypatch.setenv("REPLIMESH_INVENTORY", str(tmp_path))
    assert mesh.controller_list_path("") == expected
