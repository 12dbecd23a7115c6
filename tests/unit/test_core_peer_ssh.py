"""The shared SSH connections: a round's close at its end, the watcher's stay while in
use and close when idle (stopped, so that another process's session ends first); one
that ended is opened again, not taken as open; the node's other processes use the
watcher's, unless another user could reach its folder. Scripts stand in for ssh: they
make the control socket and wait, as a master does."""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from plugins.module_utils.replimesh import config, peer_ssh

from .support import script

MASTER = """for a in "$@"; do case "$a" in ControlPath=*) s="${a#ControlPath=}";; esac; done
echo "$s" >> "$(dirname "$0")/masters"; touch "$s"; exec sleep 60
"""


def cfg_with_ssh(tmp_path):
    ssh = script(tmp_path, "ssh", MASTER)
    return config.parse({"node": "node1", "roots": [str(tmp_path)], "ssh": ssh,
                         "connect_timeout": 2})


def test_the_watchers_connections_close_when_idle_and_are_opened_again(tmp_path):
    cfg = cfg_with_ssh(tmp_path)
    with peer_ssh.sharing():
        assert peer_ssh.connect(cfg, "10.0.0.2") == ""
        assert peer_ssh.connect(cfg, "10.0.0.3") == ""
        first = peer_ssh._shared["10.0.0.2"].process
        assert peer_ssh.connect(cfg, "10.0.0.2") == ""     # open: the same one
        assert peer_ssh._shared["10.0.0.2"].process is first
        time.sleep(0.2)
        peer_ssh.options(cfg, "10.0.0.3")                   # a call over it
        peer_ssh.close_idle(0.1)
        assert list(peer_ssh._shared) == ["10.0.0.3"]
        assert first.poll() is not None
        kept = peer_ssh._shared["10.0.0.3"].process
        kept.kill()
        kept.wait()                                         # the peer went away
        assert peer_ssh.connect(cfg, "10.0.0.3") == ""
        assert peer_ssh._shared["10.0.0.3"].process is not kept
    assert peer_ssh._shared == {}
    with open(os.path.join(tmp_path, "masters"), encoding="utf-8") as made:
        assert len(made.read().split()) == 3


def test_a_connection_opened_by_a_thread_outlives_the_thread(tmp_path):
    # A round opens its peers' connections side by side from a pool whose threads end
    # with the round; the kernel's parent-death signal follows the thread that started a
    # child, so a master started by one of them died with it, and the watcher paid a
    # handshake per peer on every round.
    cfg = cfg_with_ssh(tmp_path)
    with peer_ssh.sharing():
        opener = threading.Thread(target=peer_ssh.connect, args=(cfg, "10.0.0.2"))
        opener.start()
        opener.join()
        master = peer_ssh._shared["10.0.0.2"].process
        with pytest.raises(subprocess.TimeoutExpired):   # not signalled to end
            master.wait(timeout=0.5)
        assert peer_ssh.connect(cfg, "10.0.0.2") == ""
        assert peer_ssh._shared["10.0.0.2"].process is master
    assert master.poll() is not None


def test_two_threads_connecting_to_one_peer_at_once_share_one_connection(tmp_path):
    # The watcher opens connections as a change comes; its round, starting meanwhile,
    # connects to the same peers: a second master on the same socket path would unlink
    # the first one's socket.
    ssh = script(tmp_path, "ssh", "sleep 0.3\n" + MASTER)   # a handshake's time
    cfg = config.parse({"node": "node1", "roots": [str(tmp_path)], "ssh": ssh,
                        "connect_timeout": 2})
    said = []
    with peer_ssh.sharing():
        openers = [threading.Thread(target=lambda: said.append(peer_ssh.connect(cfg, "10.0.0.2")))
                   for _ in range(2)]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join()
        assert said == ["", ""] and peer_ssh.is_open("10.0.0.2")
    with open(os.path.join(tmp_path, "masters"), encoding="utf-8") as made:
        assert len(made.read().split()) == 1


