"""Hosts for Fabric tasks, read from the Ansible inventory: never a second list of nodes.

Connections keep Ansible's security: the inventory's key, and host keys checked against
the known_hosts file it names (or ~/.ssh/known_hosts), with unknown hosts refused.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Connection

DEFAULT_INVENTORY = "inventory/lab"


class InventoryError(Exception):
    """The inventory cannot be read; the message says what to fix."""


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    user: str
    port: int
    key_file: str | None
    known_hosts: str


def inventory_path(option: str | None) -> str:
    return option or os.environ.get("REPLIMESH_INVENTORY", DEFAULT_INVENTORY)


def mesh_hosts(inventory: str, group: str = "mesh", optional: tuple[str, ...] = ()) -> list[Host]:
    """Every host of the group, which must have some, then those of the optional groups
    (missing or empty is fine), each host once: with what it takes to reach it."""
    # Reading an inventory needs no terminal: Ansible refuses a non-blocking stdin.
    done = subprocess.run(["ansible-inventory", "-i", inventory, "--list"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0 or not Path(inventory).exists():
        raise InventoryError(f"cannot read inventory {inventory}: "
                             + (done.stderr.strip().splitlines() or ["does it exist?"])[-1])
    return hosts_in(json.loads(done.stdout), inventory, group, optional)


def hosts_in(data: dict, inventory: str, group: str,
             optional: tuple[str, ...] = ()) -> list[Host]:
    """The hosts of `ansible-inventory --list` output: group's (some required), then the
    optional groups' not seen yet, each part sorted by name."""
    names = sorted(_group_hosts(data, group))
    if not names:
        raise InventoryError(f"inventory {inventory} has no hosts in group {group!r}")
    for extra in optional:
        names += sorted(_group_hosts(data, extra) - set(names))
    hostvars = data.get("_meta", {}).get("hostvars", {})
    return [_host(name, hostvars.get(name, {})) for name in names]


def inventory_dir(inventory: str) -> Path:
    """Ansible's inventory_dir: the inventory itself if it is a folder, else its folder."""
    path = Path(inventory)
    return path if path.is_dir() else path.parent


def connect(host: Host) -> Connection:
    connection = Connection(
        host.address, user=host.user, port=host.port, connect_timeout=10,
        connect_kwargs={"key_filename": host.key_file, "look_for_keys": host.key_file is None,
                        "allow_agent": host.key_file is None})
    # Fabric trusts unknown hosts by default (AutoAddPolicy): pin them instead.
    connection.client.load_host_keys(host.known_hosts)
    connection.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return connection


def _group_hosts(data: dict, group: str) -> set[str]:
    entry = data.get(group, {})
    names = set(entry.get("hosts", []))
    for child in entry.get("children", []):
        names |= _group_hosts(data, child)
    return names


def _host(name: str, hostvars: dict) -> Host:
    known_hosts = str(Path.home() / ".ssh" / "known_hosts")
    for word in shlex.split(hostvars.get("ansible_ssh_common_args", "")):
        if word.startswith("UserKnownHostsFile="):
            known_hosts = word.split("=", 1)[1]
    return Host(name=name, address=hostvars.get("ansible_host", name),
                user=hostvars.get("ansible_user", os.environ.get("USER", "root")),
                port=int(hostvars.get("ansible_port", 22)),
                key_file=hostvars.get("ansible_private_key_file"), known_hosts=known_hosts)
