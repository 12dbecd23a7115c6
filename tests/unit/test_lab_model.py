"""Pure parts of the lab: subnets, names, addresses, and the files it writes."""

import ipaddress

import pytest
import yaml

from fabfile.lab import access, control, image
from fabfile.lab.errors import LabError
from fabfile.lab.nodes import Lab, Node, choose_subnet, node_address, node_index

net = ipaddress.ip_network


def test_first_free_subnet_skips_every_overlap():
    taken = [net("172.29.0.0/24"), net("172.29.1.128/25"), net("10.0.0.0/8")]
    assert choose_subnet(taken) == net("172.29.2.0/24")


def test_wanted_subnet_is_used_when_free():
    assert choose_subnet([net("172.17.0.0/16")], "192.168.77.0/24") == net("192.168.77.0/24")


@pytest.mark.parametrize("wanted, needle", [
    ("172.17.5.0/24", "overlaps 172.17.0.0/16"),
    ("not-a-subnet", "is not a subnet"),
])
def test_bad_wanted_subnet_says_what_to_fix(wanted, needle):
    with pytest.raises(LabError, match=needle) as caught:
        choose_subnet([net("172.17.0.0/16")], wanted)
    assert "REPLIMESH_LAB_SUBNET" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_full_pool_is_an_error():
    with pytest.raises(LabError, match="no free /24"):
        choose_subnet([net("172.16.0.0/12")])


def test_node_addresses_are_fixed_by_index():
    subnet = net("172.29.3.0/24")
    assert [node_address(subnet, i) for i in (1, 2, 8)] == [
        "172.29.3.11", "172.29.3.12", "172.29.3.18"]
    with pytest.raises(LabError, match="no room"):
        node_address(net("172.29.3.0/28"), 6)


@pytest.mark.parametrize("name", ["node0", "nodeX", "web1", "node"])
def test_node_names_are_checked(name):
    with pytest.raises(LabError, match="not a lab node name"):
        node_index(name)


def test_names_of_a_lab():
    lab = Lab("itest")
    assert (lab.network, lab.container("node2")) == ("replimesh-itest", "replimesh-itest-node2")
    assert lab.inventory_dir.parts[-2:] == ("inventory", "itest")


NODES = [Node("node1", "replimesh-t-node1", "172.29.9.11", "running"),
         Node("node2", "replimesh-t-node2", "172.29.9.12", "exited")]


def test_known_hosts_pins_name_and_address():
    text = access.render_known_hosts({NODES[0]: ["ssh-ed25519 AAAA1", "ssh-rsa BBBB1"],
                                      NODES[1]: ["ssh-ed25519 AAAA2"]})
    assert text.splitlines() == ["node1,172.29.9.11 ssh-ed25519 AAAA1",
                                 "node1,172.29.9.11 ssh-rsa BBBB1",
                                 "node2,172.29.9.12 ssh-ed25519 AAAA2"]


def test_known_hosts_round_trips_for_stopped_nodes(tmp_path, monkeypatch):
    lab = Lab("t")
    monkeypatch.setattr(access, "known_hosts_path", lambda _lab: tmp_path / "known_hosts")
    (tmp_path / "known_hosts").write_text(
        access.render_known_hosts({NODES[0]: ["ssh-ed25519 AAAA1"], NODES[1]: ["ssh-rsa B"]}))
    assert control._pinned_from_file(lab) == {"node1": ["ssh-ed25519 AAAA1"],
                                              "node2": ["ssh-rsa B"]}


def test_inventory_lists_every_node_with_strict_host_keys():
    lab = Lab("t")
    inventory = yaml.safe_load(access.render_inventory(lab, NODES))
    hosts = inventory["all"]["children"]["mesh"]["hosts"]
    assert hosts == {"node1": {"ansible_host": "172.29.9.11"},
                     "node2": {"ansible_host": "172.29.9.12"}}
    common = inventory["all"]["vars"]["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=yes" in common
    assert f"UserKnownHostsFile={access.known_hosts_path(lab)}" in common
    assert "ServerAliveInterval=2" in common and "ServerAliveInterval=2" in access.ssh_options(lab)
    assert inventory["all"]["vars"]["ansible_private_key_file"] == str(access.key_path(lab))


def test_inventory_keeps_removed_nodes_in_their_group_across_rewrites(tmp_path):
    lab = Lab("t")
    hosts = tmp_path / "hosts.yml"
    hosts.write_text(access.render_inventory(lab, NODES))
    assert access.removed_in(hosts) == frozenset()
    assert yaml.safe_load(hosts.read_text())["all"]["children"]["mesh_removed"] == {}

    hosts.write_text(access.render_inventory(lab, NODES, access.removed_in(hosts) | {"node2"}))
    groups = yaml.safe_load(hosts.read_text())["all"]["children"]
    assert set(groups["mesh"]["hosts"]) == {"node1"}
    assert groups["mesh_removed"]["hosts"] == {"node2": {"ansible_host": "172.29.9.12"}}
    assert access.removed_in(hosts) == {"node2"}


def test_image_sources_cover_updates_and_security():
    sources = image.apt_sources("http://mirror.example/debian/")
    assert "URIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates" in sources
    assert "URIs: http://mirror.example/debian-security\nSuites: bookworm-security" in sources


def test_customize_strips_host_identity_and_relaxes_loginuid(tmp_path):
    rootfs = tmp_path
    for folder in ("etc/ssh", "etc/pam.d", "etc/apt/sources.list.d",
                   "var/cache/apt/archives", "var/lib/apt/lists"):
        (rootfs / folder).mkdir(parents=True)
    (rootfs / "etc/ssh/ssh_host_ed25519_key").write_text("secret")
    (rootfs / "etc/ssh/ssh_host_ed25519_key.pub").write_text("public")
    (rootfs / "etc/machine-id").write_text("0123456789abcdef\n")
    for service in ("sshd", "cron"):
        (rootfs / "etc/pam.d" / service).write_text(
            "session    required     pam_env.so\nsession    required     pam_loginuid.so\n")
    (rootfs / "var/cache/apt/archives/x.deb").write_text("deb")

    image.customize(rootfs, image.DEFAULT_MIRROR)

    assert not list((rootfs / "etc/ssh").glob("ssh_host_*"))
    assert (rootfs / "etc/machine-id").read_text() == ""
    for service in ("sshd", "cron"):
        pam = (rootfs / "etc/pam.d" / service).read_text()
        assert "session    optional     pam_loginuid.so" in pam
        assert "session    required     pam_env.so" in pam
    assert not (rootfs / "var/cache/apt/archives/x.deb").exists()
    assert (rootfs / "var/lib/apt/lists").stat().st_mtime == 0
    assert (rootfs / "usr/local/sbin/replimesh-lab-init").stat().st_mode & 0o111


def test_recipe_digest_is_stable():
    assert image.recipe_digest() == image.recipe_digest()
    assert len(image.recipe_digest()) == 16
