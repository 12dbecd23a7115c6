"""What the lab tasks do, as plain functions that tests, Molecule and benchmarks call too."""

from __future__ import annotations

import shutil

from . import access, nodes
from .engine import ensure_engine
from .errors import LabError
from .image import ensure_image
from .nodes import Lab, Node


def up(lab: Lab, count: int, log=print) -> list[Node]:
    """Make nodes 1..count exist and answer SSH; keep any others; write the inventory."""
    if count < 1:
        raise LabError(f"--nodes must be at least 1, not {count}")
    ensure_engine()
    ensure_image(log)
    subnet = nodes.ensure_network(lab)
    for index in range(1, count + 1):
        nodes.create_node(lab, index, subnet)
    for node in nodes.list_nodes(lab):
        if node.state != "running":
            nodes.start(lab, node.name)
    return _connect(lab, subnet, log)


def start(lab: Lab, node: str, log=print) -> list[Node]:
    ensure_engine()
    nodes.start(lab, node)
    return _connect(lab, nodes.lab_subnet(lab), log)


def stop(lab: Lab, node: str) -> None:
    ensure_engine()
    nodes.stop(lab, node)


def remove(lab: Lab, node: str) -> None:
    """Move a node to group mesh_removed of the lab's inventory; later rewrites keep it
    there."""
    known = nodes.list_nodes(lab)
    if node not in {n.name for n in known}:
        raise LabError(f"lab {lab.name} has no node {node}: see `fab lab.status`")
    hosts = lab.inventory_dir / "hosts.yml"
    access.write_inventory(lab, known, access.removed_in(hosts) | {node})


def down(lab: Lab) -> list[str]:
    ensure_engine()
    gone = nodes.remove_all(lab)
    for generated in ("hosts.yml", "lab.json", ".ssh/known_hosts",
                      ".ssh/id_ed25519", ".ssh/id_ed25519.pub"):
        (lab.inventory_dir / generated).unlink(missing_ok=True)
    # The lab's operator key and signed peer list go with the lab (a real mesh's never
    # would: see README, "The operator key").
    shutil.rmtree(lab.inventory_dir / ".replimesh", ignore_errors=True)
    for folder in (lab.inventory_dir / ".ssh", lab.inventory_dir):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return gone


def status(lab: Lab) -> list[tuple[Node, str]]:
    """Each node with whether SSH answers on it now."""
    ensure_engine()
    rows = []
    for node in nodes.list_nodes(lab):
        reachable = node.state == "running" and access.ssh(lab, node, "true", 15).returncode == 0
        rows.append((node, "ok" if reachable else "down"))
    return rows


def _connect(lab: Lab, subnet, log) -> list[Node]:
    """Authorise the controller key and pin host keys on every running node, then wait
    for SSH; the inventory lists every node, stopped ones too (they are still members)."""
    public_key = access.ensure_controller_key(lab)
    every = nodes.list_nodes(lab)
    running = [n for n in every if n.state == "running"]
    for node in running:
        access.authorize(lab, node, public_key)
    previous = _pinned_from_file(lab)
    pinned = {n: (access.host_keys(lab, n) if n.state == "running" else previous.get(n.name, []))
              for n in every}
    access.write_files(lab, subnet, pinned)
    access.wait_for_ssh(lab, running)
    log(f"lab {lab.name!r}: {len(running)} of {len(every)} nodes answer SSH; "
        f"inventory {lab.inventory_dir / 'hosts.yml'}")
    return every


def _pinned_from_file(lab: Lab) -> dict[str, list[str]]:
    """Host keys already pinned, so a stopped node keeps its entry in known_hosts."""
    pinned: dict[str, list[str]] = {}
    path = access.known_hosts_path(lab)
    if path.exists():
        for line in path.read_text().splitlines():
            hosts, _, key = line.partition(" ")
            pinned.setdefault(hosts.split(",")[0], []).append(key)
    return pinned
