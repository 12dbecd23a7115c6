"""Watch mode on the fault tests' lab: a watcher on every node, no round started by hand.

A change made on one node reaches every node within seconds; what sessions write into a
node starts no round there; two watchers reacting to the same change at once, a change
made while a session writes into the same folder, a root replaced while watched, a
watcher stopped or killed mid-round and the kernel's inotify limit running out all end
with every node holding the same files, none lost. Watchers are started as cron's watchdog starts
them (`replimesh watch --detach`); the lab's deploy leaves them off for the other tests.
"""

import os
import re
import threading
import time

import pytest

from fabfile.lab import faults
from plugins.module_utils.replimesh import watch_daemon

from .chaos import Workload, replay_command
from .helpers import role, running_nodes, wait_until
from .mesh_lab import FAULT, MESH_FILES, ROOT, Nodes, fresh_replicas

LAB = Nodes(FAULT)
on, write, contents = LAB.on, LAB.write, LAB.contents
WATCH_LOG = "/var/log/replimesh/watch.log"
SPREAD_S = 30        # a change to every node of the lab (goal: seconds)
MAX_WATCHES = "/proc/sys/fs/inotify/max_user_watches"   # the host's kernel: all nodes'
# The chaos run of test_chaos.py, watchers running (`make chaos` for more seeds).
CHAOS_SEED = int(os.environ.get("REPLIMESH_CHAOS_SEED", "7"))
CHAOS_STEPS = int(os.environ.get("REPLIMESH_CHAOS_STEPS", "25"))


def watcher(node, verb):
    return LAB.as_sync_user(node, f"replimesh watch {verb}")


def rounds(node):
    """The watcher's rounds on node so far, as its log tells them."""
    return on(node, f"grep -c 'round for' {WATCH_LOG} || true").stdout.strip()


@pytest.fixture
def nodes(fault_lab):
    """node1..node4 with empty replicas, each with its watcher running and its first
    (full) round done; the watchers are stopped after the test."""
    for node in running_nodes(fault_lab):
        watcher(node, "--stop")
    found = fresh_replicas(fault_lab)
    for node in found.values():
        LAB.as_sync_user(node, f"truncate -s 0 {WATCH_LOG}")   # the watcher's, as it was
        watcher(node, "--detach")
    for node in found.values():
        wait_until(lambda n=node: "(all)" in on(n, f"cat {WATCH_LOG}").stdout, 60,
                   f"{node.name}'s watcher ran its first round")
    yield found
    for node in found.values():
        watcher(node, "--stop")
        # Shown by pytest when the test failed: what each watcher did.
        print(f"--- {node.name}'s {WATCH_LOG}\n{on(node, f'cat {WATCH_LOG}').stdout}"
              f"--- {node.name}'s files: {contents(node)}")


def test_the_watch_role_keeps_a_watcher_on_every_node_and_turns_it_off(fault_lab):
    try:
        role(fault_lab, "replimesh_watch", "-e", "replimesh_watch=true")
        again = role(fault_lab, "replimesh_watch", "-e", "replimesh_watch=true")
        assert "| CHANGED" not in again.stdout, again.stdout
        for node in running_nodes(fault_lab):
            cron = on(node, "cat /etc/cron.d/replimesh-watch").stdout
            assert "\n@reboot replimesh " in cron and "\n* * * * * replimesh " in cron
            assert "already running" in watcher(node, "--detach").stdout
    finally:
        role(fault_lab, "replimesh_watch", "-e", "replimesh_watch=false")
    for node in running_nodes(fault_lab):
        assert on(node, "test -e /etc/cron.d/replimesh-watch", check=False).returncode == 1
        assert "not running" in watcher(node, "--stop").stdout


def everywhere(nodes, name, text):
    """Whether every node holds name with text (None: holds no such file; a final newline
    is not part of a text, as contents() reads them)."""
    return all(contents(node).get(name) == text for node in nodes.values())


def held_everywhere(nodes, path, text):
    """Whether every node holds the file at path (below the root's top too) with text."""
    for node in nodes.values():
        done = on(node, f"cat {ROOT}/{path}", check=False)
        if done.returncode != 0 or done.stdout != text:
            return False
    return True


def same_everywhere(nodes):
    seen = [contents(node) for node in nodes.values()]
    return all(files == seen[0] for files in seen)


def md5(node, path):
    done = on(node, f"md5sum {ROOT}/{path} 2>/dev/null || true")
    return done.stdout.split()[0] if done.stdout else None


