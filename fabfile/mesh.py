"""`fab mesh.*`: the mesh from the operator's seat: a round everywhere now, and its status."""

from __future__ import annotations

import json
import shlex
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from invoke import Exit, task

from .inventory import Host, InventoryError, connect, inventory_path, mesh_hosts

INVENTORY_HELP = "Ansible inventory (default: $REPLIMESH_INVENTORY or inventory/lab)"
SYNC_USER_HELP = "the sync user on the nodes (default replimesh)"


def as_sync_user(host: Host, user: str, command: str) -> str:
    """The command run as the sync user, from root (runuser) or a sudoer (sudo -n)."""
    switch = "runuser -u" if host.user == "root" else "sudo -n -u"
    return f"{switch} {shlex.quote(user)} -- {command}"


def on_every_host(hosts: list[Host], command) -> dict[str, tuple[int | None, str]]:
    """Run command(host) on every host at once: {name: (exit code or None, output/why)}."""
    def one(host: Host):
        try:
            with connect(host) as connection:
                result = connection.run(command(host), hide=True, warn=True, timeout=3600)
            return host.name, (result.exited, result.stdout if result.ok or result.stdout
                               else result.stderr.strip())
        except Exception as error:  # an unreachable host is an outcome, not a crash
            return host.name, (None, f"{type(error).__name__}: {error}".splitlines()[0])
    with ThreadPoolExecutor(max_workers=min(16, len(hosts))) as pool:
        return dict(pool.map(one, hosts))


def _hosts(inventory: str) -> list[Host]:
    try:
        return mesh_hosts(inventory_path(inventory))
    except InventoryError as error:
        raise Exit(f"mesh: {error}", code=2) from None


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


def render_status(names: list[str], outcomes: dict, now: datetime) -> str:
    """The node x peer table: each cell is the last result of the row node's round with
    the column peer, and its age; rows that could not be read are explained below it."""
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
