"""`fab mesh.peers`'s table and `fab mesh.propagate`'s outcome lines: pure parts only."""

import json
import time

import pytest
from invoke import Context, Exit

from fabfile import mesh, peers_view
from plugins.module_utils.replimesh import peers
from plugins.module_utils.replimesh.errors import ConfigError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAWRGsGvanwp17HbmaQLEkMsueD7PCXcYLl4jpOflF7u"


def entry(name, version=1, state="active", signature="sig"):
    number = int(name.removeprefix("node"))
    active = state == "active"
    return peers.Entry(name, (f"10.0.0.{number}",) if active else (), KEY if active else "",
                       (KEY,), state, version, signature)


def listing(*entries):
    return {e.name: e for e in entries}


def cells(table):
    """The table's rows split into cells (cells hold one space: split on two or more)."""
    return [[c for c in line.split("  ") if c.strip()] for line in table.splitlines()]


def strip(rows):
    return [[c.strip() for c in row] for row in rows]


BASE = listing(entry("node1"), entry("node2"), entry("node3"))


def test_agreeing_lists_render_one_row_per_entry():
    table = peers_view.render_peers({"node1": BASE, "node2": BASE}, BASE)
    assert strip(cells(table)) == [
        ["ENTRY \\ LIST OF", "node1", "node2", "controller"],
        ["node1", "v1 active", "v1 active", "v1 active"],
        ["node2", "v1 active", "v1 active", "v1 active"],
        ["node3", "v1 active", "v1 active", "v1 active"],
        ["all nodes agree"],
    ]


def test_no_controller_column_without_a_controller_copy():
    header = peers_view.render_peers({"node1": BASE}).splitlines()[0]
    assert header.split() == ["ENTRY", "\\", "LIST", "OF", "node1"]


def test_columns_are_aligned():
    newer = {**BASE, "node2": entry("node2", version=12, state="removed")}
    header, first, second, *_ = peers_view.render_peers(
        {"node1": newer, "node2": BASE, "node3": {}}).splitlines()
    assert header.index("node2") == first.rindex("v1 active") == second.index("v1 active*")
    assert header.index("node3") == first.index("-*") == second.index("-*")


def test_a_stale_or_missing_entry_is_starred_against_the_newest():
    removed = entry("node3", version=2, state="removed")
    added = entry("node4", version=2)
    ahead = {**BASE, "node3": removed, "node4": added}
    table = peers_view.render_peers({"node1": ahead, "node2": BASE}, ahead)
    rows = strip(cells(table))
    assert rows[3] == ["node3", "v2 removed", "v1 active*", "v2 removed"]
    assert rows[4] == ["node4", "v2 active", "-*", "v2 active"]
    assert rows[-1] == [peers_view.DIFFERS]
    assert rows[-1][0].startswith("* = differs from the newest signed entry")


def test_the_whole_entry_is_compared_not_just_version_and_state():
    other = {**BASE, "node2": entry("node2", signature="another signature")}
    rows = strip(cells(peers_view.render_peers({"node1": BASE, "node2": other})))
    winner = peers.winner(BASE["node2"], other["node2"])
    assert rows[2] == ["node2", "v1 active" + ("" if winner is BASE["node2"] else "*"),
                       "v1 active" + ("" if winner is other["node2"] else "*")]
    assert rows[-1] == [peers_view.DIFFERS]


def test_a_stale_controller_copy_is_starred_too():
    ahead = {**BASE, "node4": entry("node4", version=5)}
    rows = strip(cells(peers_view.render_peers({"node1": ahead}, BASE)))
    assert rows[4] == ["node4", "v5 active", "-*"]


def test_unreadable_lists_get_question_marks_and_a_note():
    table = peers_view.render_peers({"node1": BASE, "node2": "TimeoutError: timed out",
                                     "node3": BASE})
    lines = table.splitlines()
    assert [line.split() for line in lines[1:4]] == [
        ["node1", "v1", "active", "?", "v1", "active"],
        ["node2", "v1", "active", "?", "v1", "active"],
        ["node3", "v1", "active", "?", "v1", "active"],
    ]
    assert lines[4:] == ["node2: list not read (TimeoutError: timed out)",
                         peers_view.AGREE_READ]


def test_an_unreadable_controller_copy_is_a_column_of_question_marks():
    lines = peers_view.render_peers({"node1": BASE}, "peers.json is not JSON").splitlines()
    assert lines[1].split() == ["node1", "v1", "active", "?"]
    assert lines[-2:] == ["controller: list not read (peers.json is not JSON)",
                          peers_view.AGREE_READ]


def test_nothing_read_is_only_notes():
    lines = peers_view.render_peers({"node1": "refused", "node2": "refused"}).splitlines()
    assert lines == ["ENTRY \\ LIST OF  node1  node2",
                     "node1: list not read (refused)", "node2: list not read (refused)"]


