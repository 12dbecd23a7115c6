"""The lab's fault rules, computed before anything runs in a node."""

import pytest

from fabfile.lab import faults
from fabfile.lab.errors import LabError

ADDRESSES = {"node1": "172.29.9.11", "node2": "172.29.9.12", "node3": "172.29.9.13",
             "node4": "172.29.9.14"}


def test_groups_are_parsed():
    assert faults.parse_groups("node1, node2/node3") == [["node1", "node2"], ["node3"]]


@pytest.mark.parametrize("text", ["node1", "node1/", "node1//node2", "node1/node1"])
def test_bad_groups_say_how_to_write_them(text):
    with pytest.raises(LabError, match="--groups"):
        faults.parse_groups(text)


def test_each_node_drops_only_the_other_groups_both_ways():
    rules = faults.cut_rules([["node1"], ["node2", "node3"]], ADDRESSES)
    assert set(rules) == {"node1", "node2", "node3"}  # node4: in no group, keeps its links
    assert rules["node1"] == [
        ["-A", faults.CHAIN, "-s", "172.29.9.12", "-j", "DROP"],
        ["-A", faults.CHAIN, "-d", "172.29.9.12", "-j", "DROP"],
        ["-A", faults.CHAIN, "-s", "172.29.9.13", "-j", "DROP"],
        ["-A", faults.CHAIN, "-d", "172.29.9.13", "-j", "DROP"]]
    assert {r[3] for r in rules["node2"]} == {"172.29.9.11"}


def test_unknown_nodes_are_named():
    with pytest.raises(LabError, match="no node node9 in the lab"):
        faults.cut_rules([["node1"], ["node9"]], ADDRESSES)


def test_shape_commands():
    assert faults.shape_command("100mbit") == ("tc qdisc replace dev eth0 root tbf rate "
                                               "100mbit burst 256kbit latency 400ms")
    assert faults.shape_command("").startswith("tc qdisc del dev eth0 root")
    with pytest.raises(LabError, match="a tc rate such as 100mbit"):
        faults.shape_command("100; reboot")
