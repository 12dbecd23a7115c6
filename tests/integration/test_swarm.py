"""Swarm mode on the deployed 4-node lab ifault (shared with the fault tests): a large
file published on one node
reaches every node with the same SHA-256; a corrupted piece is found and fetched again;
the others finish without the only original holder; a killed daemon resumes; a new
version moves only its changed pieces; a node that was down gets the offer from a
round; and only peers holding a certificate of the mesh CA, from an address of the
peer list, can join the swarm.

Every file here is published under its own name, so the tests do not depend on each
other's files. Sizes are small to keep the suite fast; links are shaped where a test
needs a transfer to last long enough to act in the middle of it.
"""

import json
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from fabfile.lab import control, faults

from .helpers import running_nodes, wait_until
from .mesh_lab import Nodes

SWARM_ROOT = "/srv/replimesh/swarm"
MIB = 1 << 20


@pytest.fixture
def lab(swarm_lab):
    yield swarm_lab
    for node in running_nodes(swarm_lab):
        Nodes(swarm_lab).on(node, faults.shape_command(""))


@pytest.fixture
def nodes(lab):
    """node1..node4 by name, running, unshaped, each with its swarm daemon up."""
    found = {n.name: n for n in running_nodes(lab)}
    for node in found.values():
        Nodes(lab).as_sync_user(node, "replimesh swarm daemon --detach")
    return found


def wait_for(lab, nodes, condition, deadline_s, what):
    """wait_until, and when it fails, the nodes' swarm logs and status in the message."""
    try:
        wait_until(condition, deadline_s, what)
    except AssertionError as failure:
        seen = []
        for node in nodes.values():
            log = Nodes(lab).on(node, "tail -n 15 /var/log/replimesh/swarm.log; "
                                      "runuser -u replimesh -- replimesh swarm status",
                                check=False, timeout=30)
            seen.append(f"--- {node.name}\n{log.stdout}{log.stderr}")
        raise AssertionError(f"{failure}\n" + "\n".join(seen)) from None


def make_file(lab, node, name, mib):
    """A file of mib random MiB under node's swarm root, owned by the sync user."""
    path = f"{SWARM_ROOT}/{name}"
    Nodes(lab).on(node, f"mkdir -p $(dirname {path}) && head -c {mib}M /dev/urandom > {path}"
                        f" && chown -R replimesh: {SWARM_ROOT}")
    return sha256(lab, node, name)


def sha256(lab, node, name):
    done = Nodes(lab).on(node, f"sha256sum {SWARM_ROOT}/{name} 2>/dev/null || true")
    return done.stdout.split()[0] if done.stdout else None


def publish(lab, node, name):
    done = Nodes(lab).as_sync_user(node, f"replimesh swarm publish {name} --json")
    return json.loads(done.stdout)


def status(lab, node, infohash):
    """node's swarm status entry for infohash (None when it has none)."""
    done = Nodes(lab).as_sync_user(node, "replimesh swarm status --json", check=False,
                                   timeout=30)
    if done.returncode != 0:
        return None
    found = [f for f in json.loads(done.stdout)["files"] if f["infohash"] == infohash]
    return found[0] if found else None


def statuses(lab, nodes, infohash):
    with ThreadPoolExecutor(len(nodes)) as pool:
        return dict(zip(nodes, pool.map(lambda n: status(lab, nodes[n], infohash),
                                        nodes)))


def all_complete(lab, nodes, infohash):
    return all(s and s["state"] == "complete" for s in statuses(lab, nodes, infohash).values())


