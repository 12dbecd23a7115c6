"""Unison sessions: the command line, and what is read from Unison 2.52's batch output."""

import os

from plugins.module_utils.replimesh import config, unison

from .support import (
    BUSY,
    CONFLICT,
    FATAL,
    INCOMING,
    REFUSED,
    SOME_FAILED,
    TRANSFERRED,
    calls_of,
    fake_unison,
)

ADDRESS = "127.0.0.2"  # a peer is reached by one of its addresses


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


def test_a_progress_display_after_a_whole_fatal_line_is_left_out():
    output = "Fatal error: Lost connection with the server\n 32%  00:08 ETA\n"
    assert unison.parse(3, output).error == "Lost connection with the server"


SKEW = """\
Unison 2.52.1 (ocaml 4.13.1): Contacting server...
Fatal error: Received unexpected header from the server:
 expected "Unison 2.52 with OCaml >= 4.01.2\\n" but received "Unison 2.48\\n\\000\\000",
which differs at "Unison 2.4".
"""


def test_version_skew_says_what_to_do():
    error = unison.parse(3, SKEW).error
    assert error.startswith("this node and the peer run Unison releases that cannot sync "
                            "together: install the same release on both")
    assert error.endswith('Received unexpected header from the server: expected "Unison 2.52 '
                          'with OCaml >= 4.01.2\\n" but received "Unison 2.48\\n\\000\\000",')


EMPTIED = """\
Reconciling changes
The root of one of the replicas has been completely emptied.
Unison may delete everything in the other replica.  (Set the
'confirmbigdel' preference to false to disable this check.)

Aborting...
"""


def test_unisons_own_guard_is_a_failure_even_with_exit_one():
    session = unison.parse(1, EMPTIED)
    assert session.exit_code == unison.EXIT_FATAL
    assert session.error == ("Unison stopped the session: The root of one of the replicas has "
                             "been completely emptied. (a replica looks emptied; if that is "
                             "meant, sync with --allow-deletions)")


def test_resolved_conflicts_and_new_folders_count_as_incoming():
    lines = ("new file <==== new file   a.txt  \n"
             "new dir  <---- absent     d  \n"
             "new file ====> new file   b.txt  \n")
    assert unison.parse(0, lines).incoming == 2


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
    argv = unison.command(cfg, "/srv/d", ADDRESS)
    assert argv[:3] == ["/usr/bin/unison", "/srv/d", "ssh://sync@127.0.0.2//srv/d"]
    assert {"-batch", "-times", "-log=false"} <= set(argv)
    assert argv[argv.index("-sshargs") + 1] == (
        "-o ConnectTimeout=4 -o BatchMode=yes "
        "-o UserKnownHostsFile=/var/lib/replimesh/mesh/known_hosts -p 2222")
    assert argv[argv.index("-ui") + 1] == "text"


def test_environment_pins_the_unison_host_name(monkeypatch, tmp_path):
    monkeypatch.setenv("UNISONLOCALHOSTNAME", "container-3f2a")
    cfg = config.parse({"node": "node7", "roots": ["/a"], "unison_dir": str(tmp_path)})
    env = unison.environment(cfg, "node2")
    assert env["UNISONLOCALHOSTNAME"] == "node7"
    assert env["PATH"] == os.environ["PATH"]


def test_each_pair_keeps_its_archives_in_its_own_folder(tmp_path):
    cfg = config.parse({"node": "node1", "roots": ["/a"], "unison_dir": str(tmp_path)})
    (tmp_path / "ar0123").write_text("the archive of a pair, from before confinement")
    (tmp_path / "fp0123").write_text("its fingerprint cache")
    (tmp_path / "lk0123").write_text("a lock: not carried over")
    folder = unison.environment(cfg, "node2")["UNISON"]
    assert folder == str(tmp_path / "pairs" / "node2")
    assert sorted(os.listdir(folder)) == ["ar0123", "fp0123"]  # linked, so Unison finds them
    assert os.stat(folder).st_mode & 0o777 == 0o700
    assert unison.environment(cfg, "node3")["UNISON"] != folder


def test_run_parses_what_the_program_prints(tmp_path):
    program, calls = fake_unison(tmp_path, {"/srv/d": (1, CONFLICT)})
    cfg = config.parse({"node": "node1", "roots": ["/srv/d"], "unison": program,
                        "unison_dir": str(tmp_path / "archives")})
    session = unison.run(cfg, "node2", "/srv/d", ADDRESS)
    assert (session.exit_code, session.conflicts, session.timed_out) == (1, ["a.txt"], False)
    call, = calls_of(calls)
    assert call["argv"] == unison.command(cfg, "/srv/d", ADDRESS)[1:]
    assert (call["cwd"], call["host"]) == ("/", "node1")


def test_changes_coming_in_are_counted_by_their_arrows():
    assert unison.parse(0, INCOMING).incoming == 3
    assert unison.parse(0, TRANSFERRED).incoming == 0


def test_a_busy_peer_replica_is_told_apart_and_named():
    session = unison.parse(3, BUSY)
    assert session.busy
    assert session.error.startswith("busy: replica /srv/replimesh/data on node2 stayed busy")


def test_a_refusal_by_the_peer_beats_lost_connection():
    session = unison.parse(3, REFUSED)
    assert not session.busy
    assert session.error == ("the peer refused: deletion guard: /srv/replimesh/data on node2 "
                             "holds 0 files")


def test_command_names_the_replica_and_keeps_backups_out_of_the_sync():
    cfg = config.parse({"node": "node1", "roots": ["/srv/my data"]})
    argv = unison.command(cfg, "/srv/my data", ADDRESS, ("-path", "a"))
    assert argv[argv.index("-servercmd") + 1] == "replimesh-replica '/srv/my data'"
    assert "-ignorelocks" in argv
    assert argv[argv.index("-backupdir") + 1] == "/srv/my data/.replimesh-backup"
    assert argv[argv.index("-ignore") + 1] == "Path .replimesh-backup"
    assert argv[-2:] == ["-path", "a"]
