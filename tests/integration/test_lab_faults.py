"""Faults made in the lab on purpose: links cut between groups and healed, a node's
outgoing traffic slowed; each checked with real connections between the nodes."""

import pytest

from fabfile.lab import access

from .helpers import fab, wait_until


def answers(lab, source, target):
    """Whether target's SSH port takes a TCP connection from source (3 s at most)."""
    probe = f"timeout 3 bash -c '</dev/tcp/{target.address}/22' 2>/dev/null && echo open"
    return access.ssh(lab, source, probe, timeout=30).stdout.strip() == "open"


@pytest.fixture
def healed(lab):
    yield
    fab("lab.heal", lab_name=lab.name)


def test_partition_cuts_links_between_groups_only_and_heal_restores_them(lab, nodes, healed):
    node1, node2, node3 = nodes
    fab("lab.partition", "--groups", "node1/node2,node3", lab_name=lab.name)
    assert not answers(lab, node1, node2) and not answers(lab, node2, node1)
    assert not answers(lab, node3, node1)
    assert answers(lab, node2, node3) and answers(lab, node3, node2)
    assert access.ssh(lab, node1, "true").returncode == 0  # the controller keeps its access

    fab("lab.heal", lab_name=lab.name)
    assert answers(lab, node1, node2) and answers(lab, node3, node1)


def test_bad_groups_are_one_line_errors(lab, nodes):
    done = fab("lab.partition", "--groups", "node1,node9/node2", lab_name=lab.name, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == "lab: no node node9 in the lab: `fab lab.status` lists them"


SINK = ("import socket; s = socket.create_server(('', 9999)); c, _ = s.accept(); "
        "[None for _ in iter(lambda: c.recv(1 << 16), b'')]; c.close()")
SEND = ("import socket, sys, time; c = socket.create_connection((sys.argv[1], 9999)); "
        "t = time.monotonic(); c.sendall(bytes(int(sys.argv[2]) << 20)); "
        "c.shutdown(socket.SHUT_WR); c.recv(1); print(time.monotonic() - t)")


def seconds_to_send(lab, source, target, megabytes):
    """Time until target has read megabytes sent by source over TCP (not just buffered:
    the sender waits for the receiver to close after reading everything)."""
    access.ssh(lab, target, f"nohup timeout 120 python3 -c \"{SINK}\" >/dev/null 2>&1 &")
    wait_until(lambda: access.ssh(lab, target, "ss -ltn | grep -q ':9999 '").returncode == 0,
               30, "the sink listens")
    done = access.ssh(lab, source, f"python3 -c \"{SEND}\" {target.address} {megabytes}",
                      timeout=120)
    assert done.returncode == 0, done.stderr
    return float(done.stdout)


def test_shape_limits_what_a_node_sends_until_lifted(lab, nodes):
    node1, node2, _ = nodes
    fab("lab.shape", "node1", "--rate", "8mbit", lab_name=lab.name)
    try:
        qdisc = access.ssh(lab, node1, "tc qdisc show dev eth0").stdout
        assert "tbf" in qdisc and "rate 8Mbit" in qdisc
        # 4 MiB at 8 Mbit/s takes 4.2 s; unshaped, a fraction of a second.
        assert seconds_to_send(lab, node1, node2, 4) > 2.5
    finally:
        fab("lab.shape", "node1", lab_name=lab.name)
    assert "tbf" not in access.ssh(lab, node1, "tc qdisc show dev eth0").stdout
    assert seconds_to_send(lab, node1, node2, 4) < 2