def test_empty_lists_agree():
    assert peers_view.render_peers({"node1": {}}).splitlines() == [
        "ENTRY \\ LIST OF  node1", peers_view.AGREE]


def test_node_list_parses_the_nodes_json():
    assert peers_view.node_list(0, peers.dumps(BASE), "node1's list") == BASE


@pytest.mark.parametrize("code, output, why", [
    (None, "TimeoutError: timed out", "TimeoutError: timed out"),
    (2, "replimesh: no config\nsecond line\n", "replimesh: no config"),
    (1, "", "exit 1"),
    (-1, "ThreadException: broke", "ThreadException: broke"),
])
def test_node_list_of_a_failed_command_is_why(code, output, why):
    assert peers_view.node_list(code, output, "node1's list") == why


def test_node_list_of_garbage_says_so():
    assert peers_view.node_list(0, "hello", "x").startswith("not JSON: ")
    bad = json.dumps({"format": 2, "peers": [{"name": "node1"}]})
    assert peers_view.node_list(0, bad, "node1's list") == (
        "node1's list: entry 1 (node1): state must be one of active, removed")


def test_read_list_returns_text_and_entries(tmp_path):
    path = tmp_path / "peers.json"
    path.write_text(peers.dumps(BASE))
    assert peers_view.read_list(path) == (peers.dumps(BASE), BASE)


@pytest.mark.parametrize("text, problem", [
    (None, "cannot read {path}: No such file or directory"),
    ("{", "{path} is not JSON: "),
    ('{"format": 1, "peers": []}', "{path}: expected an object with \"format\": 2"),
])
def test_read_list_names_the_file_and_the_problem(tmp_path, text, problem):
    path = tmp_path / "peers.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as error:
        peers_view.read_list(path)
    assert str(error.value).startswith(problem.format(path=path))


def accept_reply(changed=(), ignored=()):
    return json.dumps({"node": "node1", "changed": list(changed), "ignored": list(ignored)})


@pytest.mark.parametrize("code, output, expected", [
    (0, accept_reply(), ("ok", "unchanged", False)),
    (0, accept_reply(["node5", "node6"]) + "\n", ("ok", "changed: node5, node6", False)),
    (1, accept_reply(["node5"], ["node6"]),
     ("FAILED", "ignored (not signed by the operator key): node6; changed: node5", True)),
    (1, accept_reply([], ["node6"]),
     ("FAILED", "ignored (not signed by the operator key): node6; unchanged", True)),
    (3, accept_reply(), ("FAILED", "exit 3; unchanged", True)),
    (2, "replimesh: peer list from stdin is not JSON: x",
     ("FAILED", "replimesh: peer list from stdin is not JSON: x", True)),
    (1, "sudo: a password is required\n", ("FAILED", "sudo: a password is required", True)),
    (0, "", ("FAILED", "exit 0", True)),
    (0, "[1, 2]", ("FAILED", "[1, 2]", True)),
    (-1, "ThreadException: broke", ("FAILED", "ThreadException: broke", True)),
    (None, "NoValidConnectionsError: [Errno 111] refused",
     ("UNREACHABLE", "NoValidConnectionsError: [Errno 111] refused", False)),
])
def test_accept_outcome(code, output, expected):
    assert peers_view.accept_outcome(code, output) == expected


def test_whole_text_hands_over_everything_at_once():
    stream = mesh.WholeText("abc\ndef\n")
    assert stream.read(1) == "abc\ndef\n"
    assert stream.read(1) == ""


def test_whole_text_feeds_a_command_quickly_and_closes_its_stdin():
    # invoke reads other streams one character per 10 ms: 5000 would take 50 s.
    text = "".join(f"line {n}\n" for n in range(700))
    started = time.monotonic()
    result = Context().run("cat", in_stream=mesh.WholeText(text), hide=True, timeout=20)
    assert result.stdout == text
    assert time.monotonic() - started < 5


def test_propagate_without_a_controller_copy_stops_early(tmp_path):
    with pytest.raises(Exit) as error:
        mesh.propagate(Context(), inventory=str(tmp_path))
    assert error.value.code == 2
    assert error.value.message == (f"mesh: no signed list at {tmp_path}/.replimesh/peers.json"
                                   ": run playbooks/site.yml first")


def test_propagate_refuses_a_malformed_list_before_connecting(tmp_path):
    path = tmp_path / "signed.json"
    path.write_text('{"format": 2, "peers": [{"name": "node1", "state": "gone"}]}')
    with pytest.raises(Exit) as error:
        mesh.propagate(Context(), inventory=str(tmp_path / "absent"), peers_file=str(path))
    assert error.value.code == 2
    assert error.value.message == (f"mesh: {path}: entry 1 (node1): state must be one of "
                                   "active, removed")
