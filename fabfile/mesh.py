"""`fab mesh.*`: the mesh from the operator's seat: a round everywhere now, its status,
each node's copy of the signed peer list, and the controller's copy pushed to every node."""

from __future__ import annotations

import io
import json
import shlex
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from invoke import Exit, task

from . import peers_view
from .inventory import (
    Host,
    InventoryError,
    connect,
    inventory_dir,
    inventory_path,
    mesh_hosts,
)
from .peers_view import ConfigError

INVENTORY_HELP = "Ansible inventory (default: $REPLIMESH_INVENTORY or inventory/lab)"
SYNC_USER_HELP = "the sync user on the nodes (default replimesh)"
PEERS_FILE_HELP = "the signed list to push (default <inventory dir>/.replimesh/peers.json)"
REMOVED_GROUP = "mesh_removed"


def as_sync_user(host: Host, user: str, command: str) -> str:
    """The command run as the sync user, from root (runuser) or a sudoer (sudo -n)."""
    switch = "runuser -u" if host.user == "root" else "sudo -n -u"
    return f"{switch} {shlex.quote(user)} -- {command}"


class WholeText(io.StringIO):
    """Standard input for Connection.run: invoke reads a stream that is not a terminal one
    character per 10 ms (bytes_to_read() is 1 without a fileno), so 3 kB would take 30 s;
    this hands over the whole rest at once, then "" (end of file: the remote stdin is
    closed)."""

    def read(self, size: int | None = -1) -> str:
        return super().read()


def on_every_host(hosts: list[Host], command,
                  stdin: str | None = None) -> dict[str, tuple[int | None, str]]:
    """Run command(host) on every host at once, with stdin as its standard input if given:
    {name: (exit code, output or why)}; the code is None when the host could not be
    reached, -1 when the session broke off after connecting."""
    def one(host: Host):
        try:
            connection = connect(host)
        except Exception as error:  # e.g. no known_hosts file: still an outcome
            return host.name, (None, _why(error))
        with connection:
            try:
                connection.open()
            except Exception as error:  # an unreachable host is an outcome, not a crash
                return host.name, (None, _why(error))
            try:
                result = connection.run(command(host), hide=True, warn=True, timeout=3600,
                                        in_stream=None if stdin is None else WholeText(stdin))
            except Exception as error:
                return host.name, (-1, _why(error))
        return host.name, (result.exited, result.stdout if result.ok or result.stdout
                           else result.stderr.strip())
    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        return dict(pool.map(one, hosts))


def _why(error: Exception) -> str:
    return (f"{type(error).__name__}: {error}".splitlines() or [""])[0]


def _hosts(inventory: str, optional: tuple[str, ...] = ()) -> list[Host]:
    try:
        return mesh_hosts(inventory_path(inventory), optional=optional)
    except InventoryError as error:
        raise Exit(f"mesh: {error}", code=2) from None


def controller_list_path(inventory: str) -> Path:
    """Where site.yml keeps the controller's signed list: <inventory dir>/.replimesh."""
    return inventory_dir(inventory_path(inventory)) / ".replimesh" / "peers.json"


@task(help={"inventory": INVENTORY_HELP, "user": SYNC_USER_HELP})
def sync(c, inventory="", user="replimesh"):
    """Run a sync round on every node at once; report each node's outcome."""
    hosts = _hosts(inventory)
    outcomes = on_every_host(hosts, lambda h: as_sync_user(h, user, "replimesh sync --json"))
    failed = 0
    for name in sorted(outcomes):
        code, output = outcomes[name]
        if code is None:
            failed += 1
            print(f"{name:<12} UNREACHABLE  {output}")
            continue
        try:
            peers = json.loads(output)["peers"]
        except (ValueError, KeyError):
            failed += 1
            print(f"{name:<12} FAILED       {output.strip()[:200]}")
            continue
        failed += code != 0
        summary = ", ".join(f"{p['peer']} {p['result']}"
                            + (f" ({p['files']} files)" if p["result"] == "ok" else "")
                            for p in peers)
        print(f"{name:<12} {'ok' if code == 0 else 'FAILED':<12} {summary}")
    if failed:
        raise Exit(f"mesh: {failed} of {len(hosts)} nodes did not complete their round", code=1)


