"""The operator's side of membership: the signed peer list, built from the inventory.

Runs on the controller (module replimesh_sign_peers). The inventory says who is in the
mesh (group `mesh`) and who was revoked (group `mesh_removed`); the nodes reached in
this run give their keys; the lists already on the nodes and the controller's own copy
give the entries of nodes not reached and the versions to go above. An entry is signed
again, with a higher version, only when what it says changes, so a second deploy of an
unchanged inventory changes nothing. Entries are only ever copied from lists whose
signature checks out: a node cannot get the operator to sign something it made up.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field, replace

from . import peers as peer_list
from . import signature
from .errors import ConfigError, ReplimeshError
from .peers import ACTIVE, REMOVED, Entry, Peers


@dataclass
class Member:
    """A mesh node reached in this run, as it describes itself."""
    name: str
    addresses: tuple[str, ...]
    ssh_key: str
    host_keys: tuple[str, ...]


@dataclass
class Built:
    peers: Peers
    signed: list[str] = field(default_factory=list)     # entries (re)signed in this run
    warnings: list[str] = field(default_factory=list)


def check_inventory(mesh: list[str], removed: list[str], members: list[Member]) -> None:
    """One-line errors for an inventory that cannot describe a mesh."""
    both = sorted(set(mesh) & set(removed))
    if both:
        raise ConfigError(f"{', '.join(both)} in both groups mesh and mesh_removed: keep each "
                          "node in one of them")
    owners: dict[str, str] = {}
    for member in sorted(members, key=lambda m: m.name):
        if not member.addresses:
            raise ConfigError(f"{member.name} has no address: set replimesh_address")
        for address in member.addresses:
            if address in owners:
                raise ConfigError(f"{owners[address]} and {member.name} have the same address "
                                  f"{address}: give each node its own replimesh_address")
            owners[address] = member.name


def build(mesh: list[str], removed: list[str], members: list[Member], known: list[Peers],
          private_key: str, signers_file: str, now: int | None = None) -> Built:
    """The signed list for this inventory. known: every list read (may hold anything)."""
    check_inventory(mesh, removed, members)
    now = int(time.time()) if now is None else now
    verified, highest, warnings = _trusted(known, signers_file)
    built = Built(peers={}, warnings=warnings)

    def sign(body: Entry) -> None:
        entry = replace(body, version=max(highest.get(body.name, 0) + 1, now))
        built.peers[body.name] = replace(
            entry, signature=signature.sign(private_key, peer_list.payload(entry)))
        built.signed.append(body.name)

    reached = {m.name: m for m in members}
    for name in sorted(mesh):
        current = verified.get(name)
        if name in reached:
            m = reached[name]
            wanted = Entry(name, m.addresses, m.ssh_key, m.host_keys, ACTIVE)
            if current and _same(current, wanted):
                built.peers[name] = current
            else:
                sign(wanted)
        elif current and current.active:
            built.peers[name] = current   # down now: its last signed entry stands
        elif current:
            built.peers[name] = current
            built.warnings.append(f"{name} is in mesh but was removed and is not reachable: "
                                  "it comes back when site.yml reaches it")
        elif name in highest:
            built.warnings.append(f"{name} is in mesh but was not reached and its entry is "
                                  "not signed by the current operator key (rotated?): nodes "
                                  "keep the entry they have; it is signed again when "
                                  "site.yml reaches it")
        else:
            built.warnings.append(f"{name} is in mesh but was not reached and no peer list "
                                  "knows it: it joins when site.yml reaches it")
    for name in sorted(removed):
        current = verified.get(name)
        if current and not current.active:
            built.peers[name] = current
        else:
            sign(Entry(name, (), "", (), REMOVED))
    for name in sorted(set(verified) - set(mesh) - set(removed)):
        built.peers[name] = verified[name]
        if verified[name].active:
            built.warnings.append(f"{name} is in the peer list but in neither mesh nor "
                                  "mesh_removed: left active; move it to mesh_removed to "
                                  "revoke it")
    peer_list.parse(peer_list.to_json(built.peers), "the inventory's peer list")  # one check
    return built


def _same(a: Entry, b: Entry) -> bool:
    return (a.addresses, a.ssh_key, a.host_keys, a.state) == \
           (b.addresses, b.ssh_key, b.host_keys, b.state)


def _trusted(known: list[Peers], signers_file: str) -> tuple[Peers, dict[str, int], list[str]]:
    """The merge of the entries signed by the operator's current key, the highest version
    seen per name in any entry (new versions go above it), and what was not trusted."""
    verified: Peers = {}
    highest: dict[str, int] = {}
    untrusted: set[str] = set()
    seen: set[tuple] = set()
    for peers in known:
        for name, entry in peers.items():
            highest[name] = max(highest.get(name, 0), entry.version)
            key = (name, peer_list.payload(entry), entry.signature)
            if key in seen:
                continue
            seen.add(key)
            if signature.verify(signers_file, peer_list.payload(entry), entry.signature):
                verified = peer_list.merge(verified, {name: entry})
            else:
                untrusted.add(name)
    warnings = [f"entries of {', '.join(sorted(untrusted))} not signed by the current "
                "operator key were not trusted (signed again if still in the inventory)"
                ] if untrusted else []
    return verified, highest, warnings


def ensure_operator_key(path: str, create: bool) -> str:
    """The operator's public key line; the key pair is made when missing and create is set,
    in a folder kept out of version control."""
    if not os.path.exists(path):
        if not create:
            raise ConfigError(f"operator key {path} does not exist: create it with "
                              f"ssh-keygen -t ed25519 -f {path}, or leave "
                              "replimesh_operator_key unset to have one made")
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, mode=0o700, exist_ok=True)
        ignore = os.path.join(folder, ".gitignore")
        if not os.path.exists(ignore):
            with open(ignore, "w", encoding="utf-8") as out:
                out.write("# The operator's private key and the signed peer list: never "
                          "commit them.\n*\n")
        done = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                               "replimesh operator", "-f", path],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ReplimeshError(f"cannot create operator key {path}: {done.stderr.strip()}")
    try:
        with open(path + ".pub", encoding="utf-8") as handle:
            return " ".join(handle.read().split()[:2])
    except OSError as error:
        raise ConfigError(f"operator key {path} has no readable {path}.pub: "
                          f"{error.strerror}") from None


def signers_file_for(public_key: str) -> str:
    """A temporary allowed_signers file for public_key; the caller removes it."""
    handle, path = tempfile.mkstemp(prefix="replimesh-signers-")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(signature.allowed_signers(public_key))
    return path
