"""How the controller reaches the lab: its key, the nodes' pinned host keys, the inventory.

Host keys are read through `docker exec`, a channel that cannot be spoofed from the
network, and written to known_hosts before the first SSH connection: no node is ever
trusted on first use.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import yaml

from .errors import LabError
from .host import run
from .nodes import Lab, Node, exec_in

SSH_DEADLINE_S = 60
HOST_KEY_DEADLINE_S = 30


def key_path(lab: Lab) -> Path:
    return lab.inventory_dir / ".ssh" / "id_ed25519"


def known_hosts_path(lab: Lab) -> Path:
    return lab.inventory_dir / ".ssh" / "known_hosts"


# A node killed mid-command may never send its FIN (a shaped link drops what its queue
# held when the container goes): without keepalives the client would wait forever.
KEEPALIVE = ("ServerAliveInterval=2", "ServerAliveCountMax=3")


def ssh_options(lab: Lab) -> list[str]:
    """Options for every SSH connection to the lab: our key only, pinned host keys only, a
    dead node noticed within 6 s."""
    return ["-i", str(key_path(lab)), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts_path(lab)}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR",
            *(word for option in KEEPALIVE for word in ("-o", option))]


def ssh(lab: Lab, node: Node, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a command on a node as root over real SSH."""
    return subprocess.run(["ssh", *ssh_options(lab), f"root@{node.address}", command],
                          capture_output=True, text=True, timeout=timeout, check=False)


def ensure_controller_key(lab: Lab) -> str:
    """The controller's key for this lab (made once, git-ignored); returns the public line."""
    key = key_path(lab)
    if not key.exists():
        key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
             f"replimesh {lab.name} controller", "-f", str(key)], what="ssh-keygen")
    return key.with_suffix(".pub").read_text().strip()


def authorize(lab: Lab, node: Node, public_key: str) -> None:
    exec_in(lab, node.name, "sh", "-c",
            "umask 077 && mkdir -p /root/.ssh && cat > /root/.ssh/authorized_keys",
            input=public_key + "\n")


def host_keys(lab: Lab, node: Node) -> list[str]:
    """The node's public host keys, waiting for its first boot to have made them."""
    deadline = time.monotonic() + HOST_KEY_DEADLINE_S
    while True:
        try:
            keys = exec_in(lab, node.name, "sh", "-c",
                           "test -s /etc/ssh/ssh_host_ed25519_key.pub && "
                           "cat /etc/ssh/ssh_host_*_key.pub").split("\n")
            return [" ".join(k.split()[:2]) for k in keys if k.strip()]
        except LabError:
            if time.monotonic() > deadline:
                raise LabError(
                    f"{node.name} made no SSH host key within {HOST_KEY_DEADLINE_S} s: "
                    f"see docker logs {node.container}") from None
            time.sleep(0.3)


def render_known_hosts(pinned: dict[Node, list[str]]) -> str:
    return "".join(f"{node.name},{node.address} {key}\n"
                   for node, keys in pinned.items() for key in keys)


def render_inventory(lab: Lab, nodes: list[Node], removed: frozenset[str] = frozenset()) -> str:
    """Every node in group mesh, except those the operator moved to mesh_removed."""
    groups = {"mesh": {"hosts": {n.name: {"ansible_host": n.address}
                                 for n in nodes if n.name not in removed}}}
    gone = {n.name: {"ansible_host": n.address} for n in nodes if n.name in removed}
    groups["mesh_removed"] = {"hosts": gone} if gone else {}
    inventory = {"all": {
        "children": groups,
        "vars": {
            "ansible_user": "root",
            "ansible_private_key_file": str(key_path(lab)),
            "ansible_ssh_common_args": " ".join(
                f"-o {o}" for o in ("IdentitiesOnly=yes",
                                    f"UserKnownHostsFile={known_hosts_path(lab)}",
                                    "StrictHostKeyChecking=yes", *KEEPALIVE)),
        },
    }}
    header = (f"# Written by `fab lab.up` for lab {lab.name!r}; `fab lab.down` removes it.\n"
              "# Host keys are pinned in .ssh/known_hosts (read from each node via docker).\n")
    return header + yaml.safe_dump(inventory, sort_keys=False)


def render_lab_json(lab: Lab, subnet, nodes: list[Node]) -> str:
    return json.dumps({
        "lab": lab.name, "network": lab.network, "subnet": str(subnet),
        "nodes": [{"name": n.name, "container": n.container, "address": n.address}
                  for n in nodes],
    }, indent=2) + "\n"


def write_files(lab: Lab, subnet, pinned: dict[Node, list[str]]) -> None:
    nodes = list(pinned)
    lab.inventory_dir.mkdir(parents=True, exist_ok=True)
    _write(known_hosts_path(lab), render_known_hosts(pinned))
    write_inventory(lab, nodes, removed_in(lab.inventory_dir / "hosts.yml"))
    _write(lab.inventory_dir / "lab.json", render_lab_json(lab, subnet, nodes))


def write_inventory(lab: Lab, nodes: list[Node], removed: frozenset[str]) -> None:
    _write(lab.inventory_dir / "hosts.yml", render_inventory(lab, nodes, removed))


def removed_in(hosts: Path) -> frozenset[str]:
    """The nodes an operator moved to group mesh_removed in the lab's inventory: a
    rewrite of the inventory (a node added or restarted) keeps them there."""
    try:
        data = yaml.safe_load(hosts.read_text()) or {}
        return frozenset(data["all"]["children"]["mesh_removed"]["hosts"] or ())
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return frozenset()


def wait_for_ssh(lab: Lab, nodes: list[Node]) -> None:
    """Wait until every node runs a command over SSH, with pinned host keys."""
    deadline = time.monotonic() + SSH_DEADLINE_S
    waiting = list(nodes)
    while waiting:
        waiting = [n for n in waiting if ssh(lab, n, "true", timeout=15).returncode != 0]
        if waiting and time.monotonic() > deadline:
            names = ", ".join(n.name for n in waiting)
            raise LabError(f"SSH did not answer on {names} within {SSH_DEADLINE_S} s: "
                           "see `fab lab.status` and docker logs")
        if waiting:
            time.sleep(0.5)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
