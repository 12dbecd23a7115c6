"""`fab lab.*` as an operator runs it: a lab of its own, clear errors, nothing left behind."""

import subprocess

import pytest

from fabfile.lab.image import IMAGE
from fabfile.lab.nodes import Lab

from .helpers import fab


def _docker(*args):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=False)


def test_up_status_down_leaves_nothing_behind():
    lab = Lab("itest-cli")
    up = fab("lab.up", "--nodes", "1", lab_name=lab.name)
    assert "1 of 1 nodes answer SSH" in up.stdout
    status = fab("lab.status", lab_name=lab.name).stdout.splitlines()
    assert status[0].split() == ["NODE", "CONTAINER", "ADDRESS", "STATE", "SSH"]
    assert status[1].split()[::3] == ["node1", "running"] and status[1].split()[-1] == "ok"

    fab("lab.down", lab_name=lab.name)
    assert _docker("ps", "-aq", "--filter", "label=replimesh.lab=itest-cli").stdout == ""
    assert _docker("network", "inspect", lab.network).returncode != 0
    assert not lab.inventory_dir.exists()
    assert "is down" in fab("lab.status", lab_name=lab.name).stdout


def test_unknown_node_is_a_one_line_error(lab):
    done = fab("lab.stop", "node9", lab_name=lab.name, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == ("lab: node9 is not in lab 'itest': "
                                   "`fab lab.status` lists its nodes")


@pytest.fixture
def squatter():
    """A container that happens to carry a lab node's name but is not the lab's."""
    name = "replimesh-clash-node1"
    _docker("run", "-d", "--name", name, "--entrypoint", "sleep", IMAGE, "600")
    yield name
    _docker("rm", "-f", name)
    fab("lab.down", lab_name="clash")


def test_a_name_clash_is_refused_and_the_other_container_is_kept(squatter):
    done = fab("lab.up", "--nodes", "1", lab_name="clash", check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"lab: a container named {squatter} exists and is not part "
                                   f"of lab 'clash': remove it (docker rm -f {squatter})")
    assert _docker("inspect", "-f", "{{.State.Running}}", squatter).stdout.strip() == "true"
