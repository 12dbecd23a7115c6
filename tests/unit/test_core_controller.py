"""The operator's side: the signed list built from the inventory, with the real ssh-keygen."""

import os
import stat

import pytest

from plugins.module_utils.replimesh import controller, signature
from plugins.module_utils.replimesh import peers as peer_list
from plugins.module_utils.replimesh.controller import Member
from plugins.module_utils.replimesh.errors import ConfigError
from plugins.module_utils.replimesh.peers import REMOVED

from .support import entry, fake_key, key

NOW = 1000


def member(name, address=None):
    return Member(name, (address or f"127.0.0.{name[-1]}",), fake_key("sync", name),
                  (fake_key("host", name),))


def build(mesh, removed=(), members=None, known=(), now=NOW):
    members = [member(n) for n in mesh] if members is None else members
    return controller.build(list(mesh), list(removed), members, list(known), key()[0],
                            key()[1], now=now)


def verifies(entry_):
    return signature.verify(key()[1], peer_list.payload(entry_), entry_.signature)


MESH = ["node1", "node2", "node3"]


def test_new_members_are_signed_at_the_current_time():
    built = build(MESH)
    assert built.signed == MESH
    assert built.warnings == []
    assert sorted(built.peers) == MESH
    for name, made in built.peers.items():
        assert (made.addresses, made.state, made.version) == \
            ((f"127.0.0.{name[-1]}",), "active", NOW)
        assert made.ssh_key == fake_key("sync", name)
        assert made.host_keys == (fake_key("host", name),)
        assert verifies(made)


def test_an_unchanged_inventory_signs_nothing():
    first = build(MESH)
    second = build(MESH, known=[first.peers], now=NOW + 50)
    assert second.signed == []
    assert second.peers == first.peers
    assert peer_list.dumps(second.peers) == peer_list.dumps(first.peers)


def test_a_changed_member_alone_is_signed_again_above_what_was_seen():
    first = build(MESH, now=NOW)
    moved = [member("node1"), member("node2", "127.0.1.2"), member("node3")]
    second = build(MESH, members=moved, known=[first.peers], now=5)  # a clock gone back
    assert second.signed == ["node2"]
    assert second.peers["node2"].addresses == ("127.0.1.2",)
    assert second.peers["node2"].version == NOW + 1
    assert verifies(second.peers["node2"])
    assert second.peers["node1"] is first.peers["node1"]


def test_versions_go_above_the_highest_seen_in_any_list():
    old = entry("node2", version=NOW + 40, address="127.0.0.99")
    built = build(MESH, known=[{"node2": entry("node2", version=3, address="127.0.0.98")},
                               {"node2": old}])
    assert built.peers["node2"].version == NOW + 41
    assert built.peers["node2"].addresses == ("127.0.0.2",)


def test_removed_nodes_get_a_tombstone():
    first = build(MESH)
    built = build(["node1", "node2"], removed=["node3"], known=[first.peers])
    assert built.signed == ["node3"]
    tombstone = built.peers["node3"]
    assert (tombstone.state, tombstone.addresses, tombstone.ssh_key, tombstone.host_keys) == \
        (REMOVED, (), "", ())
    assert tombstone.version == NOW + 1
    assert verifies(tombstone)
    again = build(["node1", "node2"], removed=["node3"], known=[built.peers])
    assert again.signed == []
    assert again.peers["node3"] == tombstone


def test_a_node_never_seen_can_be_removed_ahead():
    built = build(["node1"], removed=["node9"])
    assert built.peers["node9"].state == REMOVED
    assert built.signed == ["node1", "node9"]


def test_a_removed_node_put_back_in_mesh_is_active_again():
    tombstone = entry("node3", state=REMOVED, version=7)
    built = build(MESH, known=[{"node3": tombstone}], now=1)
    assert built.peers["node3"].active
    assert built.peers["node3"].version == 8


def test_an_unreached_node_keeps_its_verified_entry():
    first = build(MESH)
    built = build(MESH, members=[member("node1"), member("node2")], known=[first.peers])
    assert built.peers["node3"] == first.peers["node3"]
    assert (built.signed, built.warnings) == ([], [])


def test_an_unreached_removed_node_in_mesh_stays_removed_with_a_warning():
    tombstone = entry("node3", state=REMOVED, version=7)
    built = build(MESH, members=[member("node1"), member("node2")], known=[{"node3": tombstone}])
    assert built.peers["node3"] == tombstone
    assert built.warnings == ["node3 is in mesh but was removed and is not reachable: it comes "
                              "back when site.yml reaches it"]


def test_an_unreached_unknown_node_is_left_out_with_a_warning():
    built = build(MESH, members=[member("node1"), member("node2")])
    assert "node3" not in built.peers
    assert built.warnings == ["node3 is in mesh but was not reached and no peer list knows "
                              "it: it joins when site.yml reaches it"]


def test_entries_in_neither_group_are_kept_and_active_ones_warned_about():
    known = {"node8": entry("node8"), "node9": entry("node9", state=REMOVED)}
    built = build(["node1"], known=[known])
    assert built.peers["node8"] == known["node8"]
    assert built.peers["node9"] == known["node9"]
    assert built.warnings == ["node8 is in the peer list but in neither mesh nor mesh_removed: "
                              "left active; move it to mesh_removed to revoke it"]