def test_a_change_reaches_every_node_with_no_round_started_by_hand(nodes):
    before = rounds(nodes["node2"])
    write(nodes["node1"], "stays.txt", "so that one deletion is not an emptied root")
    write(nodes["node1"], "watched.txt", "first")
    wait_until(lambda: everywhere(nodes, "watched.txt", "first"), SPREAD_S,
               "watched.txt, written on node1, on every node")
    write(nodes["node3"], "watched.txt", "edited on node3")
    wait_until(lambda: everywhere(nodes, "watched.txt", "edited on node3"), SPREAD_S,
               "node3's edit on every node")
    on(nodes["node4"], f"rm {ROOT}/watched.txt")
    wait_until(lambda: everywhere(nodes, "watched.txt", None), SPREAD_S,
               "node4's deletion on every node")
    # node2 changed nothing: what the others' sessions wrote into it started no round.
    assert rounds(nodes["node2"]) == before
    log = on(nodes["node1"], f"cat {WATCH_LOG}").stdout
    assert re.search(r"round for /srv/replimesh/data \(\d path\(s\)\): node2 ok \d file", log)


def test_a_full_round_with_nothing_changed_runs_no_session_and_says_so(nodes):
    before = rounds(nodes["node2"])
    write(nodes["node2"], "settled.txt", "before the rounds")
    wait_until(lambda: rounds(nodes["node2"]) != before, SPREAD_S, "node2's round done")
    assert everywhere(nodes, "settled.txt", "before the rounds")
    LAB.sync(nodes["node1"])   # finds each pair equal: their markers are kept
    code, peers = LAB.sync(nodes["node1"])
    assert code == 0
    assert {name: (p["sessions"], p["unchanged"]) for name, p in peers.items()} == \
        {name: (0, [ROOT]) for name in ("node2", "node3", "node4")}
    # A node whose watcher is not running has no marker: its pair is synced again.
    watcher(nodes["node3"], "--stop")
    on(nodes["node3"], f"echo unwatched > {ROOT}/unwatched.txt && "
                       f"chown replimesh: {ROOT}/unwatched.txt")
    code, peers = LAB.sync(nodes["node1"])
    assert code == 0 and peers["node3"]["sessions"] >= 1 and not peers["node3"]["unchanged"]
    assert everywhere(nodes, "unwatched.txt", "unwatched")   # node2 by the second pass


COUNTED = "-p tcp --dport 22 --syn -m owner --uid-owner replimesh -m comment --comment counted"


def ssh_connections_opened(node):
    """How many TCP connections to an SSH port node's sync user opened since the rule
    that counts them went in."""
    listed = on(node, "iptables -L OUTPUT -v -x -n").stdout
    return sum(int(line.split()[0]) for line in listed.splitlines() if "counted" in line)


def test_a_round_from_the_command_line_uses_the_watchers_connections(nodes):
    node2 = nodes["node2"]
    before = rounds(node2)
    write(node2, "shared.txt", "pushed over the watcher's connections")
    wait_until(lambda: rounds(node2) != before, SPREAD_S, "node2's round done")
    on(node2, f"iptables -I OUTPUT {COUNTED}")
    try:
        code, peers = LAB.sync(node2)
        opened = ssh_connections_opened(node2)
    finally:
        on(node2, f"iptables -D OUTPUT {COUNTED}")
    assert code == 0 and {p["result"] for p in peers.values()} == {"ok"}, peers
    # One reachability probe per peer; no SSH handshake of its own (it would be one
    # more connection per peer).
    assert opened == len(peers) == 3


