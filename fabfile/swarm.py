"""`fab swarm.*`: swarm mode from the operator's seat: publish a large file from one node
and watch every node fetch it, live; and every node's swarm files in one table.

The nodes do the work (`replimesh swarm ...`, run as the sync user over SSH); these tasks
only start it and read each node's `replimesh swarm status --json`.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import threading
import time

from invoke import Exit, task

from .inventory import Host, InventoryError, connect, inventory_path, mesh_hosts
from .mesh import INVENTORY_HELP, SYNC_USER_HELP, as_sync_user, on_every_host

STATUS = "replimesh swarm status --json"
REFRESH_S = 1.0      # the live view, and how often each node is asked
PLAIN_EVERY_S = 5.0  # not a terminal (a log, CI): a block of plain lines this often
STALE_S = 10.0       # a node whose last answer is older than this is shown as not answering
BAR_WIDTH = 16
ASKING = "asking..."
DONE = ("complete", "kept")
PATH_HELP = "the file on that node, absolute or relative to the swarm root"
HOST_HELP = "the node that holds the file and publishes it (an inventory name)"
TIMEOUT_HELP = "seconds to wait until every node holds the file (default 3600)"


@task(help={"path": PATH_HELP, "host": HOST_HELP, "timeout": TIMEOUT_HELP,
            "inventory": INVENTORY_HELP, "user": SYNC_USER_HELP})
def publish(c, path, host, timeout=3600, inventory="", user="replimesh"):
    """Publish a file from a node and watch every node fetch it."""
    hosts = _hosts(inventory)
    source = next((h for h in hosts if h.name == host), None)
    if source is None:
        raise Exit(f"swarm: {host} is not a node of the mesh in the inventory "
                   f"({', '.join(h.name for h in hosts)})", code=2)
    print(f"{host}: hashing {path} (every piece's SHA-256: long for a large file)", flush=True)
    published = _publish_on(source, user, path)
    for line in publish_lines(published):
        print(line, flush=True)
    started = time.monotonic()
    names = [h.name for h in hosts]
    readings = watch(hosts, user, published["infohash"], published["path"], int(timeout),
                     sys.stdout)
    waiting = pending(readings, published["infohash"])
    if waiting:
        raise Exit(f"swarm: {published['path']} not complete after {timeout} s on "
                   f"{len(waiting)} of {len(names)} nodes: "
                   + "; ".join(f"{n} ({why})" for n, why in waiting.items()), code=1)
    print(f"{published['path']} complete on all {len(names)} nodes, every piece verified, "
          f"in {time.monotonic() - started:.0f} s")


@task(help={"inventory": INVENTORY_HELP, "user": SYNC_USER_HELP})
def status(c, inventory="", user="replimesh"):
    """Show every node's swarm files, state and percent."""
    hosts = _hosts(inventory)
    outcomes = on_every_host(hosts, lambda h: as_sync_user(h, user, STATUS))
    print(render_status([h.name for h in hosts],
                        {name: read_status(*outcome) for name, outcome in outcomes.items()}))


def _publish_on(host: Host, user: str, path: str) -> dict:
    """`replimesh swarm publish --json` on host: what it printed. No command timeout (as
    mesh's on_every_host has): hashing a file of hundreds of GB takes long."""
    command = as_sync_user(host, user, f"replimesh swarm publish {shlex.quote(path)} --json")
    try:
        with connect(host) as connection:
            done = connection.run(command, hide=True, warn=True, in_stream=False)
    except Exception as error:  # unreachable, or the session broke off
        raise Exit(f"swarm: publish on {host.name} failed: {_why(error)}", code=1) from None
    try:
        return json.loads(done.stdout)
    except ValueError:
        why = _short(done.stderr) or _short(done.stdout) or f"exit {done.exited}"
        raise Exit(f"swarm: publish on {host.name} failed: {why}", code=1) from None


def _hosts(inventory: str) -> list[Host]:
    try:
        return mesh_hosts(inventory_path(inventory))
    except InventoryError as error:
        raise Exit(f"swarm: {error}", code=2) from None


# --- asking the nodes, each in its own thread ---