def test_entries_not_signed_by_the_current_key_are_never_copied():
    forged = entry("node2", version=NOW + 500, address="127.0.0.66", owner="impostor")
    stray = entry("node7", owner="impostor")
    unsigned = entry("node3", owner=None)
    built = build(MESH, members=[member("node1"), member("node2")],
                  known=[{"node2": forged, "node7": stray, "node3": unsigned}])
    assert built.peers["node2"].addresses == ("127.0.0.2",)
    assert built.peers["node2"].version == NOW + 501      # above it all the same
    assert verifies(built.peers["node2"])
    assert sorted(built.peers) == ["node1", "node2"]      # node3 unreached, node7 unknown
    assert built.warnings[0] == ("entries of node2, node3, node7 not signed by the current "
                                 "operator key were not trusted (signed again if still in "
                                 "the inventory)")
    assert "node3 is in mesh but was not reached and its entry is not signed by the current" \
        " operator key (rotated?)" in built.warnings[1]


def test_a_forged_entry_does_not_replace_the_verified_one():
    first = build(MESH)
    forged = entry("node3", version=NOW + 9, address="127.0.0.66", owner="impostor")
    built = build(MESH, members=[member("node1"), member("node2")],
                  known=[first.peers, {"node3": forged}])
    assert built.peers["node3"] == first.peers["node3"]


def test_the_newest_verified_copy_is_used():
    old, new = entry("node3", version=1), entry("node3", version=2, address="127.0.1.3")
    built = build(MESH, members=[member("node1"), member("node2")],
                  known=[{"node3": new}, {"node3": old}])
    assert built.peers["node3"] == new


def test_a_kept_entry_clashing_with_a_reached_node_is_an_error():
    known = {"node3": entry("node3", address="127.0.0.2")}
    with pytest.raises(ConfigError, match=r"address 127\.0\.0\.2 is listed for both"):
        build(MESH, members=[member("node1"), member("node2")], known=[known])


def test_build_checks_the_inventory_first():
    with pytest.raises(ConfigError, match="node2 in both groups"):
        build(MESH, removed=["node2"])


@pytest.mark.parametrize("mesh, removed, members, needle", [
    (["a1", "b2"], ["b2", "a1"], [], "^a1, b2 in both groups mesh and mesh_removed: keep each "
                                     "node in one of them$"),
    (["a1", "b2"], [], [Member("b2", ("127.0.0.5",), "", ()), Member("a1", ("127.0.0.5",), "",
                                                                     ())],
     "^a1 and b2 have the same address 127.0.0.5: give each node its own replimesh_address$"),
    (["a1"], [], [Member("a1", (), "", ())], "^a1 has no address: set replimesh_address$"),
])
def test_check_inventory_errors(mesh, removed, members, needle):
    with pytest.raises(ConfigError, match=needle):
        controller.check_inventory(mesh, removed, members)


def test_check_inventory_takes_a_sound_inventory():
    controller.check_inventory(["a1", "b2"], ["c3"], [member("a1"), member("b2")])


# The operator key


def test_ensure_operator_key_makes_a_key_kept_out_of_git(tmp_path):
    path = tmp_path / "secret" / "operator_ed25519"
    public = controller.ensure_operator_key(str(path), create=True)
    assert public.startswith("ssh-ed25519 ") and len(public.split()) == 2
    assert (tmp_path / "secret" / ".gitignore").read_text(encoding="utf-8").splitlines()[-1] \
        == "*"
    assert stat.S_IMODE(os.stat(tmp_path / "secret").st_mode) == 0o700
    assert path.exists()
    assert controller.ensure_operator_key(str(path), create=True) == public   # kept
    assert controller.ensure_operator_key(str(path), create=False) == public


def test_an_existing_gitignore_is_left_alone(tmp_path):
    (tmp_path / ".gitignore").write_text("mine\n", encoding="utf-8")
    controller.ensure_operator_key(str(tmp_path / "key"), create=True)
    assert (tmp_path / ".gitignore").read_text(encoding="utf-8") == "mine\n"


def test_a_missing_key_is_an_error_without_create(tmp_path):
    path = str(tmp_path / "none")
    with pytest.raises(ConfigError, match=f"^operator key {path} does not exist: create it "
                                          f"with ssh-keygen -t ed25519 -f {path}"):
        controller.ensure_operator_key(path, create=False)
    assert list(tmp_path.iterdir()) == []


def test_a_key_without_its_public_half_is_an_error(tmp_path):
    path = tmp_path / "key"
    controller.ensure_operator_key(str(path), create=True)
    os.unlink(f"{path}.pub")
    with pytest.raises(ConfigError, match=r"has no readable .*key\.pub"):
        controller.ensure_operator_key(str(path), create=False)


def test_signers_file_for_verifies_the_keys_signatures():
    with open(key()[0] + ".pub", encoding="utf-8") as handle:
        public = handle.read()
    path = controller.signers_file_for(public)
    try:
        with open(path, encoding="utf-8") as handle:
            assert handle.read() == signature.allowed_signers(public)
        made = entry("node1")
        assert signature.verify(path, peer_list.payload(made), made.signature)
    finally:
        os.unlink(path)
