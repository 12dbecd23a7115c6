"""Unison sessions: the command line, and what is read from Unison 2.52's batch output."""

import json
import os
import sys

from plugins.module_utils.replimesh import config, unison
from plugins.module_utils.replimesh.peers import Peer

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

PEER = Peer("node2", "10.0.0.2")

FAKE_UNISON = """\
#!{python}
import json, os, sys
with open({calls!r}, "a", encoding="utf-8") as out:
    out.write(json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(),
                          "host": os.environ.get("UNISONLOCALHOSTNAME")}}) + "\\n")
with open({plan!r}, encoding="utf-8") as handle:
    code, output = json.load(handle)[sys.argv[1]]
sys.stdout.write(output)
sys.exit(code)
"""


def fake_unison(folder, plan):
    """An executable standing in for unison: {root: (exit code, output)}; every call is
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


def test_transfer_is_read_after_the_progress_display():
    session = unison.parse(0, TRANSFERRED)
    assert session.transferred == ["node1.txt"]
    assert (session.conflicts, session.failed, session.error) == ([], [], "")


def test_carriage_returns_split_progress_from_the_end_line():
    session = unison.parse(0, "100%  00:00 ETA\r[END] Updating file sub/b.txt\n")
    assert session.transferred == ["sub/b.txt"]


def test_deletions_count_as_transfers():
    session = unison.parse(0, "[BGN] Deleting old.txt from //node2//srv/d\n"
                              "[END] Deleting old.txt\n")
    assert session.transferred == ["old.txt"]


def test_conflict_is_skipped_without_error():
    session = unison.parse(unison.EXIT_SKIPPED, CONFLICT)
    assert session.conflicts == ["a.txt"]
    assert session.transferred == []
    assert session.error == ""


def test_summary_line_counts_are_not_paths():
    session = unison.parse(2, SOME_FAILED)
    assert session.conflicts == []
    assert session.failed == ["b.txt"]


def test_some_failed_without_fatal_error_reports_the_last_line():
    assert unison.parse(unison.EXIT_SOME_FAILED, SOME_FAILED).error == "failed: b.txt"


def test_fatal_error_joins_the_reason_on_the_next_line():
    session = unison.parse(unison.EXIT_FATAL, FATAL)
    assert session.error == ("Error in canonizing path: "
                             "/srv/replimesh/data: No such file or directory")
    assert session.exit_code == 3


def test_fatal_error_on_the_last_line_stands_alone():
    assert unison.parse(3, "Fatal error: Lost connection with the server\n").error == \
        "Lost connection with the server"


def test_failure_without_output_names_the_exit_status():
    assert unison.parse(3, "").error == "unison exited with status 3"


def test_success_never_carries_an_error():
    assert unison.parse(0, "Nothing to do: replicas have not changed since last sync.\n") \
        .error == ""


def test_conflict_path_with_parentheses_is_kept_whole():
    line = "  skipped: notes (copy).txt (contents changed on both sides)\n"
    assert unison.parse(1, line).conflicts == ["notes (copy).txt"]


def test_command_targets_the_same_absolute_path_on_the_peer():
    cfg = config.parse({"node": "node1", "roots": ["/srv/d"], "user": "sync", "ssh_port": 2222,
                        "connect_timeout": 4})
    argv = unison.command(cfg, "/srv/d", PEER)
    assert argv[:3] == ["/usr/bin/unison", "/srv/d", "ssh://sync@10.0.0.2//srv/d"]
    assert {"-batch", "-times", "-log=false"} <= set(argv)
    assert argv[argv.index("-sshargs") + 1] == "-o ConnectTimeout=4 -p 2222"
    assert argv[argv.index("-ui") + 1] == "text"


def test_environment_pins_the_unison_host_name(monkeypatch):
    monkeypatch.setenv("UNISONLOCALHOSTNAME", "container-3f2a")
    env = unison.environment(config.parse({"node": "node7", "roots": ["/a"]}))
    assert env["UNISONLOCALHOSTNAME"] == "node7"
    assert env["PATH"] == os.environ["PATH"]


def test_run_parses_what_the_program_prints(tmp_path):
    program, calls = fake_unison(tmp_path, {"/srv/d": (1, CONFLICT)})
    cfg = config.parse({"node": "node1", "roots": ["/srv/d"], "unison": program})
    session = unison.run(cfg, "/srv/d", PEER)
    assert (session.exit_code, session.conflicts, session.timed_out) == (1, ["a.txt"], False)
    call, = calls_of(calls)
    assert call["argv"] == unison.command(cfg, "/srv/d", PEER)[1:]
    assert (call["cwd"], call["host"]) == ("/", "node1")
