"""The shared SSH connections: a round's close at its end, the watcher's stay while in
use and close when idle; one that ended is opened again, not taken as open. A script
stands in for ssh: it makes the control socket file and waits, as a master does."""

import os
import subprocess
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
