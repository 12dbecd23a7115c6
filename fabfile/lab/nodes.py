"""The lab's containers and their network: names, fixed addresses, start and stop.

Each lab has a name (default "lab"; tests use their own) so that a test run never
touches the operator's lab: containers replimesh-NAME-nodeK on network replimesh-NAME.
Every node gets a fixed address (--ip), so a stopped node comes back where it was.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .engine import docker
from .errors import LabError
from .image import IMAGE

PROJECT_ROOT = Path(__file__).resolve().parents[2]
LAB_LABEL = "replimesh.lab"
NODE_LABEL = "replimesh.node"
# Lab subnets are taken from here, one /24 per lab, skipping any that is in use.
SUBNET_POOL = ipaddress.ip_network("172.29.0.0/16")
FIRST_HOST = 10  # node K gets host number FIRST_HOST + K: .11, .12, ...


@dataclass(frozen=True)
class Lab:
    name: str = "lab"

    @property
    def network(self) -> str:
        return f"replimesh-{self.name}"

    def container(self, node: str) -> str:
        return f"replimesh-{self.name}-{node}"

    @property
    def inventory_dir(self) -> Path:
        return PROJECT_ROOT / "inventory" / self.name


@dataclass(frozen=True)
class Node:
    name: str
    container: str
    address: str
    state: str  # docker's: running, exited, created...


def default_lab() -> Lab:
    return Lab(os.environ.get("REPLIMESH_LAB", "lab"))


def node_name(index: int) -> str:
    return f"node{index}"


def node_index(name: str) -> int:
    if not (name.startswith("node") and name[4:].isdigit() and int(name[4:]) > 0):
        raise LabError(f"{name!r} is not a lab node name: use node1, node2, ...")
    return int(name[4:])


def node_address(subnet: ipaddress.IPv4Network, index: int) -> str:
    if FIRST_HOST + index >= subnet.num_addresses - 1:
        raise LabError(f"subnet {subnet} has no room for node{index}")
    return str(subnet.network_address + FIRST_HOST + index)


def choose_subnet(taken: list[ipaddress.IPv4Network],
                  wanted: str | None = None) -> ipaddress.IPv4Network:
    """The lab's subnet: the one asked for if it is free, else the first free /24 of the pool."""
    if wanted:
        try:
            subnet = ipaddress.ip_network(wanted)
        except ValueError:
            raise LabError(f"REPLIMESH_LAB_SUBNET={wanted!r} is not a subnet: "
                           "give one like 172.29.5.0/24") from None
        clash = next((t for t in taken if t.overlaps(subnet)), None)
        if clash:
            raise LabError(f"subnet {subnet} overlaps {clash}, already in use on this host: "
                           "set REPLIMESH_LAB_SUBNET to a free /24")
        return subnet
    for subnet in SUBNET_POOL.subnets(new_prefix=24):
        if not any(t.overlaps(subnet) for t in taken):
            return subnet
    raise LabError(f"no free /24 left in {SUBNET_POOL}: set REPLIMESH_LAB_SUBNET to a free one")


