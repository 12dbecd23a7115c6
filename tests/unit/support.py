"""What the core's unit tests share: a node's files in a temporary folder with a peer
list signed by a real operator key, Unison transcripts and a stand-in unison program
that replays them, a stand-in ssh that reaches another node's `replimesh serve`, the
modules run in-process, and a closed port."""

import atexit
import base64
import importlib
import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest
from ansible.module_utils.common import warnings as ansible_warnings
from ansible.module_utils.testing import patch_module_args

from plugins.module_utils.replimesh import (
    authorized_keys,
    config,
    controller,
    membership,
    signature,
)
from plugins.module_utils.replimesh import peers as peer_list
from plugins.module_utils.replimesh.peers import ACTIVE, Entry

REPO = str(Path(__file__).resolve().parents[2])
_KEYS: dict[str, tuple[str, str]] = {}
_SIGNATURES: dict[tuple[str, bytes], str] = {}


def key(owner="operator"):
    """(private key, allowed_signers file) of a real ed25519 key made once per test run:
    "operator" is the key the nodes trust, any other owner is an impostor."""
    if owner not in _KEYS:
        folder = tempfile.mkdtemp(prefix=f"replimesh-{owner}-")
        atexit.register(shutil.rmtree, folder, True)
        private = os.path.join(folder, "keys", "ed25519")
        public = controller.ensure_operator_key(private, create=True)
        signers = os.path.join(folder, "allowed_signers")
        with open(signers, "w", encoding="utf-8") as out:
            out.write(signature.allowed_signers(public))
        _KEYS[owner] = (private, signers)
    return _KEYS[owner]


def sign(entry, owner="operator"):
    """The entry signed by owner's key (signatures are cached: ed25519 is deterministic)."""
    private, _ = key(owner)
    data = peer_list.payload(entry)
    if (private, data) not in _SIGNATURES:
        _SIGNATURES[private, data] = signature.sign(private, data)
    return Entry(**{**vars(entry), "signature": _SIGNATURES[private, data]})


def fake_key(kind, name):
    """A valid-looking public key, distinct per kind and name."""
    return "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + \
        base64.b64encode(f"{kind}-{name}".encode()).decode().rstrip("=")


def entry(name, address=None, state=ACTIVE, version=1, owner="operator", addresses=None):
    """A signed entry (owner None: unsigned) from a short description; an active one is
    at 127.0.0.<last character of its name> unless told; a removed one is a tombstone as
    the controller makes it (no addresses, no keys)."""
    if state != ACTIVE:
        body = Entry(name, (), "", (), state, version)
    else:
        addresses = tuple(addresses or (address or f"127.0.0.{name[-1]}",))
        body = Entry(name, addresses, fake_key("sync", name), (fake_key("host", name),),
                     state, version)
    return sign(body, owner) if owner else body


def signed(peers):
    """A peer list (name -> signed entry) from short descriptions {"name", "address",
    "state", "version", "addresses", "owner"} or entries."""
    result = {}
    for item in peers:
        made = item if isinstance(item, Entry) else entry(**item)
        result[made.name] = made
    return result


def write_peers(path, peers):
    """Write a peer list (a list of descriptions, or name -> entry) as the node keeps it."""
    peers = peers if isinstance(peers, dict) else signed(peers)
    Path(path).write_text(peer_list.dumps(peers), encoding="utf-8")


def authorized(cfg):
    """The key lines sshd gets for the node's sync user (as its keys program gives them)."""
    joined = authorized_keys.take(cfg, membership.load(cfg))[0]
    return authorized_keys.lines(cfg, joined)


