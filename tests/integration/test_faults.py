"""Faults made on purpose on the deployed 4-node lab ifault, each checked on the data:
peers stopped before and during a round, a partition healed, a connection cut in the
middle of a large file, a node killed mid-round, one file edited on two nodes, rounds on
every node at once, deletions, a wiped or missing root, and a peer's address changed.

The lab runs no cron rounds: every change is carried by the rounds the tests run. Each
test starts from empty replicas with no history (no Unison archives, no guard records).
"""

import subprocess
import time

import pytest

from fabfile.lab import access, control, faults

from .helpers import running_nodes, wait_until
from .mesh_lab import FAULT, HOME, MESH_FILES, ROOT, Nodes, fresh_replicas

LAB = Nodes(FAULT)
on, sync, write, contents = LAB.on, LAB.sync, LAB.write, LAB.contents
BIG_MB = 40          # sent at 40 Mbit/s: about 8 s per copy, time to cut it
RATE = "40mbit"


@pytest.fixture
def lab(fault_lab):
    return fault_lab


@pytest.fixture
def nodes(lab):
    """node1..node4, running, linked, unshaped, with empty replicas and no history (the
    chaos run on the same lab may have left any of it)."""
    return fresh_replicas(lab)


def converged(nodes, expected=None):
    """Every node's files, the same on all; compared with expected when given."""
    seen = {name: contents(node) for name, node in nodes.items()}
    first = next(iter(seen.values()))
    assert all(files == first for files in seen.values()), seen
    if expected is not None:
        assert first == expected
    return first


def md5(node, name):
    done = on(node, f"md5sum {ROOT}/{name} 2>/dev/null || true")
    return done.stdout.split()[0] if done.stdout else None


def names(node):
    return on(node, f"ls -A {ROOT}").stdout.split()


def big_file(node, name):
    """A file of BIG_MB random MiB on node; its md5."""
    on(node, f"head -c {BIG_MB}M /dev/urandom > {ROOT}/{name} && chown replimesh: {ROOT}/{name}")
    return md5(node, name)