def pieces_between(entries):
    """Whether the nodes' entries hold every piece between them."""
    union = 0
    for entry in entries:
        union |= int(entry["have"] or "0", 16)
    total = entries[0]["pieces"]
    full = ((1 << total) - 1) << ((total + 3) // 4 * 4 - total)
    return union == full


def test_a_published_file_reaches_every_node(lab, nodes):
    digest = make_file(lab, nodes["node1"], "reach/big.bin", 64)
    offer = publish(lab, nodes["node1"], "reach/big.bin")
    assert {p["peer"]: p["result"] for p in offer["peers"]} == {
        "node2": "offered", "node3": "offered", "node4": "offered"}
    wait_for(lab, nodes, lambda: all_complete(lab, nodes, offer["infohash"]), 120,
             "every node holds reach/big.bin")
    for node in nodes.values():
        assert sha256(lab, node, "reach/big.bin") == digest
        leftovers = Nodes(lab).on(node, f"ls -A {SWARM_ROOT}/.replimesh-swarm 2>/dev/null; "
                                        "true").stdout
        assert leftovers.split() == [], f"{node.name} kept a staging folder: {leftovers}"
        owner = Nodes(lab).on(node, f"stat -c %U {SWARM_ROOT}/reach/big.bin").stdout.strip()
        assert owner == "replimesh"
    # Every node but the publisher fetched it; the publisher only seeded.
    assert status(lab, nodes["node1"], offer["infohash"])["downloaded"] == 0


def test_a_corrupted_piece_is_found_and_fetched_again(lab, nodes):
    digest = make_file(lab, nodes["node1"], "corrupt.bin", 16)
    offer = publish(lab, nodes["node1"], "corrupt.bin")
    wait_for(lab, nodes, lambda: all_complete(lab, nodes, offer["infohash"]), 90,
             "everyone holds it")
    Nodes(lab).on(nodes["node3"], f"printf garbage | dd of={SWARM_ROOT}/corrupt.bin bs=1 "
                                  "seek=5000000 conv=notrunc status=none")
    assert sha256(lab, nodes["node3"], "corrupt.bin") != digest
    Nodes(lab).as_sync_user(nodes["node3"], "replimesh swarm verify corrupt.bin")

    def repaired():
        entry = status(lab, nodes["node3"], offer["infohash"])
        return entry and entry.get("repaired", 0) >= 1 and entry["state"] == "complete"
    wait_for(lab, nodes, repaired, 60, "node3 found the bad piece and fetched it again")
    assert sha256(lab, nodes["node3"], "corrupt.bin") == digest
    entry = status(lab, nodes["node3"], offer["infohash"])
    assert entry["repaired"] == 1, entry     # 8 bytes at one offset: one piece
    assert entry["downloaded"] <= 2 * MIB, entry


def test_the_others_finish_without_the_only_original_holder(lab, nodes):
    # node1 sends at 3 MB/s while the others pass pieces on at 0.125 MB/s: they hold
    # every piece between them after about 11 s, each still far from complete (~30 s
    # from node1 alone). node1 is then killed and the others' links freed.
    faults.shape(lab, "node1", "24mbit")
    others = {n: nodes[n] for n in ("node2", "node3", "node4")}
    for name in others:
        faults.shape(lab, name, "1mbit")
    digest = make_file(lab, nodes["node1"], "holder.bin", 32)
    offer = publish(lab, nodes["node1"], "holder.bin")

    def hold_everything_between_them():
        entries = list(statuses(lab, others, offer["infohash"]).values())
        return (all(e and e.get("have") for e in entries)  # every one in the session
                and pieces_between(entries))
    wait_for(lab, nodes, hold_everything_between_them, 120,
             "nodes 2-4 hold every piece between them")
    subprocess.run(["docker", "kill", nodes["node1"].container], check=True,
                   capture_output=True)  # at once: `docker stop` would give it 5 s more
    at_stop = statuses(lab, others, offer["infohash"])
    assert any(e["state"] != "complete" for e in at_stop.values()), \
        f"every node finished before node1 stopped: nothing was tested {at_stop}"
    for name in others:
        faults.shape(lab, name, "")
    wait_for(lab, others, lambda: all_complete(lab, others, offer["infohash"]), 120,
             "nodes 2-4 finish from each other")
    for node in others.values():
        assert sha256(lab, node, "holder.bin") == digest


def test_a_killed_daemon_resumes_where_it_stopped(lab, nodes):
    for name in nodes:
        faults.shape(lab, name, "16mbit")
    size = 48 * MIB
    digest = make_file(lab, nodes["node1"], "resume.bin", size // MIB)
    offer = publish(lab, nodes["node1"], "resume.bin")
    node4 = nodes["node4"]

    def half_there():
        entry = status(lab, node4, offer["infohash"])
        return entry and entry["state"] == "downloading" and entry["progress"] >= 0.5
    wait_for(lab, nodes, half_there, 120, "node4 holds half the file")
    Nodes(lab).on(node4, "pkill -KILL -f 'replimesh swarm daemon'")
    killed_at = status(lab, node4, offer["infohash"])["done_bytes"]
    assert killed_at < size
    Nodes(lab).as_sync_user(node4, "replimesh swarm daemon --detach")
    wait_for(lab, nodes, lambda: all_complete(lab, nodes, offer["infohash"]), 120,
             "every node done")
    assert sha256(lab, node4, "resume.bin") == digest
    fetched_again = status(lab, node4, offer["infohash"])["downloaded"]
    # The restarted daemon fetched what was missing, plus at most the pieces that came
    # in after the last resume data was saved (every 5 s; 6 MB/s here).
    assert fetched_again <= size - killed_at + 32 * MIB, (fetched_again, killed_at)
    assert fetched_again < size, "the restarted daemon fetched the whole file again"
    log = Nodes(lab).on(node4, "cat /var/log/replimesh/swarm.log").stdout
    assert log.count(f"resume.bin: checking {offer['infohash'][:16]}") == 2, log


def test_a_new_version_moves_only_its_changed_pieces(lab, nodes):
    size = 32 * MIB
    make_file(lab, nodes["node1"], "versions.bin", size // MIB)
    first = publish(lab, nodes["node1"], "versions.bin")
    wait_for(lab, nodes, lambda: all_complete(lab, nodes, first["infohash"]), 90,
             "version 1 everywhere")
    # One piece (256 KiB at this size) rewritten in place.
    Nodes(lab).on(nodes["node1"], f"head -c 1000 /dev/urandom | dd of={SWARM_ROOT}/"
                                  "versions.bin bs=1 seek=3000000 conv=notrunc status=none")
    digest = sha256(lab, nodes["node1"], "versions.bin")
    second = publish(lab, nodes["node1"], "versions.bin")
    assert second["infohash"] != first["infohash"]
    wait_for(lab, nodes, lambda: all_complete(lab, nodes, second["infohash"]), 90,
             "version 2 everywhere")
    for name, node in nodes.items():
        assert sha256(lab, node, "versions.bin") == digest
        entry = status(lab, node, second["infohash"])
        assert entry["downloaded"] <= 4 * 256 << 10, (name, entry)
        assert status(lab, node, first["infohash"]) is None, f"{name} still has version 1"


def test_a_node_that_was_down_gets_the_offer_from_a_round(lab, nodes):
    control.stop(lab, "node4")
    digest = make_file(lab, nodes["node1"], "late.bin", 8)
    offer = publish(lab, nodes["node1"], "late.bin")
    sent = {p["peer"]: p["result"] for p in offer["peers"]}
    assert sent == {"node2": "offered", "node3": "offered", "node4": "unreachable"}
    control.start(lab, "node4")
    nodes = {n.name: n for n in running_nodes(lab)}
    Nodes(lab).as_sync_user(nodes["node4"], "replimesh swarm daemon --detach")
    assert status(lab, nodes["node4"], offer["infohash"]) is None
    Nodes(lab).as_sync_user(nodes["node2"], "replimesh sync")  # passes offers on
    wait_for(lab, nodes, lambda: all_complete(lab, nodes, offer["infohash"]), 90,
             "node4 holds late.bin")
    assert sha256(lab, nodes["node4"], "late.bin") == digest


def handshake(infohash: str) -> bytes:
    """A BitTorrent v2 handshake for infohash (truncated to 20 bytes on the wire)."""
    reserved = bytearray(8)
    reserved[7] |= 0x10  # supports v2
    return (b"\x13BitTorrent protocol" + bytes(reserved) + bytes.fromhex(infohash)[:20]
            + b"-XX0000-strangerpeer")


# Connects to a swarm daemon over TLS with a given certificate (the torrent is named by
# SNI, as libtorrent's SSL torrents expect), sends a handshake, prints the answer's hex
# or "refused".
PROBE = """
import socket, ssl, sys
host, infohash, cert, key, ca, hello = sys.argv[1:7]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.load_verify_locations(ca)
ctx.load_cert_chain(cert, key)
try:
    with socket.create_connection((host, 6881), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=infohash[:40]) as tls:
            tls.sendall(bytes.fromhex(hello))
            print(tls.recv(68).hex() or "refused")
except (OSError, ssl.SSLError) as error:
    print("refused", type(error).__name__)
"""
TLS = "/etc/replimesh"


def probe(lab, node, target, offer, cert, key):
    """Run PROBE on node (None: the controller) against target; its one-line answer."""
    args = [target.address, offer["infohash"], cert, key, f"{TLS}/swarm-ca.pem",
            handshake(offer["infohash"]).hex()]
    if node is None:
        args[4] = key.replace("swarm-node.key", "swarm-ca.pem")
        done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True,
                              text=True, timeout=30, check=True)
        return done.stdout.strip()
    return Nodes(lab).as_sync_user(node, f"python3 -c {shlex.quote(PROBE)} "
                                   + " ".join(map(shlex.quote, args))).stdout.strip()


def test_only_peers_with_a_mesh_certificate_can_join(lab, nodes, tmp_path):
    make_file(lab, nodes["node1"], "private.bin", 4)
    offer = publish(lab, nodes["node1"], "private.bin")
    wait_for(lab, nodes, lambda: all_complete(lab, nodes, offer["infohash"]), 60,
             "everyone holds it")
    node2, node3 = nodes["node2"], nodes["node3"]
    mesh = (f"{TLS}/swarm-node.pem", f"{TLS}/swarm-node.key")
    # A peer with its mesh certificate is answered...
    answer = probe(lab, node2, node3, offer, *mesh)
    assert bytes.fromhex(answer).startswith(b"\x13BitTorrent protocol"), answer
    # ...the same peer with a certificate of another CA is not...
    Nodes(lab).on(node2, "cd /tmp && openssl req -x509 -newkey ec -pkeyopt "
                         "ec_paramgen_curve:prime256v1 -nodes -keyout foreign.key -out "
                         "foreign.pem -days 1 -subj /CN=node2 -addext subjectAltName=DNS:* "
                         "2>/dev/null && chown replimesh: foreign.key foreign.pem")
    assert probe(lab, node2, node3, offer, "/tmp/foreign.pem", "/tmp/foreign.key") \
        .startswith("refused")
    # ...nor is the controller, not in the peer list, even with node2's certificate.
    for name in ("swarm-node.pem", "swarm-node.key", "swarm-ca.pem"):
        (tmp_path / name).write_text(Nodes(lab).on(node2, f"cat {TLS}/{name}").stdout)
    assert probe(lab, None, node3, offer, str(tmp_path / "swarm-node.pem"),
                 str(tmp_path / "swarm-node.key")).startswith("refused")