class Poller:
    """One thread per node asks it for its swarm status every REFRESH_S over one SSH
    connection kept open, so a slow or dead node holds up only its own line."""

    def __init__(self, hosts: list[Host], user: str):
        self.hosts, self.user = hosts, user
        self.latest: dict[str, tuple[float, dict | str]] = {
            h.name: (time.monotonic(), ASKING) for h in hosts}
        self.stopping = threading.Event()

    def start(self) -> Poller:
        for host in self.hosts:
            threading.Thread(target=self._ask, args=(host,), daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()

    def readings(self) -> dict[str, dict | str]:
        """Each node's last answer; one too old says since when the node is silent."""
        now, result = time.monotonic(), {}
        for name, (at, reading) in self.latest.items():
            silent = now - at
            result[name] = (reading if silent < STALE_S else
                            f"no answer for {silent:.0f} s (last: {_short(reading)})")
        return result

    def _ask(self, host: Host) -> None:
        connection = None
        while not self.stopping.is_set():
            began = time.monotonic()
            try:
                if connection is None:
                    connection = connect(host)
                    connection.open()
                done = connection.run(as_sync_user(host, self.user, STATUS), hide=True,
                                      warn=True, timeout=30, in_stream=False)
                reading = read_status(done.exited, done.stdout if done.ok else done.stderr)
            except Exception as error:  # unreachable, or the session broke: try again
                reading = f"unreachable: {_why(error)}"
                if connection is not None:
                    connection.close()
                connection = None
            self.latest[host.name] = (time.monotonic(), reading)
            self.stopping.wait(max(0.0, REFRESH_S - (time.monotonic() - began)))
        if connection is not None:
            connection.close()


def watch(hosts: list[Host], user: str, infohash: str, path: str, timeout: int,
          out) -> dict[str, dict | str]:
    """Show every node's progress on the file until all hold it (each node's status names
    the exact version: "kept" is the published one, unchanged) or the timeout passes; the
    last readings. A terminal gets one view redrawn in place, anything else a block of
    plain lines every PLAIN_EVERY_S, and the final one."""
    names = [h.name for h in hosts]
    poller = Poller(hosts, user).start()
    terminal = out.isatty()
    began = time.monotonic()
    shown, printed_at = 0, None
    try:
        while True:
            now = time.monotonic()
            readings = poller.readings()
            finished = not pending(readings, infohash) or now - began >= timeout
            lines = progress_lines(names, readings, infohash, path, now - began)
            if terminal:  # redrawn in place: lines cut to the width, so none wraps
                width = shutil.get_terminal_size().columns - 1
                out.write((f"\x1b[{shown}F" if shown else "")
                          + "".join(f"\x1b[2K{line[:width]}\n" for line in lines))
                shown = len(lines)
            elif finished or printed_at is None or now - printed_at >= PLAIN_EVERY_S:
                out.write("\n".join(lines) + "\n")
                printed_at = now
            out.flush()
            if finished:
                return readings
            time.sleep(REFRESH_S)
    finally:
        poller.stop()


# --- pure parts: what the nodes said, as lines ---

def read_status(code: int | None, output: str) -> dict | str:
    """A node's `replimesh swarm status --json` outcome: the status, or why there is none."""
    if code is None:
        return f"unreachable: {_short(output)}"
    if code != 0:
        return f"status failed: {_short(output) or f'exit {code}'}"
    try:
        status = json.loads(output)
    except ValueError:
        return f"status not JSON: {_short(output)}"
    if not isinstance(status, dict) or not isinstance(status.get("files"), list):
        return "status without a list of files"
    return status


def entry_of(status: dict, infohash: str) -> dict | None:
    return next((f for f in status["files"] if f.get("infohash") == infohash), None)


def is_done(reading: dict | str, infohash: str) -> bool:
    """The node holds that version of the file, complete and verified."""
    if isinstance(reading, str):
        return False
    entry = entry_of(reading, infohash)
    return entry is not None and entry["state"] in DONE


def pending(readings: dict[str, dict | str], infohash: str) -> dict[str, str]:
    """The nodes that do not hold the file yet, each with a short why; empty: all do."""
    return {name: _state_text(reading, infohash) for name, reading in readings.items()
            if not is_done(reading, infohash)}


def bar(progress: float, width: int = BAR_WIDTH) -> str:
    filled = round(min(max(progress, 0.0), 1.0) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def rate(bytes_per_s: float | None) -> str:
    return "-" if bytes_per_s is None else f"{bytes_per_s / 1e6:.1f} MB/s"


def eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def node_line(name: str, reading: dict | str, infohash: str, path: str,
              width: int = 12) -> str:
    """One node's line of the live view: state, bar, percent, rate (what it sends once it
    holds the file), peers, ETA."""
    name = name.ljust(width)
    if isinstance(reading, str):
        if reading == ASKING:
            return f"{name} {reading}"
        if reading.startswith(("unreachable", "no answer")):
            return f"{name} {'UNREACHABLE':<11} {reading.removeprefix('unreachable: ')}"
        return f"{name} {'UNKNOWN':<11} {reading}"
    entry = entry_of(reading, infohash)
    note = "" if reading.get("running") else "  swarm daemon NOT running"
    if entry is None:
        other = next((f for f in reading["files"] if f.get("path") == path), None)
        why = (f"holds another version ({other.get('infohash', '?')[:12]})" if other
               else "the offer is not here yet")
        return f"{name} {'no offer':<11} {bar(0)}   0.0%  {why}{note}"
    progress, done = entry.get("progress", 0.0), entry["state"] in DONE
    sending = entry.get("upload_rate")
    speed = (rate(entry.get("download_rate")) if not done
             else "-" if sending is None else f"up {rate(sending)}")
    line = (f"{name} {entry['state']:<11} {bar(progress)} {progress * 100:5.1f}%"
            f" {speed:>12} {entry.get('peers', '-'):>2} peers"
            f"  ETA {'-' if done else eta(entry.get('eta_s'))}")
    if entry.get("error"):
        line += f"  {entry['error']}"
    return line + note


def progress_lines(names: list[str], readings: dict[str, dict | str], infohash: str,
                   path: str, elapsed: float) -> list[str]:
    """The live view: a line per node, then how many hold the file."""
    done = sum(is_done(readings[n], infohash) for n in names)
    width = max(len(n) for n in names)
    return ([node_line(n, readings[n], infohash, path, width) for n in names]
            + [f"{path}: {done} of {len(names)} nodes complete, {elapsed:.0f} s"])


def publish_lines(published: dict) -> list[str]:
    """What `replimesh swarm publish --json` did: the offer, and each peer's answer."""
    lines = [f"{published['node']}: published {published['path']} "
             f"({published['size'] / 1e6:.1f} MB) as {published['infohash'][:16]}"]
    for sent in published.get("peers", []):
        lines.append(f"  offered to {sent['peer']:<12} {sent['result']:<12} "
                     f"{sent.get('message', '')}".rstrip())
    if not published.get("peers"):
        lines.append("  no active peer to offer it to")
    refused = [s["peer"] for s in published.get("peers", []) if s["result"] == "failed"]
    if refused:
        lines.append(f"  {', '.join(refused)} refused the offer: they will not fetch the file "
                     "(see why above); watching them anyway until the timeout")
    return lines


def render_status(names: list[str], readings: dict[str, dict | str]) -> str:
    """The file x node table: each cell is the node's state of the file and its percent,
    "-" when the node holds no offer of it, "?" when the node could not be asked; below
    it, why nodes were not read, daemons not running, errors and differing versions."""
    files: dict[str, dict[str, dict]] = {}
    notes = []
    for name in names:
        reading = readings[name]
        if isinstance(reading, str):
            notes.append(f"{name}: not read ({reading})")
            continue
        if not reading.get("running"):
            notes.append(f"{name}: swarm daemon NOT running")
        for entry in reading["files"]:
            files.setdefault(entry["path"], {})[name] = entry
            if entry.get("error"):
                notes.append(f"{name} {entry['path']}: {entry['error']}")
    rows = [["FILE \\ NODE", *names]]
    for path in sorted(files):
        held = files[path]
        rows.append([path] + [_cell(held.get(n), isinstance(readings[n], str)) for n in names])
        versions = {e.get("infohash") for e in held.values()}
        if len(versions) > 1:
            notes.append(f"{path}: versions differ: " + ", ".join(
                f"{n} {held[n].get('infohash', '?')[:12]}" for n in names if n in held))
    if not files:
        notes.insert(0, "no swarm files on any node read")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + notes)


def _cell(entry: dict | None, unread: bool) -> str:
    if unread:
        return "?"
    if entry is None:
        return "-"
    return f"{entry['state']} {entry.get('progress', 0.0) * 100:.0f}%"


def _state_text(reading: dict | str, infohash: str) -> str:
    if isinstance(reading, str):
        return reading
    entry = entry_of(reading, infohash)
    text = ("no offer yet" if entry is None
            else f"{entry['state']} {entry.get('progress', 0.0) * 100:.1f}%")
    return text + ("" if reading.get("running") else ", swarm daemon NOT running")


def _short(text: str) -> str:
    return (text.strip().splitlines() or [""])[-1][:200]


def _why(error: Exception) -> str:
    return (f"{type(error).__name__}: {error}".splitlines() or [""])[0]
