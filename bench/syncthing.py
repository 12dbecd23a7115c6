"""Syncthing on a lab's nodes, the scheme bench/latency.py compares watch mode with.

Debian's package is downloaded once on this host (`apt-get download`: the nodes reach
no registry) into bench/.cache/, copied to every node and installed there. Each node
runs one Syncthing as the sync user, with a home of its own, its GUI and REST API on
127.0.0.1 only, no discovery, relays, NAT, upgrades or usage and crash reports: every
node is a device of every other at its fixed lab address, and they share one folder,
the data root. Syncthing is set up with its own CLI (`syncthing cli config ...`, which
talks to the running instance), as an operator would; its REST API (key from
config.xml, read on the node) says when every node is idle and in sync.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from fabfile.lab import access

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
PACKAGE = "syncthing"
USER = "replimesh"
HOME = "/var/lib/replimesh-syncthing"
GUI = "127.0.0.1:8384"
PORT = 22000
FOLDER = "replimesh-data"
DEFAULT_DELAY_S = 10   # fsWatcherDelayS when not set
SYNC_WAIT_S = 1800     # a first scan hashes the whole root on every node at once
# What the lab's Syncthings do not do: look for each other or for anything outside.
OPTIONS = (("global-ann-enabled", "false"), ("local-ann-enabled", "false"),
           ("relays-enabled", "false"), ("natenabled", "false"), ("uraccepted", "-1"),
           ("crenabled", "false"), ("auto-upgrade-intervalh", "0"))
# Runs on a node: waits until Syncthing's API answers ("up"), or until the folder is
# idle, needs nothing, was scanned at or after SINCE (a restarted folder's first scan
# is done) and every other device is connected and complete ("synced"); prints "ok",
# or one line saying what is still not so at the deadline.
REST = """
import json, re, sys, time, urllib.request, xml.etree.ElementTree as ET
from datetime import datetime
home, folder, want = sys.argv[1:4]
since, wait = float(sys.argv[4]), float(sys.argv[5])
config = ET.parse(home + "/config.xml").getroot()
base, key = "http://" + config.findtext("gui/address"), config.findtext("gui/apikey")

def get(path):
    request = urllib.request.Request(base + path, headers={"X-API-Key": key})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)

def scanned():
    stamp = get("/rest/stats/folder")[folder]["lastScan"]
    return datetime.fromisoformat(re.sub(r"\\.\\d+", "", stamp).replace("Z", "+00:00")).timestamp()

def lag():
    get("/rest/system/ping")
    if want == "up":
        return ""
    status = get(f"/rest/db/status?folder={folder}")
    if status["state"] != "idle" or status["needTotalItems"] or status["pullErrors"]:
        return (f"folder {status['state']}, {status['needTotalItems']} items to pull, "
                f"{status['pullErrors']} pull errors")
    if scanned() < since:
        return "folder not scanned since its (re)start"
    me = get("/rest/system/status")["myID"]
    names = {d["deviceID"]: d["name"] for d in get("/rest/config/devices")}
    connected = get("/rest/system/connections")["connections"]
    for device in get(f"/rest/config/folders/{folder}")["devices"]:
        peer = device["deviceID"]
        if peer == me:
            continue
        if not connected.get(peer, {}).get("connected"):
            return f"not connected to {names.get(peer, peer)}"
        done = get(f"/rest/db/completion?folder={folder}&device={peer}")
        if done["completion"] < 100 or done["needItems"] or done["needDeletes"]:
            return f"{names.get(peer, peer)} {done['completion']:.1f}% complete"
    return ""

deadline = time.time() + wait
while True:
    try:
        problem = lag()
    except (OSError, ValueError, KeyError) as error:   # not up yet, or no such folder yet
        problem = f"API: {error}"
    if not problem:
        print("ok")
        break
    if time.time() > deadline:
        print(problem[:300])
        sys.exit(1)
    time.sleep(0.5)
"""


def on(lab, node, command, timeout=1800):
    """A command's output on a node; any failure ends the run with one line naming it."""
    try:
        done = access.ssh(lab, node, command, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"{node.name}: no answer within {timeout} s to: {command[:100]}") from None
    if done.returncode != 0:
        raise SystemExit(f"{node.name}: {command[:100]}: {gist(done.stderr or done.stdout)}")
    return done.stdout.strip()