def write_node(tmp_path, peers, node="node1", **settings):
    """A node's files in tmp_path: config.json, a peers.json signed by the operator key
    (from descriptions or entries), the operator's allowed_signers, one root, a log folder,
    and a folder for the sync user's SSH files. Its ssh fails (/bin/false) unless settings
    say otherwise: no exchange happens.

    Returns (Config, path of config.json).
    """
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    (tmp_path / "log").mkdir(exist_ok=True)
    (tmp_path / "ssh").mkdir(exist_ok=True)
    (tmp_path / "keys").mkdir(exist_ok=True)
    peers_file = tmp_path / "peers.json"
    write_peers(peers_file, peers)
    shutil.copyfile(key()[1], tmp_path / "operator_signers")
    data = {"node": node, "roots": [str(root)], "peers_file": str(peers_file),
            "state_file": str(tmp_path / "state.json"), "log_dir": str(tmp_path / "log"),
            "connect_timeout": 1, "operator_signers": str(tmp_path / "operator_signers"),
            "keys_copy": str(tmp_path / "keys" / "peers.json"),
            "known_hosts": str(tmp_path / "ssh" / "known_hosts"), "ssh": "/bin/false",
            "replica_dir": str(tmp_path / "replicas"), "lock_wait": 5,
            "unison_dir": str(tmp_path / "unison-archives"),
            # The fake programs of the tests live in tmp_path, out of a sandbox's reach:
            # the tests of confinement turn it on.
            "confine": False, **settings}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return config.parse(data), str(path)


FAKE_SSH = """\
#!{python}
# Stands in for ssh: runs the `replimesh serve --peer CALLER` of the node whose config
# the address maps to, with the remote command in SSH_ORIGINAL_COMMAND, as sshd would.
import json, os, subprocess, sys
args = sys.argv[1:]
with open({calls!r}, "a", encoding="utf-8") as out:
    out.write(json.dumps(args) + "\\n")
while args[0].startswith("-"):
    args = args[2:]
address = args[0].split("@", 1)[1]
routes = {routes!r}
if address not in routes:
    sys.stderr.write(f"ssh: connect to host {{address}} port 22: Connection refused\\n")
    sys.exit(255)
env = dict(os.environ, SSH_ORIGINAL_COMMAND=" ".join(args[1:]), PYTHONPATH={repo!r})
sys.exit(subprocess.run([sys.executable, "-m", "plugins.module_utils.replimesh", "--config",
                         routes[address], "serve", "--peer", {caller!r}], env=env).returncode)
"""


def fake_ssh(folder, caller, routes):
    """An executable standing in for ssh, for node caller: routes maps an address to the
    config of the node there. Every call's argv is appended as JSON to folder/ssh.jsonl.
    Returns (program path, calls path)."""
    calls, program = folder / "ssh.jsonl", folder / "fake-ssh"
    program.write_text(FAKE_SSH.format(python=sys.executable, calls=str(calls),
                                       routes=routes, repo=REPO, caller=caller),
                       encoding="utf-8")
    program.chmod(0o755)
    return str(program), calls


def script(folder, name, body):
    """A small shell script standing in for a program."""
    path = folder / name
    path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    path.chmod(0o755)
    return str(path)


# What the modules import as ansible.module_utils.replimesh.*: the core itself.
SUBMODULES = ("config", "conflicts", "controller", "errors", "journal", "membership", "peers",
              "replica", "round", "serve", "signature", "state", "swarm_cli", "swarm_daemon",
              "swarm_engine", "swarm_mesh", "swarm_offers", "unison")


def load_module(monkeypatch, name):
    """plugins/modules/<name>.py, its `ansible.module_utils.replimesh` being the core."""
    core = importlib.import_module("plugins.module_utils.replimesh")
    monkeypatch.setitem(sys.modules, "ansible.module_utils.replimesh", core)
    for submodule in SUBMODULES:
        module = importlib.import_module(f"plugins.module_utils.replimesh.{submodule}")
        monkeypatch.setitem(sys.modules, f"ansible.module_utils.replimesh.{submodule}", module)
    return importlib.import_module(f"plugins.modules.{name}")


def run_module(module, capsys, **args):
    """Run module.main() with args; (exit code, result). Ansible keeps a module's warnings
    in globals, for a process that runs one module: start every run from none."""
    ansible_warnings._global_warnings.clear()
    ansible_warnings._global_deprecations.clear()
    with patch_module_args(args), pytest.raises(SystemExit) as caught:
        module.main()
    return caught.value.code, json.loads(capsys.readouterr().out)


