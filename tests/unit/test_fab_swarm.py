"""`fab swarm.publish`'s live view and finish decision, and `fab swarm.status`'s table:
pure parts only."""

import json

import pytest

from fabfile import swarm

HASH = "ab" * 32
OLD = "cd" * 32


def entry(state="downloading", infohash=HASH, path="big.bin", **extra):
    if state in ("kept", "waiting"):  # what the status has for files out of the session
        return {"path": path, "infohash": infohash, "state": state, "size": 100,
                "progress": 1.0 if state == "kept" else 0.0, **extra}
    return {"path": path, "infohash": infohash, "state": state, "size": 100,
            "progress": 1.0 if state == "complete" else 0.5, "download_rate": 2_500_000,
            "upload_rate": 1_000_000, "peers": 3, "eta_s": 20.0, "error": "", **extra}


def status(*files, running=True):
    return {"node": "x", "updated": 1.0, "running": running, "files": list(files)}


@pytest.mark.parametrize("progress, expected", [
    (0.0, "[....]"), (0.5, "[##..]"), (1.0, "[####]"), (0.12, "[....]"), (0.13, "[#...]"),
    (-1, "[....]"), (2, "[####]"),
])
def test_bar_fills_in_proportion_and_stays_in_its_width(progress, expected):
    assert swarm.bar(progress, width=4) == expected


@pytest.mark.parametrize("seconds, expected", [
    (None, "-"), (0, "0s"), (59.4, "59s"), (60, "1m00s"), (125, "2m05s"), (3600, "1h00m"),
    (7322, "2h02m"),
])
def test_eta_uses_the_two_largest_units(seconds, expected):
    assert swarm.eta(seconds) == expected


def test_rate_is_in_megabytes_a_second():
    assert swarm.rate(12_345_678) == "12.3 MB/s"
    assert swarm.rate(0) == "0.0 MB/s"
    assert swarm.rate(None) == "-"


@pytest.mark.parametrize("code, output, expected", [
    (None, "NoValidConnectionsError: [Errno None] Unable to connect to port 22",
     "unreachable: NoValidConnectionsError: [Errno None] Unable to connect to port 22"),
    (2, "replimesh: cannot read /etc/replimesh/config.json\n",
     "status failed: replimesh: cannot read /etc/replimesh/config.json"),
    (127, "", "status failed: exit 127"),
    (0, "Traceback...", "status not JSON: Traceback..."),
    (0, "[]", "status without a list of files"),
])
def test_a_status_not_read_says_why(code, output, expected):
    assert swarm.read_status(code, output) == expected


def test_a_status_read_is_the_node_s_json():
    assert swarm.read_status(0, json.dumps(status(entry()))) == status(entry())


def test_downloading_line_shows_bar_percent_rate_peers_and_eta():
    line = swarm.node_line("node1", status(entry()), HASH, "big.bin", width=6)
    assert line == ("node1  downloading [########........]  50.0%     2.5 MB/s  "
                    "3 peers  ETA 20s")


def test_complete_line_shows_what_the_node_sends_and_no_eta():
    line = swarm.node_line("node1", status(entry("complete")), HASH, "big.bin")
    assert "complete" in line and "100.0%" in line
    assert "up 1.0 MB/s" in line and line.endswith("ETA -")


def test_kept_line_has_no_rates():
    line = swarm.node_line("node1", status(entry("kept")), HASH, "big.bin")
    assert line.split()[1:4] == ["kept", "[################]", "100.0%"]
    assert "MB/s" not in line


def test_line_of_a_node_without_the_offer_says_which_case():
    assert "the offer is not here yet" in swarm.node_line("n", status(), HASH, "big.bin")
    older = swarm.node_line("n", status(entry("complete", OLD)), HASH, "big.bin")
    assert f"holds another version ({OLD[:12]})" in older


def test_unreachable_and_stopped_daemon_are_said_on_the_line():
    line = swarm.node_line("node4", "unreachable: timed out", HASH, "big.bin")
    assert line.split()[:2] == ["node4", "UNREACHABLE"] and line.endswith("timed out")
    line = swarm.node_line("node4", "no answer for 12 s (last: x)", HASH, "big.bin")
    assert line.split()[1] == "UNREACHABLE"
    stopped = swarm.node_line("node2", status(entry(), running=False), HASH, "big.bin")
    assert stopped.endswith("swarm daemon NOT running")