def gist(text):
    """What a failed command said, on one line: its first line (a Go panic's reason, say)
    and its last (dpkg's or apt's)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()] or ["(nothing)"]
    said = lines[0] if len(lines) == 1 else f"{lines[0][:200]} ... {lines[-1]}"
    return said[:400]


def quote(text):
    return "'" + text.replace("'", "'\\''") + "'"


def cli(arguments):
    return f"runuser -u {USER} -- syncthing cli --home {HOME} {arguments}"


def package() -> tuple[Path, str]:
    """Debian's .deb of Syncthing and its version, downloaded once into bench/.cache/."""
    CACHE.mkdir(exist_ok=True)
    cached = sorted(CACHE.glob(f"{PACKAGE}_*.deb"))
    if not cached:
        # Into a folder of its own first: an interrupted download leaves no .deb behind.
        with tempfile.TemporaryDirectory(dir=CACHE) as folder:
            done = _download(folder)
            if done.returncode != 0:   # no package lists on this host yet, or old ones
                subprocess.run(["apt-get", "update"], capture_output=True, timeout=600)
                done = _download(folder)
            if done.returncode != 0:
                raise SystemExit(f"host: apt-get download {PACKAGE} failed: "
                                 f"{gist(done.stderr)} (is Debian's archive reachable?)")
            deb = next(Path(folder).glob(f"{PACKAGE}_*.deb"))
            cached = [deb.rename(CACHE / deb.name)]
    version = subprocess.run(["dpkg-deb", "-f", str(cached[-1]), "Version"], check=True,
                             capture_output=True, text=True).stdout.strip()
    return cached[-1], version


def _download(folder):
    return subprocess.run(["apt-get", "download", PACKAGE], cwd=folder, capture_output=True,
                          text=True, timeout=600)


def install(lab, nodes, deb, version):
    """The package on every node, unless that version is there already."""
    for node in nodes:
        there = on(lab, node, f"dpkg-query -W -f='${{Version}}' {PACKAGE} 2>/dev/null || true")
        if there == version:
            continue
        copy = subprocess.run(["scp", *access.ssh_options(lab), str(deb),
                               f"root@{node.address}:/tmp/{PACKAGE}.deb"],
                              capture_output=True, text=True, timeout=300)
        if copy.returncode != 0:
            raise SystemExit(f"{node.name}: scp of {deb.name} failed: {gist(copy.stderr)}")
        on(lab, node, f"dpkg -i /tmp/{PACKAGE}.deb > /dev/null && rm /tmp/{PACKAGE}.deb")


def running(lab, node):
    return on(lab, node, f"pgrep -u {USER} -x syncthing > /dev/null && echo yes || true") == "yes"


def stop(lab, nodes, wait_s=60):
    """Syncthing stopped on every node where it runs (a lab kept from an earlier run)."""
    for node in nodes:
        if running(lab, node):
            on(lab, node, cli("operations shutdown"))
        end = time.monotonic() + wait_s
        while running(lab, node):
            if time.monotonic() > end:
                raise SystemExit(f"{node.name}: Syncthing still runs {wait_s} s after its "
                                 f"shutdown: see {HOME}/syncthing.log there")
            time.sleep(0.5)


BACKUP = "/.replimesh-backup"   # an ignore pattern: the folder at the root


def start(lab, nodes, root, delay_s):
    """Syncthing from a fresh home on every node, sharing root among all of them with
    that watcher delay; returns its version once every node is in sync."""
    deb, version = package()
    install(lab, nodes, deb, version)
    stop(lab, nodes)
    ids = {}
    for node in nodes:   # a new home: no state of an earlier run (a kept lab)
        on(lab, node, f"rm -rf {HOME} && install -d -o {USER} -g {USER} -m 700 {HOME}")
        on(lab, node, f"runuser -u {USER} -- syncthing generate --home {HOME} "
                      "--no-default-folder > /dev/null")
        ids[node.name] = on(lab, node, f"runuser -u {USER} -- syncthing --home {HOME} --device-id")
    for node in nodes:   # replimesh's backup area differs per node: not Syncthing's to sync
        on(lab, node, f"printf '%s\\n' {BACKUP} > {root}/.stignore && "
                      f"chown {USER}: {root}/.stignore")
    since = time.time()
    for node in nodes:
        serve(lab, node)
    for node in nodes:
        configure(lab, node, nodes, ids, root, delay_s)
    wait_synced(lab, nodes, since)
    return version