def closed_port():
    """A local port nobody listens on (bound once, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


TRANSFERRED = """\
Reconciling changes
file     ---->            node1.txt  \n\
Propagating updates
Unison 2.52.1 (ocaml 4.13.1) started propagating changes at 19:06:30.33 on 23 Nov 2026
[BGN] Copying node1.txt from /srv/replimesh/data to //node2//srv/replimesh/data
100%  00:00 ETA               [END] Copying node1.txt
100%  00:00 ETA               Unison 2.52.1 (ocaml 4.13.1) finished propagating changes at \
19:06:30.33 on 23 Nov 2026, 0.003 s
100%  00:00 ETA               Saving synchronizer state
Synchronization complete at 19:06:30  (1 item transferred, 0 skipped, 0 failed)
"""

CONFLICT = """\
Reconciling changes
changed  <-?-> changed    a.txt  \n\
local        : changed file       modified on 2026-11-23 at 19:10:02  size 6      rw-r--r--
node2        : changed file       modified on 2026-11-23 at 19:10:03  size 6      rw-r--r--
No updates to propagate
Synchronization incomplete at 19:10:04  (0 items transferred, 1 skipped, 0 failed)
  skipped: a.txt (contents changed on both sides)
"""

FATAL = """\
Unison 2.52.1 (ocaml 4.13.1): Contacting server...
Connected [//node2//srv/replimesh/data -> //node1//srv/replimesh/data]
Fatal error: Error in canonizing path:
/srv/replimesh/data: No such file or directory
"""

SOME_FAILED = """\
Propagating updates
[BGN] Copying b.txt from //node2//srv/replimesh/data to /srv/replimesh/data
Failed: Permission denied
Synchronization incomplete at 19:12:00  (0 items transferred, 0 skipped, 1 failed)
  failed: b.txt
"""

FAKE_UNISON = """\
#!{python}
import json, os, sys
with open({calls!r}, "a", encoding="utf-8") as out:
    out.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(),
                          "host": os.environ.get("UNISONLOCALHOSTNAME")}}) + "\\n")
with open({calls!r}, encoding="utf-8") as handle:
    earlier = sum(json.loads(line)["argv"][0] == sys.argv[1] for line in handle) - 1
with open({plan!r}, encoding="utf-8") as handle:
    outcomes = json.load(handle)[sys.argv[1]]
if isinstance(outcomes[0], int):  # one outcome for every call
    outcomes = [outcomes]
code, output = outcomes[min(earlier, len(outcomes) - 1)]
sys.stdout.write(output)
sys.exit(code)
"""


def fake_unison(folder, plan):
    """An executable standing in for unison: {root: (exit code, output)}, or {root: [the
    outcome of the first call, of the second, ... (the last repeats)]}; every call is
    appended as JSON to folder/calls.jsonl. Returns (program path, calls path)."""
    calls, plan_file, program = (folder / "calls.jsonl", folder / "plan.json",
                                 folder / "fake-unison")
    plan_file.write_text(json.dumps(plan), encoding="utf-8")
    program.write_text(FAKE_UNISON.format(python=sys.executable, calls=str(calls),
                                          plan=str(plan_file)), encoding="utf-8")
    program.chmod(0o755)
    return str(program), calls


def calls_of(calls):
    return [json.loads(line) for line in calls.read_text(encoding="utf-8").splitlines()]

BUSY = """\
Unison 2.52.1 (ocaml 4.13.1): Contacting server...
replimesh: busy: replica /srv/replimesh/data on node2 stayed busy for 2 s (held by round \
of node2 with node3, pid 77, since 10:00:00): gave up, the next round tries again
Fatal error: Lost connection with the server
"""

REFUSED = """\
Unison 2.52.1 (ocaml 4.13.1): Contacting server...
replimesh: refused: deletion guard: /srv/replimesh/data on node2 holds 0 files
Fatal error: Lost connection with the server
"""

INCOMING = """\
Reconciling changes
         <---- new file   b.txt  \n\
changed  <==== changed    c.txt  \n\
new file ---->            a.txt  \n\
         <---- deleted    d.txt  \n\
Propagating updates
"""