def test_two_watchers_reacting_to_the_same_change_at_once_agree(nodes):
    writers = [threading.Thread(target=write, args=(nodes[name], "both.txt", f"from {name}"))
               for name in ("node1", "node2")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    wait_until(lambda: same_everywhere(nodes) and "both.txt" in contents(nodes["node3"]),
               SPREAD_S, "one version of both.txt on every node")
    kept = contents(nodes["node1"])["both.txt"]
    assert kept in ("from node1", "from node2")
    lost = "from node2" if kept == "from node1" else "from node1"
    # The other version is not lost: the node it was written on keeps it as a backup.
    loser = nodes[lost.split()[-1]]
    backups = on(loser, f"grep -rl {lost.replace(' ', '.')!r} {ROOT}/.replimesh-backup "
                        "2>/dev/null || true").stdout
    assert backups.strip(), f"{lost!r} is in no backup of {loser.name}"


def test_a_settled_conflict_is_followed_by_a_full_round_that_finds_what_sessions_left(nodes):
    # A file as a session leaves it (written under Unison's temporary name, then renamed):
    # news to no watcher. So is a conflict copy left on a node whose maker swapped it away
    # meanwhile, when three nodes settle one conflict at once (seen in CI).
    temporary = f"{ROOT}/.unison.left.txt.1234.unison.tmp"
    on(nodes["node4"], f"printf left > {temporary} && chown replimesh: {temporary} && "
                       f"mv {temporary} {ROOT}/left.txt")
    watcher(nodes["node2"], "--stop")   # so that node1's round meets node2's change
    try:
        write(nodes["node2"], "both.txt", "from node2")
        write(nodes["node1"], "both.txt", "from node1")
        wait_until(lambda: everywhere(nodes, "left.txt", "left"), SPREAD_S,
                   "left.txt, left on node4, on every node")
    finally:
        watcher(nodes["node2"], "--detach")
    assert "1 conflict(s) settled: both.txt" in on(nodes["node1"], f"cat {WATCH_LOG}").stdout


def test_a_change_made_while_a_session_writes_into_its_folder_is_not_lost(nodes):
    on(nodes["node1"], f"install -d -o replimesh -g replimesh {ROOT}/shared")
    wait_until(lambda: on(nodes["node2"], f"test -d {ROOT}/shared", check=False).returncode
               == 0, SPREAD_S, "the folder on node2")
    faults.shape(FAULT, "node1", "40mbit")   # about 8 s to send 40 MiB to each peer
    try:
        on(nodes["node1"], f"head -c 40M /dev/urandom > {ROOT}/shared/big.bin && "
                           f"chown replimesh: {ROOT}/shared/big.bin")
        big = md5(nodes["node1"], "shared/big.bin")
        wait_until(lambda: ".unison.big.bin." in on(nodes["node2"], f"ls -A {ROOT}/shared")
                   .stdout, 30, "node1's session writing big.bin into node2")
        write(nodes["node2"], "shared/local.txt", "written on node2 meanwhile")
        wait_until(lambda: all(md5(n, "shared/big.bin") == big for n in nodes.values()),
                   120, "big.bin on every node")
    finally:
        faults.shape(FAULT, "node1", "")
    wait_until(lambda: held_everywhere(nodes, "shared/local.txt", "written on node2 "
                                       "meanwhile"), SPREAD_S,
               "node2's file, written during the session, on every node")


def test_a_folder_made_owner_only_then_handed_over_is_watched(nodes):
    """`install -d -o` and tar make a folder readable by its maker only, then hand it
    over: the watcher's watch was refused while it came, and is made when it is handed."""
    before = rounds(nodes["node1"])
    on(nodes["node1"], f"mkdir -m 700 {ROOT}/handed")
    wait_until(lambda: rounds(nodes["node1"]) != before, SPREAD_S,
               "node1's round for the folder it could not read")
    on(nodes["node1"], f"printf early > {ROOT}/handed/early.txt && "
                       f"chown -R replimesh: {ROOT}/handed && chmod 755 {ROOT}/handed")
    wait_until(lambda: held_everywhere(nodes, "handed/early.txt", "early"), SPREAD_S,
               "the file written before the folder was handed over, on every node")
    write(nodes["node1"], "handed/late.txt", "written once it was handed over")
    wait_until(lambda: held_everywhere(nodes, "handed/late.txt", "written once it was "
                                       "handed over"), SPREAD_S,
               "the file written after, on every node")


def test_a_root_replaced_while_watched_is_synced_in_full(nodes):
    for number in range(3):
        write(nodes["node3"], f"kept-{number}.txt", "before the swap")
    wait_until(lambda: everywhere(nodes, "kept-2.txt", "before the swap"), SPREAD_S,
               "the files on every node")
    # What a restore from backup does: a copy of the tree put in the root's place.
    on(nodes["node3"], f"cp -a {ROOT} {ROOT}.new && echo restored > {ROOT}.new/restored.txt"
                       f" && chown replimesh: {ROOT}.new/restored.txt"
                       f" && mv {ROOT} {ROOT}.old && mv {ROOT}.new {ROOT}")
    try:
        wait_until(lambda: everywhere(nodes, "restored.txt", "restored"), SPREAD_S,
                   "a file of the new root on every node")
        assert all(everywhere(nodes, f"kept-{n}.txt", "before the swap") for n in range(3))
        log = on(nodes["node3"], f"cat {WATCH_LOG}").stdout
        assert log.count("(all)") >= 2, log   # its first round, and one for the swap
    finally:
        on(nodes["node3"], f"rm -rf {ROOT}.old {ROOT}.new")


def unison_running(node):
    return on(node, "pgrep -u replimesh -x unison", check=False).returncode == 0


def test_a_watcher_stopped_or_killed_mid_round_leaves_the_mesh_to_converge(nodes):
    node1 = nodes["node1"]
    faults.shape(FAULT, "node1", "10mbit")   # its round for big.bin: well over a minute
    try:
        on(node1, f"head -c 20M /dev/urandom > {ROOT}/big.bin && chown replimesh: {ROOT}/big.bin")
        big = md5(node1, "big.bin")
        wait_until(lambda: unison_running(node1), 30, "node1's round under way")
        asked = time.monotonic()
        stopped = LAB.as_sync_user(node1, "replimesh watch --stop", check=False)
        took = time.monotonic() - asked
        assert stopped.returncode == 0 and "watcher stopped" in stopped.stdout, stopped
        assert took < watch_daemon.STOP_GRACE_S + 10, f"--stop took {took:.1f} s"
        assert not unison_running(node1)
        assert "the round under way was cut short" in on(node1, f"cat {WATCH_LOG}").stdout

        watcher(node1, "--detach")   # its first round sends big.bin again
        wait_until(lambda: unison_running(node1), 30, "node1's round under way again")
        on(node1, f"kill -KILL $(cat {MESH_FILES}/watch.lock)")
        wait_until(lambda: not unison_running(node1), 30, "node1's Unison gone with its watcher")
    finally:
        faults.shape(FAULT, "node1", "")
    watcher(node1, "--detach")   # as cron's watchdog does within a minute
    wait_until(lambda: all(md5(n, "big.bin") == big for n in nodes.values()), 180,
               "big.bin whole on every node")
    for node in nodes.values():   # no temporary file left behind in any replica
        assert ".unison." not in on(node, f"ls -A {ROOT}").stdout


def watches_in_use(uid):
    """inotify watches held now by the processes of uid, on every node: the lab's nodes
    share the host's kernel, and so its limit per user."""
    held = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            for fd in os.listdir(f"/proc/{pid}/fdinfo"):
                with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as info:
                    held += sum(line.startswith("inotify wd:") for line in info)
        except OSError:
            continue   # gone meanwhile
    return held


def test_when_the_inotify_limit_runs_out_the_watcher_says_so_and_rounds_go_on(nodes):
    with open(MAX_WATCHES, encoding="ascii") as handle:
        limit = handle.read().strip()
    try:
        uid = int(on(nodes["node1"], "id -u replimesh").stdout)
        with open(MAX_WATCHES, "w", encoding="ascii") as handle:
            handle.write(str(watches_in_use(uid) + 10))
        on(nodes["node1"], f"cd {ROOT} && mkdir -p $(seq -f deep-%g 1 40) && "
                           f"echo here > deep-40/found.txt && chown -R replimesh: {ROOT}")
        wait_until(lambda: "max_user_watches ran out" in on(nodes["node1"], f"cat {WATCH_LOG}")
                   .stdout, 30, "node1's watcher telling the limit ran out")
        said = on(nodes["node1"], f"grep 'ran out' {WATCH_LOG}").stdout.splitlines()
        assert len(said) == 1 and "sysctl -w fs.inotify.max_user_watches=" in said[0]
        # Full rounds on a timer (replimesh_watch_fallback, 5 s in this lab) carry on.
        wait_until(lambda: all(on(n, f"cat {ROOT}/deep-40/found.txt", check=False).stdout
                               == "here\n" for n in nodes.values()), 60,
                   "the new folders' file on every node")
    finally:
        with open(MAX_WATCHES, "w", encoding="ascii") as handle:
            handle.write(limit)


def test_a_seeded_random_workload_with_watchers_loses_no_write_and_undoes_no_deletion(
        fault_lab):
    workload = Workload(fault_lab, CHAOS_SEED, CHAOS_STEPS, watch=True,
                        replay=replay_command(CHAOS_SEED, CHAOS_STEPS, watch=True))
    outcome = workload.run()
    assert outcome.ok, "\n".join(outcome.findings)
