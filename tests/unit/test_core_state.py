"""The state file: merged per round, kept last_ok, survives damage, written atomically."""

import json

import pytest

from plugins.module_utils.replimesh import state


def result(peer, outcome, **extra):
    return {"peer": peer, "address": "10.0.0.2", "result": outcome, "duration": 0.1,
            "files": 0, "bytes": 0, "conflicts": 0, "message": "", **extra}


def test_absent_file_is_an_empty_state(tmp_path):
    assert state.load(str(tmp_path / "state.json")) == {"peers": {}}


@pytest.mark.parametrize("text", ["{half", "[]", '{"peers": []}', '"peers"'])
def test_damaged_file_loads_as_empty_and_damaged(tmp_path, text):
    path = tmp_path / "state.json"
    path.write_text(text, encoding="utf-8")
    assert state.load(str(path)) == {"peers": {}, "damaged": True}


def test_record_writes_node_round_and_peer(tmp_path):
    path = str(tmp_path / "state.json")
    state.record(path, "node1", "2026-11-23T19:00:00+00:00", [result("node2", "ok", files=3)])
    recorded = state.load(path)
    assert recorded["node"] == "node1"
    assert recorded["last_round"] == "2026-11-23T19:00:00+00:00"
    entry = recorded["peers"]["node2"]
    assert (entry["result"], entry["files"]) == ("ok", 3)
    assert entry["at"] == entry["last_ok"] == "2026-11-23T19:00:00+00:00"


def test_record_merges_with_earlier_peers(tmp_path):
    path = str(tmp_path / "state.json")
    state.record(path, "node1", "T1", [result("node2", "ok"), result("node3", "ok")])
    state.record(path, "node1", "T2", [result("node3", "failed")])
    peers = state.load(path)["peers"]
    assert (peers["node2"]["at"], peers["node3"]["at"]) == ("T1", "T2")
    assert peers["node3"]["result"] == "failed"


def test_unreachable_keeps_last_ok_from_an_earlier_ok(tmp_path):
    path = str(tmp_path / "state.json")
    state.record(path, "node1", "T1", [result("node2", "ok")])
    state.record(path, "node1", "T2", [result("node2", "unreachable")])
    entry = state.load(path)["peers"]["node2"]
    assert (entry["result"], entry["at"], entry["last_ok"]) == ("unreachable", "T2", "T1")


def test_never_ok_peer_has_no_last_ok(tmp_path):
    path = str(tmp_path / "state.json")
    state.record(path, "node1", "T1", [result("node2", "unreachable")])
    assert state.load(path)["peers"]["node2"]["last_ok"] is None


def test_record_over_a_damaged_file_starts_over(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{half", encoding="utf-8")
    state.record(str(path), "node1", "T1", [result("node2", "ok")])
    recorded = state.load(str(path))
    assert "damaged" not in recorded
    assert list(recorded["peers"]) == ["node2"]


def test_write_json_leaves_no_temp_files(tmp_path):
    path = tmp_path / "state.json"
    state.write_json(str(path), {"b": 1, "a": [2]})
    state.write_json(str(path), {"c": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert json.loads(path.read_text(encoding="utf-8")) == {"c": 3}
    assert path.read_text(encoding="utf-8").endswith("\n")


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "state.json"
    state.write_json(str(path), {"peers": {}})
    with pytest.raises(TypeError):
        state.write_json(str(path), {"peers": object()})
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    assert json.loads(path.read_text(encoding="utf-8")) == {"peers": {}}
