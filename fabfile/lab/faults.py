"""Faults made on purpose in the lab: links cut between groups of nodes, links slowed.

Rules go inside the nodes (the containers have NET_ADMIN), through `docker exec`, so the
controller always keeps its own SSH access. Cuts live in one iptables chain per node
(REPLIMESH-LAB), so healing is one flush; shaping is egress only (a tbf qdisc on eth0).
"""

from __future__ import annotations

import re

from .errors import LabError
from .nodes import Lab, Node, exec_in, list_nodes

CHAIN = "REPLIMESH-LAB"
_RATE = re.compile(r"^\d+(\.\d+)?(bit|kbit|mbit|gbit)$", re.IGNORECASE)


def parse_groups(text: str) -> list[list[str]]:
    """'node1,node2/node3' -> [['node1', 'node2'], ['node3']]."""
    groups = [[n.strip() for n in part.split(",") if n.strip()] for part in text.split("/")]
    names = [n for group in groups for n in group]
    if len(groups) < 2 or not all(groups):
        raise LabError(f"--groups {text!r}: give two or more groups of nodes separated by "
                       "'/', nodes within a group by ',' (e.g. node1,node2/node3)")
    if len(set(names)) != len(names):
        raise LabError(f"--groups {text!r}: a node is in two groups")
    return groups


def cut_rules(groups: list[list[str]], addresses: dict[str, str]) -> dict[str, list[list[str]]]:
    """Per node, the iptables rules (argv after `iptables`) that drop traffic to and from
    every node of the other groups. Nodes in no group keep all their links."""
    unknown = sorted({n for g in groups for n in g} - set(addresses))
    if unknown:
        raise LabError(f"no node {', '.join(unknown)} in the lab: `fab lab.status` lists them")
    rules = {}
    for index, group in enumerate(groups):
        others = [addresses[n] for i, g in enumerate(groups) if i != index for n in g]
        for name in group:
            rules[name] = [r for a in others for r in (["-A", CHAIN, "-s", a, "-j", "DROP"],
                                                       ["-A", CHAIN, "-d", a, "-j", "DROP"])]
    return rules


def partition(lab: Lab, groups: list[list[str]]) -> None:
    """Cut every link between nodes of different groups (healing any earlier cut first)."""
    nodes = _running(lab)
    rules = cut_rules(groups, {n.name: n.address for n in nodes})
    heal(lab)
    for name, node_rules in rules.items():
        script = "; ".join(["set -e", *(" ".join(["iptables", *r]) for r in node_rules)])
        exec_in(lab, name, "sh", "-c", script)


def heal(lab: Lab) -> None:
    """Restore every link between the lab's running nodes."""
    for node in _running(lab):
        exec_in(lab, node.name, "sh", "-c", _ENSURE_CHAIN + f"; iptables -F {CHAIN}")


_ENSURE_CHAIN = (f"iptables -N {CHAIN} 2>/dev/null || true; "
                 f"iptables -C INPUT -j {CHAIN} 2>/dev/null || iptables -I INPUT -j {CHAIN}; "
                 f"iptables -C OUTPUT -j {CHAIN} 2>/dev/null || iptables -I OUTPUT -j {CHAIN}")


def shape_command(rate: str) -> str:
    """The tc command that limits a node's outgoing traffic to rate ('' removes it)."""
    if not rate:
        return "tc qdisc del dev eth0 root 2>/dev/null || true"
    if not _RATE.match(rate):
        raise LabError(f"--rate {rate!r}: a tc rate such as 100mbit, 512kbit or 1gbit")
    return f"tc qdisc replace dev eth0 root tbf rate {rate} burst 256kbit latency 400ms"


def shape(lab: Lab, node: str, rate: str) -> None:
    running = {n.name for n in _running(lab)}
    if node not in running:
        raise LabError(f"{node} is not a running node of lab {lab.name}: see `fab lab.status`")
    exec_in(lab, node, "sh", "-c", shape_command(rate))


def _running(lab: Lab) -> list[Node]:
    return [n for n in list_nodes(lab) if n.state == "running"]