def subnets_in_use() -> list[ipaddress.IPv4Network]:
    """Subnets of every Docker network and every route of this host."""
    taken = []
    ids = docker("network", "ls", "-q").split()
    if ids:
        for net in json.loads(docker("network", "inspect", *ids)):
            for cfg in (net.get("IPAM") or {}).get("Config") or []:
                if cfg.get("Subnet", "").count(".") == 3:
                    taken.append(ipaddress.ip_network(cfg["Subnet"], strict=False))
    routes = subprocess.run(["ip", "-4", "-j", "route", "show", "table", "all"],
                            capture_output=True, text=True, check=False)
    for route in json.loads(routes.stdout or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default" and route.get("type", "unicast") == "unicast":
            taken.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
    return taken


def ensure_network(lab: Lab) -> ipaddress.IPv4Network:
    found = _inspect("network", lab.network)
    if found is not None:
        if (found.get("Labels") or {}).get(LAB_LABEL) != lab.name:
            raise LabError(f"a Docker network named {lab.network} exists and is not lab "
                           f"{lab.name!r}: remove it (docker network rm {lab.network}) "
                           "or pick another lab name (REPLIMESH_LAB)")
        return ipaddress.ip_network(found["IPAM"]["Config"][0]["Subnet"])
    subnet = choose_subnet(subnets_in_use(), os.environ.get("REPLIMESH_LAB_SUBNET"))
    docker("network", "create", "--driver", "bridge", "--subnet", str(subnet),
           "--label", f"{LAB_LABEL}={lab.name}", lab.network)
    return subnet


def lab_subnet(lab: Lab) -> ipaddress.IPv4Network | None:
    found = _inspect("network", lab.network)
    return ipaddress.ip_network(found["IPAM"]["Config"][0]["Subnet"]) if found else None


def list_nodes(lab: Lab) -> list[Node]:
    """Every container of the lab, running or not, in node order."""
    ids = docker("ps", "-aq", "--filter", f"label={LAB_LABEL}={lab.name}").split()
    if not ids:
        return []
    nodes = []
    for info in json.loads(docker("inspect", *ids)):
        net = (info["NetworkSettings"]["Networks"] or {}).get(lab.network) or {}
        address = (net.get("IPAMConfig") or {}).get("IPv4Address") or net.get("IPAddress", "")
        nodes.append(Node(name=info["Config"]["Labels"][NODE_LABEL],
                          container=info["Name"].lstrip("/"), address=address,
                          state=info["State"]["Status"]))
    return sorted(nodes, key=lambda n: node_index(n.name))


def create_node(lab: Lab, index: int, subnet: ipaddress.IPv4Network) -> None:
    name = node_name(index)
    container = lab.container(name)
    found = _inspect("container", container)
    if found is not None:
        if (found["Config"].get("Labels") or {}).get(LAB_LABEL) != lab.name:
            raise LabError(f"a container named {container} exists and is not part of lab "
                           f"{lab.name!r}: remove it (docker rm -f {container})")
        return
    docker("run", "--detach", "--name", container, "--hostname", name,
           "--network", lab.network, "--ip", node_address(subnet, index),
           "--init", "--cap-add", "NET_ADMIN", "--restart", "no",
           "--label", f"{LAB_LABEL}={lab.name}", "--label", f"{NODE_LABEL}={name}",
           IMAGE, what=f"starting {container}")


def start(lab: Lab, node: str) -> None:
    docker("start", _existing(lab, node), what=f"starting {node}")


def stop(lab: Lab, node: str) -> None:
    docker("stop", "--time", "5", _existing(lab, node), what=f"stopping {node}")


def remove_all(lab: Lab) -> list[str]:
    """Remove the lab's containers and network; return what was removed."""
    gone = [n.container for n in list_nodes(lab)]
    if gone:
        docker("rm", "--force", "--volumes", *gone)
    if _inspect("network", lab.network) is not None:
        docker("network", "rm", lab.network)
        gone.append(lab.network)
    return gone


def exec_in(lab: Lab, node: str, *argv: str, input: str | None = None) -> str:
    """Run a command inside a node through Docker, for what must not go over SSH:
    fetching the host keys that SSH is then pinned to, authorising the controller key."""
    return docker("exec", "-i", lab.container(node), *argv, input=input,
                  what=f"{argv[0]} on {node}")


def _existing(lab: Lab, node: str) -> str:
    node_index(node)
    container = lab.container(node)
    if _inspect("container", container) is None:
        raise LabError(f"{node} is not in lab {lab.name!r}: `fab lab.status` lists its nodes")
    return container


def _inspect(kind: str, name: str) -> dict | None:
    probe = subprocess.run(["docker", kind, "inspect", name], capture_output=True, text=True,
                           check=False)
    return json.loads(probe.stdout)[0] if probe.returncode == 0 else None
