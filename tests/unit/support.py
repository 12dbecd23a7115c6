"""What the core's unit tests share: a node's files in a temporary folder, Unison
transcripts and a stand-in unison program that replays them, and a closed port."""

import json
import socket
import sys

from plugins.module_utils.replimesh import config


def write_node(tmp_path, peers, node="node1", **settings):
    """A node's files in tmp_path: config.json, peers.json, one root and a log folder.

    Returns (Config, path of config.json).
    """
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    (tmp_path / "log").mkdir(exist_ok=True)
    peers_file = tmp_path / "peers.json"
    peers_file.write_text(json.dumps({"peers": peers}), encoding="utf-8")
    data = {"node": node, "roots": [str(root)], "peers_file": str(peers_file),
            "state_file": str(tmp_path / "state.json"), "log_dir": str(tmp_path / "log"),
            "connect_timeout": 1, **settings}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return config.parse(data), str(path)


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

LOCKED = """\
Unison 2.52.1 (ocaml 4.13.1): Contacting server...
Connected [//node1//srv/replimesh/data -> //node2//srv/replimesh/data]
Warning: the archives are locked.
If no other instance of unison is running, the locks should be removed.
"""