def start_round(node):
    """A round on node in the background, as the sync user over real SSH."""
    return subprocess.Popen(["ssh", *access.ssh_options(FAULT), f"root@{node.address}",
                             "runuser -u replimesh -- replimesh sync"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")


def receiving(node, name):
    """Whether Unison is writing name into node's replica (its temporary file grows)."""
    listing = on(node, f"ls -A {ROOT}").stdout
    return f".unison.{name}." in listing


def every_node_syncs(nodes):
    """A round on every node, so that every pair of nodes shares Unison's history (as in
    a mesh that has been running): without it, two nodes that never synced together see
    a file deleted on one side as new on the other."""
    for node in nodes.values():
        assert sync(node)[0] == 0


def each_wrote_one(nodes, prefix):
    for name, node in nodes.items():
        write(node, f"{prefix}-{name}.txt", f"{prefix} written on {name}")
    return {f"{prefix}-{name}.txt": f"{prefix} written on {name}" for name in nodes}


def test_a_peer_stopped_before_the_round_is_skipped_and_catches_up(lab, nodes):
    control.stop(lab, "node4")
    up = {name: node for name, node in nodes.items() if name != "node4"}
    written = each_wrote_one(up, "before")
    code, peers = sync(nodes["node1"])
    assert code == 0
    assert {p: r["result"] for p, r in peers.items()} == {
        "node2": "ok", "node3": "ok", "node4": "unreachable"}
    converged(up, written)

    control.start(lab, "node4")
    nodes = {n.name: n for n in running_nodes(lab)}
    written.update(each_wrote_one({"node4": nodes["node4"]}, "back"))
    code, _ = sync(nodes["node4"])
    assert code == 0
    converged(nodes, written)


def test_a_peer_stopped_during_the_round_fails_alone(lab, nodes):
    written = each_wrote_one(nodes, "during")
    digest = big_file(nodes["node1"], "big-during.bin")
    faults.shape(lab, "node1", RATE)
    running = start_round(nodes["node1"])  # node2 first, then node3, node4
    wait_until(lambda: receiving(nodes["node2"], "big-during.bin"), 30, "node2 receiving")
    control.stop(lab, "node2")
    output, _ = running.communicate(timeout=180)
    assert running.returncode == 1, output
    assert [line.split()[:2] for line in output.splitlines()[1:4]] == [
        ["node2", "failed"], ["node3", "ok"], ["node4", "ok"]], output
    rest = {name: node for name, node in nodes.items() if name != "node2"}
    files = converged(rest)
    # node2's own file may or may not have come over before it stopped.
    assert {k: files[k] for k in written if "node2" not in k} == \
        {k: v for k, v in written.items() if "node2" not in k}
    assert {md5(node, "big-during.bin") for node in rest.values()} == {digest}

    control.start(lab, "node2")
    nodes = {n.name: n for n in running_nodes(lab)}
    assert "big-during.bin" not in names(nodes["node2"])  # no partial file
    assert sync(nodes["node2"])[0] == 0
    files = converged(nodes)
    assert {k: files[k] for k in written} == written
    assert md5(nodes["node2"], "big-during.bin") == digest


def test_a_connection_cut_mid_transfer_leaves_no_partial_file(lab, nodes):
    digest = big_file(nodes["node1"], "big-cut.bin")
    faults.shape(lab, "node1", RATE)
    running = start_round(nodes["node1"])
    wait_until(lambda: receiving(nodes["node2"], "big-cut.bin"), 30, "node2 receiving")
    faults.partition(lab, [["node1"], ["node2", "node3", "node4"]])
    output, _ = running.communicate(timeout=180)
    assert running.returncode == 1
    assert "node2            failed" in output, output
    for name in ("node2", "node3", "node4"):
        assert "big-cut.bin" not in names(nodes[name]), name

    faults.heal(lab)
    faults.shape(lab, "node1", "")
    code, peers = sync(nodes["node1"])
    assert code == 0 and {p["result"] for p in peers.values()} == {"ok"}
    assert {md5(node, "big-cut.bin") for node in nodes.values()} == {digest}
    # Unison's temporary file of the cut transfer is gone too.
    assert set(converged(nodes)) == {"big-cut.bin"}
    assert [n for n in names(nodes["node2"]) if n.startswith(".unison")] == []


def test_a_node_killed_mid_round_leaves_no_lock_behind(lab, nodes):
    written = each_wrote_one(nodes, "killed")
    digest = big_file(nodes["node1"], "big-killed.bin")
    faults.shape(lab, "node1", RATE)
    running = start_round(nodes["node1"])
    wait_until(lambda: receiving(nodes["node2"], "big-killed.bin"), 30, "node2 receiving")
    subprocess.run(["docker", "kill", nodes["node1"].container], check=True,
                   capture_output=True)
    running.communicate(timeout=60)
    # node2's session from the dead node ends within sshd's keepalive (6 s here), and
    # with it the lock on node2's replica.
    lock = f"{HOME}/replicas/replica-{'?' * 16}.lock"  # the replica lock, no other
    wait_until(lambda: on(nodes["node2"], f"flock -n {lock} true", check=False).returncode == 0,
               30, "node2's replica lock let go of")

    control.start(lab, "node1")
    nodes = {n.name: n for n in running_nodes(lab)}
    code, peers = sync(nodes["node1"])
    assert code == 0 and {p["result"] for p in peers.values()} == {"ok"}, peers
    files = converged(nodes)
    assert {k: files[k] for k in written} == written
    assert {md5(node, "big-killed.bin") for node in nodes.values()} == {digest}


def test_a_file_edited_on_two_nodes_keeps_both_versions(lab, nodes):
    write(nodes["node1"], "shared.txt", "first version")
    every_node_syncs(nodes)
    write(nodes["node2"], "shared.txt", "edited on node2")
    time.sleep(1.1)  # the two edits must differ in modification time, to the second
    write(nodes["node3"], "shared.txt", "edited on node3, later")
    code, peers = sync(nodes["node2"])  # node2 meets node3 first
    assert code == 0
    assert peers["node3"]["conflicts"] == 1
    files = converged(nodes)
    copies = [name for name in files if name.startswith("shared.conflict-node2-")]
    assert len(copies) == 1, files
    assert files["shared.txt"] == "edited on node3, later"
    assert files[copies[0]] == "edited on node2"
    status = LAB.as_sync_user(nodes["node2"], "replimesh status").stdout
    assert f"conflict shared.txt: node3's version in place, the other kept as {copies[0]}" \
        in status


def test_rounds_on_every_node_at_once_all_converge(lab, nodes):
    written = each_wrote_one(nodes, "concurrent")
    rounds = [start_round(node) for node in nodes.values()]
    outputs = [r.communicate(timeout=300)[0] for r in rounds]
    assert [r.returncode for r in rounds] == [0, 0, 0, 0], outputs
    for output in outputs:
        assert " failed " not in output and "unreachable" not in output, output
    converged(nodes, written)


def test_each_side_of_a_partition_converges_then_the_whole_mesh(lab, nodes):
    write(nodes["node1"], "split.txt", "before the split")
    assert sync(nodes["node1"])[0] == 0
    faults.partition(lab, [["node1", "node2"], ["node3", "node4"]])
    written = each_wrote_one(nodes, "split")
    write(nodes["node1"], "split.txt", "edited on node1 during the split")
    time.sleep(1.1)
    write(nodes["node4"], "split.txt", "edited on node4 during the split, later")
    for name, cut_off in (("node1", {"node3", "node4"}), ("node3", {"node1", "node2"})):
        code, peers = sync(nodes[name])
        assert code == 0
        assert {p for p, r in peers.items() if r["result"] == "unreachable"} == cut_off
    side_a = converged({k: nodes[k] for k in ("node1", "node2")})
    side_b = converged({k: nodes[k] for k in ("node3", "node4")})
    assert {k for k in side_a if k.startswith("split-")} == {"split-node1.txt", "split-node2.txt"}
    assert {k for k in side_b if k.startswith("split-")} == {"split-node3.txt", "split-node4.txt"}

    faults.heal(lab)
    code, peers = sync(nodes["node1"])
    assert code == 0 and {p["result"] for p in peers.values()} == {"ok"}
    files = converged(nodes)
    assert {k: files[k] for k in written} == written
    assert files["split.txt"] == "edited on node4 during the split, later"
    copies = [k for k in files if k.startswith("split.conflict-node1-")]
    assert [files[k] for k in copies] == ["edited on node1 during the split"]


def test_deletions_spread_and_the_content_stays_in_the_backup_area(lab, nodes):
    write(nodes["node1"], "doomed.txt", "deleted soon")
    write(nodes["node1"], "stays.txt", "not deleted")  # an emptied root is the guard's
    every_node_syncs(nodes)
    on(nodes["node2"], f"rm {ROOT}/doomed.txt")
    on(nodes["node2"], f"mkdir -p {ROOT}/.replimesh-backup && "
                       f"echo local > {ROOT}/.replimesh-backup/mine.txt")
    assert sync(nodes["node2"])[0] == 0
    converged(nodes, {"stays.txt": "not deleted"})
    for name in ("node1", "node3", "node4"):
        assert on(nodes[name], f"cat {ROOT}/.replimesh-backup/doomed.txt").stdout == \
            "deleted soon"
        assert on(nodes[name], f"ls {ROOT}/.replimesh-backup").stdout.split() == ["doomed.txt"]


def test_a_wiped_root_does_not_wipe_the_mesh(lab, nodes):
    expected = {f"keep-{i}.txt": f"kept {i}" for i in range(12)}
    for name, text in expected.items():
        write(nodes["node1"], name, text)
    every_node_syncs(nodes)
    on(nodes["node2"], f"mkdir -p /tmp/unmounted && mv {ROOT}/keep-* /tmp/unmounted/")

    code, peers = sync(nodes["node1"])
    assert code == 1
    assert peers["node2"]["result"] == "failed"
    assert "the peer refused: deletion guard" in peers["node2"]["message"]
    code, peers = sync(nodes["node2"])
    assert code == 1
    assert {r["result"] for r in peers.values()} == {"failed"}
    assert "--allow-deletions" in peers["node1"]["message"]
    converged({k: nodes[k] for k in ("node1", "node3", "node4")}, expected)

    on(nodes["node2"], f"mv /tmp/unmounted/* {ROOT}/")  # the disk is back
    assert sync(nodes["node2"])[0] == 0
    converged(nodes, expected)

    on(nodes["node3"], f"rm {ROOT}/keep-*")  # a deletion on purpose
    assert sync(nodes["node3"])[0] == 1
    assert sync(nodes["node3"], "--allow-deletions")[0] == 0
    converged(nodes, {})
    assert len(on(nodes["node1"], f"ls {ROOT}/.replimesh-backup").stdout.split()) == 12


def test_a_missing_root_is_refused_not_taken_as_empty(lab, nodes):
    written = each_wrote_one(nodes, "missing")
    assert sync(nodes["node1"])[0] == 0
    on(nodes["node3"], f"mv {ROOT} {ROOT}.away")
    code, peers = sync(nodes["node1"])
    assert code == 1
    assert peers["node3"]["message"].endswith(
        f"the peer refused: root {ROOT} does not exist on node3 (disk not mounted?): "
        "not synced; mount it or create it")
    code, peers = sync(nodes["node3"])
    assert code == 1 and {r["result"] for r in peers.values()} == {"failed"}
    converged({k: nodes[k] for k in ("node1", "node2", "node4")}, written)
    on(nodes["node3"], f"mv {ROOT}.away {ROOT}")
    assert sync(nodes["node3"])[0] == 0
    converged(nodes, written)


def test_a_new_peer_address_keeps_unisons_archive(lab, nodes):
    for name in ("moved.txt", "stays-1.txt", "stays-2.txt"):
        write(nodes["node1"], name, "synced before the move")
    assert sync(nodes["node1"])[0] == 0
    node2 = nodes["node2"]
    new_address = node2.address.rsplit(".", 1)[0] + ".200"
    on(node2, f"ip addr add {new_address}/24 dev eth0")
    try:
        # node1 trusts node2's host key at the new address too (as a signed list would).
        on(nodes["node1"], f"grep '^node2,' {MESH_FILES}/known_hosts | "
                           f"sed 's/^node2,[^ ]* /{new_address} /' >> {MESH_FILES}/known_hosts")
        archives = on(nodes["node1"], f"ls {HOME}/.unison/pairs/node2").stdout.split()
        on(nodes["node1"], f"rm {ROOT}/moved.txt")
        # One session with node2 at its new address: a lost archive would bring the file
        # back (Unison would take both sides as new); a kept one passes the deletion on.
        session = ("import sys; sys.path.insert(0, '/opt/replimesh/lib'); "
                   "from replimesh import config, round; cfg = config.load(); "
                   f"o = round.sync_root(cfg, 'node2', '{new_address}', '{ROOT}'); "
                   "print(o.session.exit_code, o.session.error)")
        done = LAB.as_sync_user(nodes["node1"], f'python3 -c "{session}"')
        assert done.stdout.strip() == "0", done.stdout
        assert "moved.txt" not in names(nodes["node1"])
        assert "moved.txt" not in names(node2)
        assert on(nodes["node1"], f"ls {HOME}/.unison/pairs/node2").stdout.split() == archives
    finally:
        on(node2, f"ip addr del {new_address}/24 dev eth0", check=False)


def backed_up(node, name):
    return on(node, f"cat {ROOT}/.replimesh-backup/{name} 2>/dev/null || true").stdout


def test_a_deletion_is_not_undone_by_a_pair_that_never_synced_the_file(lab, nodes):
    """node2 and node3 both got xres.txt from node1, so their pair's Unison archive has
    no record of it: to Unison alone it is a new file on node3 (the reported bug)."""
    write(nodes["node1"], "keep.txt", "stays")  # an emptied root is the guard's
    write(nodes["node1"], "xres.txt", "deleted on node2")
    assert sync(nodes["node1"])[0] == 0
    on(nodes["node2"], f"rm {ROOT}/xres.txt")
    code, peers = sync(nodes["node2"])
    assert code == 0, peers
    converged(nodes, {"keep.txt": "stays"})
    for name in ("node1", "node3", "node4"):
        assert backed_up(nodes[name], "xres.txt") == "deleted on node2", name
    # and it stays deleted through every node's next round
    every_node_syncs(nodes)
    converged(nodes, {"keep.txt": "stays"})


def test_a_relayed_edit_does_not_undo_a_later_deletion(lab, nodes):
    """node4 renames a file in d034/; node1's round carries the rename to node3; node3
    then deletes d034/, which every node holds as node3 saw it: the pair (node3, node4)
    last met before the rename, yet the deletion must stand everywhere."""
    on(nodes["node1"], f"mkdir {ROOT}/d034 && for f in a b c; do echo $f > {ROOT}/d034/$f; "
                       f"done; echo k > {ROOT}/keep.txt; chown -R replimesh: {ROOT}")
    every_node_syncs(nodes)
    on(nodes["node4"], f"runuser -u replimesh -- mv {ROOT}/d034/a {ROOT}/d034/renamed")
    assert sync(nodes["node1"])[0] == 0
    assert on(nodes["node3"], f"ls {ROOT}/d034").stdout.split() == ["b", "c", "renamed"]
    on(nodes["node3"], f"rm -r {ROOT}/d034")
    code, peers = sync(nodes["node3"])
    assert code == 0, peers
    assert all(not p["settled"] for p in peers.values()), peers
    converged(nodes, {"keep.txt": "k"})
    for node in nodes.values():
        assert names(node) == [".replimesh-backup", "keep.txt"], node.name
    every_node_syncs(nodes)
    for node in nodes.values():
        assert "d034" not in names(node), node.name


def test_one_round_of_another_node_spreads_a_deletion_everywhere(lab, nodes):
    """node3 deletes a file and runs no round; node1's round hears of it from node3 after
    it synced node2, and goes back to node2 with it: one round converges the mesh."""
    write(nodes["node1"], "keep.txt", "stays")
    write(nodes["node4"], "late.txt", "from node4, the last peer of node1")
    assert sync(nodes["node4"])[0] == 0  # every node holds late.txt, through node4
    on(nodes["node3"], f"rm {ROOT}/late.txt")
    code, peers = sync(nodes["node1"])
    assert code == 0, peers
    converged(nodes, {"keep.txt": "stays"})
    assert backed_up(nodes["node2"], "late.txt") == "from node4, the last peer of node1"
