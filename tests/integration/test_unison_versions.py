"""The replimesh_unison role's mesh-wide version check, run by real Ansible on local hosts
standing for nodes with the given Unison versions."""

import subprocess
import textwrap

import pytest

PLAY = """
- name: Check fake nodes' Unison versions
  hosts: mesh
  gather_facts: false
  tasks:
    - name: Pretend each node reported its version
      ansible.builtin.set_fact:
        replimesh_unison_version: "{{ fake_version }}"
    - name: Run the role's check
      ansible.builtin.include_role:
        name: replimesh_unison
        tasks_from: compatible
"""


def check(tmp_path, versions):
    hosts = "".join(f"    {name}: {{fake_version: '{v}'}}\n" for name, v in versions.items())
    (tmp_path / "hosts.yml").write_text(textwrap.dedent("""\
        mesh:
          vars: {ansible_connection: local, ansible_python_interpreter: auto_silent}
          hosts:
        """) + hosts)
    (tmp_path / "play.yml").write_text(PLAY)
    return subprocess.run(["ansible-playbook", "-i", str(tmp_path / "hosts.yml"),
                           str(tmp_path / "play.yml")], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("versions", [
    {"node1": "2.52.1", "node2": "2.53.5", "node3": "2.53.0"},   # all speak the new protocol
    {"node1": "2.51.3", "node2": "2.51.3"},                      # old, but identical
])
def test_compatible_versions_pass(tmp_path, versions):
    done = check(tmp_path, versions)
    assert done.returncode == 0, done.stdout


def test_incompatible_versions_fail_naming_each_host_and_version(tmp_path):
    done = check(tmp_path, {"node1": "2.52.1", "node2": "2.51.3", "node3": "2.48.4"})
    assert done.returncode != 0
    assert "Unison versions cannot talk to each other" in done.stdout
    assert "node1=2.52.1, node2=2.51.3, node3=2.48.4" in done.stdout
