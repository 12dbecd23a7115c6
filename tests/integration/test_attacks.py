"""Attacks with a stolen node key, on the deployed lab ifault: node1's private sync key
is copied to the controller and used the way a thief would, against node2 and node3,
with real ssh and real Unison. Each attack must fail, and the honest nodes must keep
working: their rounds still converge and nothing is lost.

Every test here failed on the code before the confinement issue (see its closing note).
"""

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fabfile.lab import access

from .mesh_lab import FAULT, HOME, Nodes, fresh_replicas

LAB = Nodes(FAULT)
on, as_sync_user, sync, write, contents = (LAB.on, LAB.as_sync_user, LAB.sync, LAB.write,
                                           LAB.contents)


@pytest.fixture
def nodes(fault_lab):
    return fresh_replicas(fault_lab)


@pytest.fixture
def stolen_key(nodes, tmp_path):
    """node1's private sync key, on the controller."""
    key = tmp_path / "stolen"
    key.write_text(on(nodes["node1"], f"cat {HOME}/.ssh/id_ed25519").stdout)
    key.chmod(0o600)
    return key


def as_thief(key, node, *command, stdin="", timeout=60):
    """`ssh -i KEY replimesh@NODE command...` from the controller: what a thief holding
    node1's key can do. Host keys are the lab's pinned ones."""
    return subprocess.run(
        ["ssh", *access.ssh_options(FAULT), "-i", str(key), "-o", "IdentitiesOnly=yes",
         f"replimesh@{node.address}", *command],
        input=stdin, capture_output=True, text=True, timeout=timeout, check=False)


def honest_round_converges(nodes):
    """The nodes still work after an attack: a file written on node2 reaches every node
    through node2's round, and every node ends with the same files."""
    write(nodes["node2"], "after-attack.txt", "still working")
    code, _ = sync(nodes["node2"])
    assert code == 0
    seen = {name: contents(node) for name, node in nodes.items()}
    assert all(files == seen["node2"] for files in seen.values()), seen
    assert seen["node2"]["after-attack.txt"] == "still working"


# --- Confinement of the Unison server -------------------------------------------------


# --- Nothing root or sshd trusts is writable by the sync user ---------------------------


# --- Bounded work per peer, peer-supplied text as data ----------------------------------

LOGS = "/var/log/replimesh"
EXCHANGE = "replimesh peers exchange"


def log_size(node):
    return int(on(node, f"cat {LOGS}/peers.log {LOGS}/serve.log 2>/dev/null | wc -c").stdout)


def bogus_entries(node, size=4 << 20):
    """A peer list of size bytes: node's own entries, then tombstones of new names, all
    "newer", each with a well-formed signature made over something else (each would cost
    a real `ssh-keygen -Y verify`)."""
    real = json.loads(on(node, f"cat {HOME}/peers.json").stdout)
    signature = real["peers"][0]["signature"]
    one = {"addresses": [], "ssh_key": "", "host_keys": [], "state": "removed",
           "version": 99, "signature": signature}
    count = size // len(json.dumps({"name": "bogus00000", **one}))
    bogus = [{"name": f"bogus{n:05d}", **one} for n in range(count)]
    return json.dumps({"format": 2, "peers": real["peers"] + bogus})


def honest_exchange(node, peer):
    """node's own exchange with peer, as its rounds start it: (exit code, seconds)."""
    started = time.monotonic()
    done = as_sync_user(node, f"sh -c 'ssh {peer.address} {EXCHANGE} < {HOME}/peers.json "
                              "> /dev/null'", check=False, timeout=600)
    return done.returncode, time.monotonic() - started