def test_a_connection_opened_while_idle_ones_are_closed_is_kept(tmp_path):
    # The watcher closes its idle connections between events while its warm-up opens
    # others: a master added midway through the look at every master (which waits on
    # each process) stopped the watcher ("dictionary changed size during iteration").
    cfg = cfg_with_ssh(tmp_path)
    with peer_ssh.sharing():
        assert peer_ssh.connect(cfg, "10.0.0.2") == ""
        first = peer_ssh._shared["10.0.0.2"].process
        real_poll = first.poll

        def poll_while_another_connects():
            opener = threading.Thread(target=peer_ssh.connect, args=(cfg, "10.0.0.3"))
            opener.start()
            opener.join(timeout=1.0)
            return real_poll()
        first.poll = poll_while_another_connects
        peer_ssh.close_idle(60)
        first.poll = real_poll
        deadline = time.monotonic() + 10
        while not peer_ssh.is_open("10.0.0.3"):
            assert time.monotonic() < deadline, "the second connection never opened"
            time.sleep(0.05)
        assert peer_ssh.is_open("10.0.0.2")


# A master that listens on its socket as ssh's does; `-O stop` makes it remove the socket
# and end, as ssh's does once its last session has ended.
LISTENING_MASTER = """for a in "$@"; do
  case "$a" in ControlPath=*) s="${a#ControlPath=}";; esac
done
log="$(dirname "$0")/calls"
case " $* " in *" -O stop "*) echo "stop $s" >> "$log"; kill "$(cat "$s.pid")"; exit 0;; esac
echo "master $s" >> "$log"; echo $$ > "$s.pid"
exec python3 -c 'import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen()
time.sleep(60)' "$s"
"""


@pytest.fixture
def node(tmp_path):
    # The sockets' paths must be short (sun_path): the state folder is not under tmp_path.
    state = tempfile.mkdtemp(prefix="rm-")
    ssh = script(tmp_path, "ssh", LISTENING_MASTER)
    yield config.parse({"node": "node1", "roots": [str(tmp_path)], "ssh": ssh,
                        "connect_timeout": 2, "state_file": os.path.join(state, "state.json")})
    shutil.rmtree(state, ignore_errors=True)


def calls(cfg):
    with open(os.path.join(os.path.dirname(cfg.ssh), "calls"), encoding="utf-8") as log:
        return [line.split()[0] for line in log]


# What another process of the node (a cron round) does: connect, then one call's options.
OTHER_PROCESS = """import json, sys
from plugins.module_utils.replimesh import config, peer_ssh
cfg = config.parse(json.loads(sys.argv[1]))
with peer_ssh.sharing():
    print(peer_ssh.connect(cfg, "10.0.0.2") or "up")
    print(" ".join(peer_ssh.options(cfg, "10.0.0.2")))
"""


def other_process(cfg):
    given = {"node": cfg.node, "roots": list(cfg.roots), "ssh": cfg.ssh,
             "connect_timeout": 2, "state_file": cfg.state_file}
    done = subprocess.run([sys.executable, "-c", OTHER_PROCESS, json.dumps(given)],
                          capture_output=True, text=True, check=True, timeout=30,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    return done.stdout.splitlines()


def test_the_node_s_other_processes_share_the_watchers_connections(node):
    with peer_ssh.sharing(node, keep=True):
        assert peer_ssh.connect(node, "10.0.0.2") == ""
        socket = peer_ssh._shared["10.0.0.2"].socket
        assert os.path.dirname(socket) == peer_ssh.kept_folder(node)
        assert stat.S_IMODE(os.stat(peer_ssh.kept_folder(node)).st_mode) == 0o700
        up, options = other_process(node)
        assert up == "up" and f"ControlPath={socket}" in options
        assert calls(node) == ["master"]          # it opened none of its own
    assert not os.path.exists(socket)
    # With no watcher, or its socket left by a master that ended, it opens its own.
    open(socket, "w", encoding="utf-8").close()
    assert other_process(node)[0] == "up" and calls(node) == ["master", "master"]


def test_the_watchers_folder_is_not_used_when_another_user_could_reach_it(node):
    with peer_ssh.sharing(node, keep=True):
        assert peer_ssh.connect(node, "10.0.0.2") == ""
        os.chmod(peer_ssh.kept_folder(node), 0o770)
        options = other_process(node)[1]           # its own, then
        assert peer_ssh.kept_folder(node) not in options and calls(node) == ["master"] * 2


def test_the_watchers_idle_connection_is_stopped_not_killed_then_reaped(node):
    with peer_ssh.sharing(node, keep=True):
        assert peer_ssh.connect(node, "10.0.0.2") == ""
        master = peer_ssh._shared["10.0.0.2"].process
        time.sleep(0.2)
        peer_ssh.close_idle(0.1)
        assert calls(node) == ["master", "stop"] and peer_ssh._shared == {}
        master.wait(timeout=10)                    # it ended by itself
        peer_ssh.close_idle(0.1)
        assert peer_ssh._draining == []