def test_error_of_the_file_ends_its_line():
    line = swarm.node_line("n", status(entry("error", error="disk full")), HASH, "big.bin")
    assert line.endswith("disk full")


def test_only_that_version_complete_or_kept_counts_as_done():
    readings = {
        "node1": status(entry("complete")),
        "node2": status(entry("kept")),
        "node3": status(entry("complete", OLD)),        # an older version
        "node4": status(entry("downloading")),
        "node5": status(entry("moving")),
        "node6": "unreachable: timed out",
        "node7": status(entry("waiting"), running=False),
    }
    assert swarm.pending(readings, HASH) == {
        "node3": "no offer yet",
        "node4": "downloading 50.0%",
        "node5": "moving 50.0%",
        "node6": "unreachable: timed out",
        "node7": "waiting 0.0%, swarm daemon NOT running",
    }


def test_all_done_when_no_node_is_pending():
    readings = {"node1": status(entry("complete")), "node2": status(entry("kept"))}
    assert swarm.pending(readings, HASH) == {}
    assert swarm.pending({"node1": swarm.ASKING}, HASH) == {"node1": swarm.ASKING}


def test_progress_view_has_a_line_per_node_then_the_count():
    readings = {"node1": status(entry("complete")), "node22": "unreachable: timed out"}
    lines = swarm.progress_lines(["node1", "node22"], readings, HASH, "big.bin", 7.4)
    assert [line.split()[:2] for line in lines[:2]] == [["node1", "complete"],
                                                         ["node22", "UNREACHABLE"]]
    assert lines[0].index("complete") == lines[1].index("UNREACHABLE")  # aligned
    assert lines[2] == "big.bin: 1 of 2 nodes complete, 7 s"


def test_publish_lines_name_each_peer_and_warn_of_refusals():
    lines = swarm.publish_lines({
        "node": "node2", "path": "big.bin", "infohash": HASH, "size": 8_388_608,
        "peers": [{"peer": "node1", "address": "a", "result": "offered", "message": ""},
                  {"peer": "node3", "address": "b", "result": "failed", "message": "bad"}]})
    assert lines[0] == f"node2: published big.bin (8.4 MB) as {HASH[:16]}"
    assert lines[1].split() == ["offered", "to", "node1", "offered"]
    assert lines[2].split() == ["offered", "to", "node3", "failed", "bad"]
    assert lines[3].startswith("  node3 refused the offer")


def test_publish_lines_without_peers():
    lines = swarm.publish_lines({"node": "n", "path": "p", "infohash": HASH, "size": 0,
                                 "peers": []})
    assert lines[1] == "  no active peer to offer it to"


def cells(table):
    """The table's rows split into cells (cells hold one space: split on two or more)."""
    return [[c for c in line.split("  ") if c.strip()] for line in table.splitlines()]


def test_status_table_is_file_by_node_with_unread_nodes_marked():
    readings = {
        "node1": status(entry("complete"), entry("kept", path="a/old.iso")),
        "node2": status(entry("downloading"), running=False),
        "node3": "unreachable: timed out",
    }
    rows = cells(swarm.render_status(["node1", "node2", "node3"], readings))
    assert rows == [
        ["FILE \\ NODE", "node1", "node2", "node3"],
        ["a/old.iso", "kept 100%", "-", "?"],
        ["big.bin", "complete 100%", "downloading 50%", "?"],
        ["node2: swarm daemon NOT running"],
        ["node3: not read (unreachable: timed out)"],
    ]


def test_status_table_notes_errors_and_differing_versions():
    readings = {"node1": status(entry("complete")),
                "node2": status(entry("error", OLD, error="cannot move into place"))}
    lines = swarm.render_status(["node1", "node2"], readings).splitlines()
    assert lines[2:] == ["node2 big.bin: cannot move into place",
                         f"big.bin: versions differ: node1 {HASH[:12]}, node2 {OLD[:12]}"]


def test_status_table_without_files_says_so():
    table = swarm.render_status(["node1"], {"node1": status()})
    assert table.splitlines() == ["FILE \\ NODE  node1", "no swarm files on any node read"]