def serve(lab, node):
    """Syncthing running in the background, its own log kept to at most 20 MB."""
    on(lab, node, f"runuser -u {USER} -- setsid -f syncthing serve --home {HOME} "
                  f"--no-browser --no-restart --no-upgrade --gui-address=http://{GUI} "
                  f"--logfile={HOME}/syncthing.log --log-max-size=10000000 "
                  "--log-max-old-files=1 < /dev/null > /dev/null 2>&1")
    wait_up(lab, node)


def wait_up(lab, node, wait_s=60):
    said = rest(lab, node, "up", 0, wait_s)
    if said != "ok":
        raise SystemExit(f"{node.name}: Syncthing's API did not answer within {wait_s} s "
                         f"({said}): see {HOME}/syncthing.log there")


def configure(lab, node, nodes, ids, root, delay_s):
    """Options, the other devices, then the folder: added paused, so that it is scanned
    once, when it has all its devices, and not again after each one is added."""
    steps = [f"config options {name} set -- {value}" for name, value in OPTIONS]
    steps.append(f"config options raw-listen-addresses 0 set tcp://:{PORT}")   # no QUIC
    others = [n for n in nodes if n is not node]
    for other in others:   # (devices add --addresses panics in 1.19: set it after)
        steps += [f"config devices add --device-id {ids[other.name]} --name {other.name}",
                  f"config devices {ids[other.name]} addresses 0 set "
                  f"tcp://{other.address}:{PORT}"]
    steps.append(f"config folders add --id {FOLDER} --label data --path {root} "
                 f"--fswatcher-delays {delay_s} --paused")
    steps += [f"config folders {FOLDER} devices add --device-id {ids[o.name]}" for o in others]
    steps.append(f"config folders {FOLDER} paused set false")
    on(lab, node, " && ".join(cli(step) for step in steps))


def set_delay(lab, nodes, delay_s):
    """The folder's watcher delay on every node. A changed folder restarts and scans;
    one that has that delay already does not (so there is no scan to wait for)."""
    since = {}
    for node in nodes:
        setting = cli(f"config folders {FOLDER} fswatcher-delays")
        if on(lab, node, f"{setting} get") != str(delay_s):
            since[node.name] = time.time()
            on(lab, node, f"{setting} set {delay_s}")
    wait_synced(lab, nodes, since)


def wait_synced(lab, nodes, since=None, wait_s=SYNC_WAIT_S):
    """Every node's folder idle and in sync with every device, within one deadline;
    since (a time, or one per node name): scanned at or after it."""
    end = time.monotonic() + wait_s
    for node in nodes:
        left = max(1.0, end - time.monotonic())
        scanned = since.get(node.name, 0.0) if isinstance(since, dict) else since or 0.0
        said = rest(lab, node, "synced", scanned, left)
        if said != "ok":
            raise SystemExit(f"{node.name}: Syncthing's folder not in sync within {wait_s} s "
                             f"({said}): see {HOME}/syncthing.log there")


def rest(lab, node, want, since, wait_s):
    """What REST printed on the node: "ok", or what was still not so at the deadline.
    Since is cut to the second: Syncthing's lastScan is, and a restarted folder's first
    scan often ends within the second of the change that restarted it."""
    try:
        done = access.ssh(lab, node, f"python3 -c {quote(REST)} {HOME} {FOLDER} {want} "
                                     f"{int(since)} {wait_s:.0f}", timeout=wait_s + 60)
    except subprocess.TimeoutExpired:
        return "no answer over SSH"
    return (done.stdout.strip() or done.stderr.strip() or "no answer").splitlines()[-1][:300]

