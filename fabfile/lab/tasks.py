"""`fab lab.*`: the local lab of Debian containers that stands in for real hosts."""

from __future__ import annotations

import functools

from invoke import Exit, task

from . import control, faults
from .errors import LabError
from .nodes import Lab, default_lab

LAB_HELP = "lab name (default: $REPLIMESH_LAB or 'lab'); tests use their own"


def _one_line_errors(func):
    """Turn a LabError into fab's clean exit: one line saying what to fix, status 1."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except LabError as error:
            raise Exit(f"lab: {error}", code=1) from None
    return wrapper


def _lab(name: str | None) -> Lab:
    return Lab(name) if name else default_lab()


@task(help={"nodes": "how many nodes (default 3); a larger number adds nodes", "lab": LAB_HELP})
@_one_line_errors
def up(c, nodes: int = 3, lab: str = ""):
    """Start the lab: Docker engine, node image, N nodes answering SSH, an inventory."""
    the_lab = _lab(lab)
    control.up(the_lab, int(nodes))
    print(f"try: ansible -i inventory/{the_lab.name} mesh -m ansible.builtin.ping")


@task(help={"lab": LAB_HELP})
@_one_line_errors
def down(c, lab: str = ""):
    """Remove every container and the network of the lab, and its generated inventory."""
    gone = control.down(_lab(lab))
    print("removed: " + (", ".join(gone) if gone else "nothing (no lab was up)"))


@task(help={"node": "node name, e.g. node2", "lab": LAB_HELP})
@_one_line_errors
def stop(c, node, lab: str = ""):
    """Stop one node (its container); it keeps its disk, address and host key."""
    control.stop(_lab(lab), node)
    print(f"{node} stopped")


@task(help={"node": "node name, e.g. node2", "lab": LAB_HELP})
@_one_line_errors
def remove(c, node, lab: str = ""):
    """Move one node from group mesh to mesh_removed in the lab's inventory (the edit that
    removes a node); run site.yml next. The container and its data stay."""
    control.remove(_lab(lab), node)
    print(f"{node} moved to group mesh_removed in {_lab(lab).inventory_dir / 'hosts.yml'}; "
          "now run playbooks/site.yml")


@task(help={"node": "node name, e.g. node2", "lab": LAB_HELP})
@_one_line_errors
def start(c, node, lab: str = ""):
    """Start a stopped node again and wait until it answers SSH."""
    control.start(_lab(lab), node)


@task(help={"lab": LAB_HELP})
@_one_line_errors
def status(c, lab: str = ""):
    """List the lab's nodes: container, address, state, whether SSH answers."""
    the_lab = _lab(lab)
    rows = control.status(the_lab)
    if not rows:
        print(f"lab {the_lab.name!r} is down (`fab lab.up` starts it)")
        return
    table = [("NODE", "CONTAINER", "ADDRESS", "STATE", "SSH")] + [
        (n.name, n.container, n.address, n.state, ssh) for n, ssh in rows]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@task(help={"groups": "nodes in groups: node1,node2/node3,node4", "lab": LAB_HELP})
@_one_line_errors
def partition(c, groups, lab: str = ""):
    """Cut every link between nodes of different groups (the controller keeps its access)."""
    faults.partition(_lab(lab), faults.parse_groups(groups))
    print(f"partitioned: {groups.replace('/', ' | ')}; undo with fab lab.heal")


@task(help={"lab": LAB_HELP})
@_one_line_errors
def heal(c, lab: str = ""):
    """Restore every link that fab lab.partition cut."""
    faults.heal(_lab(lab))
    print("every link restored")


@task(help={"node": "node name, e.g. node2", "rate": "e.g. 100mbit; empty removes the limit",
            "lab": LAB_HELP})
@_one_line_errors
def shape(c, node, rate="", lab: str = ""):
    """Limit what one node sends (egress, tc tbf on its eth0), or lift the limit."""
    faults.shape(_lab(lab), node, rate)
    print(f"{node}: sends at most {rate}" if rate else f"{node}: no limit")