@task(help={"inventory": INVENTORY_HELP, "user": SYNC_USER_HELP})
def status(c, inventory="", user="replimesh"):
    """Show each node's view of its peers: last result and how long ago (node x peer)."""
    hosts = _hosts(inventory)
    outcomes = on_every_host(hosts, lambda h: as_sync_user(h, user, "replimesh status --json"))
    print(render_status([h.name for h in hosts], outcomes, datetime.now(timezone.utc)))


@task(help={"inventory": INVENTORY_HELP, "user": SYNC_USER_HELP})
def peers(c, inventory="", user="replimesh"):
    """Show each node's copy of the signed peer list side by side, and the controller's."""
    hosts = _hosts(inventory, optional=(REMOVED_GROUP,))
    outcomes = on_every_host(hosts, lambda h: as_sync_user(h, user, "replimesh peers list --json"))
    nodes = {h.name: peers_view.node_list(*outcomes[h.name], f"{h.name}'s list") for h in hosts}
    path, controller = controller_list_path(inventory), None
    if path.exists():
        try:
            controller = peers_view.read_list(path)[1]
        except ConfigError as error:
            controller = str(error)
    print(peers_view.render_peers(nodes, controller))


@task(help={"inventory": INVENTORY_HELP, "user": SYNC_USER_HELP, "peers_file": PEERS_FILE_HELP})
def propagate(c, inventory="", user="replimesh", peers_file=""):
    """Push the controller's signed peer list to every node (mesh and mesh_removed) now."""
    path = Path(peers_file) if peers_file else controller_list_path(inventory)
    if not path.exists():
        raise Exit(f"mesh: no signed list at {path}: run playbooks/site.yml first", code=2)
    try:
        text = peers_view.read_list(path)[0]
    except ConfigError as error:
        raise Exit(f"mesh: {error}", code=2) from None
    hosts = _hosts(inventory, optional=(REMOVED_GROUP,))
    outcomes = on_every_host(hosts, lambda h: as_sync_user(h, user, "replimesh peers accept -"),
                             stdin=text)
    failed = unreachable = 0
    for host in hosts:
        verdict, detail, bad = peers_view.accept_outcome(*outcomes[host.name])
        failed += bad
        unreachable += verdict == "UNREACHABLE"
        print(f"{host.name:<12} {verdict:<12} {detail}".rstrip())
    if unreachable:
        print(f"{unreachable} unreachable: they learn the list from a peer at their next round")
    if failed:
        raise Exit(f"mesh: {failed} of {len(hosts)} nodes did not take the whole list", code=1)


def render_status(names: list[str], outcomes: dict, now: datetime) -> str:
    """The node x peer table: each cell is the last result of the row node's round with
    the column peer, and its age; below it, rows that could not be read, the reasons of
    failed sessions, and the conflicts settled (both versions kept)."""
    rows, notes = [["NODE \\ PEER", *names]], []
    for name in names:
        code, output = outcomes[name]
        try:
            peers = json.loads(output).get("peers", {}) if code == 0 else None
        except ValueError:
            peers = None
        if peers is None:
            notes.append(f"{name}: status not read ({output.strip()[:120]})")
            rows.append([name] + ["-" if peer == name else "?" for peer in names])
            continue
        rows.append([name] + ["-" if peer == name else cell(peers.get(peer), now)
                              for peer in names])
        for peer in sorted(peers):
            entry = peers[peer] if isinstance(peers[peer], dict) else {}
            if entry.get("result") == "failed":
                notes.append(f"{name} with {peer}: failed: {entry.get('message', '')}")
            notes += [f"{name} with {peer}: conflict {s}" for s in entry.get("settled") or []]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + notes)


def cell(entry: dict | None, now: datetime) -> str:
    if not entry:
        return "never"
    text = entry["result"]
    if entry.get("conflicts"):
        text += f"!{entry['conflicts']}c"
    return f"{text} {age(entry.get('at'), now)}"


def age(stamp: str | None, now: datetime) -> str:
    if not stamp:
        return "?"
    seconds = int((now - datetime.fromisoformat(stamp)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"