def test_a_flood_of_bogus_entries_costs_seconds_and_blocks_no_other_peer(nodes, stolen_key):
    node2, node3 = nodes["node2"], nodes["node3"]
    flood, before = bogus_entries(node2), log_size(node2)
    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        thief = pool.submit(as_thief, stolen_key, node2, EXCHANGE, stdin=flood, timeout=120)
        time.sleep(0.5)  # the flood is being checked
        code, honest_s = honest_exchange(node3, node2)
        done = thief.result()
    flood_s = time.monotonic() - started
    assert code == 0 and honest_s < 15, honest_s       # was 225 s, behind the flood
    assert done.returncode == 0 and flood_s < 20, flood_s  # was 231 s
    assert log_size(node2) - before < 2000   # was 1.07 MB: a line per bogus entry
    ignored = on(node2, f"grep -c 'ignored bogus00000 .* from node1' {LOGS}/peers.log").stdout
    assert ignored.strip() == "1"
    honest_round_converges(nodes)


def thief_sends(key, node, command, data: bytes):
    """as_thief, with bytes on stdin (text that is not UTF-8)."""
    return subprocess.run(
        ["ssh", *access.ssh_options(FAULT), "-i", str(key), "-o", "IdentitiesOnly=yes",
         f"replimesh@{node.address}", command],
        input=data, capture_output=True, timeout=60, check=False)


@pytest.mark.parametrize("data", [
    b"[" * 200_000,
    b'{"format": 2, "peers": [{"name": "\xff\x1b[2J"}]}',
    b'{"format": 2, "peers": [{"name": "\\udcff"}]}',
    b'{"format": 2, "peers": [], "n": ' + b"9" * 1_000_000 + b"}",
    b'{"format": 2, "peers": [{"name": "n", "version": 1e999}]}',
    b'{"format": 2, "peers": [{"name": "' + b"x" * 1_000_000 + b'"}]}',
], ids=["deep", "not-utf8", "lone-surrogate", "huge-int", "infinite", "long-name"])
def test_a_malformed_exchange_gets_a_one_line_refusal(nodes, stolen_key, data):
    node2 = nodes["node2"]
    lines = int(on(node2, f"cat {LOGS}/serve.log | wc -l").stdout)
    done = thief_sends(stolen_key, node2, EXCHANGE, data)
    err = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 1 and done.stdout == b""
    assert err.count("\n") == 1 and err.startswith("replimesh: "), err[:2000]
    assert "Traceback" not in err and len(err) < 1200   # a long name was 1 MB
    added = on(node2, f"tail -n +{lines + 1} {LOGS}/serve.log").stdout.splitlines()
    assert len(added) == 1 and " exchange with node1 failed: " in added[0], added
    assert len(added[0]) < 1200


def test_a_newline_in_a_requested_root_forges_no_log_line(nodes, stolen_key):
    node2 = nodes["node2"]
    lines = int(on(node2, f"cat {LOGS}/serve.log | wc -l").stdout)
    done = as_thief(stolen_key, node2,
                    "replimesh-replica '/x\naccepted node3: forged\x1b[2J' -server")
    assert done.returncode == 1
    added = on(node2, f"tail -n +{lines + 1} {LOGS}/serve.log").stdout.splitlines()
    assert len(added) == 1, added
    assert added[0].endswith(" refused node1: /x\\naccepted node3: forged\\x1b[2J is not "
                             "a replica of node2"), added


def test_an_exchange_that_sends_nothing_is_cut_off(nodes, stolen_key):
    node2 = nodes["node2"]
    idle = subprocess.Popen(  # stdin stays open and silent: `sleep 100000 | ssh ...`
        ["ssh", *access.ssh_options(FAULT), "-i", str(stolen_key), "-o", "IdentitiesOnly=yes",
         f"replimesh@{node2.address}", EXCHANGE],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started, seen, gone = time.monotonic(), False, None
        while time.monotonic() - started < 30 and gone is None:
            serving = on(node2, "pgrep -u replimesh -f 'replimesh serve --peer node1'",
                         check=False).stdout.strip()
            seen = seen or bool(serving)
            if seen and not serving:
                gone = time.monotonic() - started
            time.sleep(0.5)
        assert gone is not None and gone < 12, gone   # was: never
        assert "exchange with node1 failed: peer list from node1: 0 bytes in 5 s, too slow" \
            in on(node2, f"tail -n 1 {LOGS}/serve.log").stdout
    finally:
        idle.kill()
        idle.wait()
    honest_round_converges(nodes)


# --- Swarm admission ---------------------------------------------------------------------
