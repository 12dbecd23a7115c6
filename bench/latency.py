"""Write-to-everywhere time with watch mode, against Syncthing: from a change on one
node until every other node holds it, with no round started by hand.

For each mesh size a lab is made and deployed (cron rounds off), its root filled with
the same tree of small files on every node (then one round on each node, so that every
pair's Unison archive knows it). Then each scheme in turn, on that same root, never two
at once:

- replimesh watch: the watchers, deployed by the role replimesh_watch; changes come
  1.5 s apart, so the watcher's SSH connections to its peers are open;
- replimesh watch, no connection open: the same, with the writer's connections ended
  before each change, as after 120 s without a round: what an edit after a quiet spell
  sees (a handshake with every peer);
- Syncthing (bench/syncthing.py), once the watchers are stopped: one per node, every
  node a device of every other, the root their one folder; first with the watcher's
  default delay (fsWatcherDelayS 10 s), then with 1 s.

Each change is made on the next node in turn: a new small file, a new file of 10 MiB,
or the deletion of a small file. A poller on every other node, started before the
change, notes the moment the change is there (the nodes share the host's clock); the
change's time is the latest of them. Changes go one by one: after each, the watchers'
quiet time passes, or every Syncthing is idle and in sync again. Cron-only rounds are
given by their schedule: a change waits for the writer's next round, uniformly within
the interval, and then that round's own time (not counted).

    python bench/latency.py --sizes 3,5 --files 100000 --changes 20 \\
        [--schemes replimesh,replimesh-cold,syncthing,syncthing-1s] [--lab-prefix lat] \\
        [--merge] [--keep]

writes bench/results/latency.json, its table in bench/README.md and bench/latency.png.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import report  # noqa: E402 - bench/report.py, beside this script
import syncthing  # noqa: E402 - bench/syncthing.py
from syncthing import on, quote  # noqa: E402

from fabfile.lab import access, control  # noqa: E402
from fabfile.lab.nodes import Lab, list_nodes  # noqa: E402

ROOT = "/srv/replimesh/data"
KINDS = ("small file", "10 MiB file", "deletion")
# --schemes names, in the order they run on a lab: (the name in the table and the
# records, Syncthing's watcher delay in seconds or None for replimesh's watchers).
SCHEMES = {"replimesh": ("replimesh watch", None),
           "replimesh-cold": ("replimesh watch, no connection open", None),
           "syncthing": ("Syncthing, 10 s watcher delay (default)", syncthing.DEFAULT_DELAY_S),
           "syncthing-1s": ("Syncthing, 1 s watcher delay", 1)}
UNNAMED = "replimesh watch"   # the scheme of records from before there were others
CRON_INTERVAL_S = 3600   # replimesh_cron_interval's default
WAIT_S = 120
QUIET_S = 1.5   # past the replimesh watcher's quiet time after a burst
SETTLE_S = 300   # for every Syncthing to be idle and in sync after a change
# Runs on a node: prints "ready", then the time at which the path is as wanted
# ("gone", or the size it must have).
POLLER = """
import os, sys, time
path, want = sys.argv[1], sys.argv[2]
print("ready", flush=True)
deadline = time.time() + float(sys.argv[3])
def there():
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return want == "gone"
    return want != "gone" and size == int(want)
while not there():
    if time.time() > deadline:
        print("timeout", flush=True)
        sys.exit(1)
    time.sleep(0.005)
print(f"{time.time():.4f}", flush=True)
"""
# Makes the same tree on every node: 100 files a folder, names and contents from the number.
FILL = """
import os, sys
root, count = sys.argv[1], int(sys.argv[2])
for number in range(count):
    folder = os.path.join(root, "tree", f"d{number // 100:05d}")
    if number % 100 == 0:
        os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"f{number:07d}"), "w") as out:
        out.write(f"file {number}\\n")
    os.utime(os.path.join(folder, f"f{number:07d}"), (1700000000, 1700000000))
"""


def as_sync_user(command):
    return f"runuser -u replimesh -- {command}"


def ansible(lab, *command):
    """An ansible command on the lab's inventory; a failure ends the run with its reason."""
    done = subprocess.run([command[0], "-i", str(lab.inventory_dir), *command[1:]],
                          cwd=HERE.parent, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stdout.splitlines()
        failed = [line for line in lines if "fatal:" in line or "FAILED" in line] or lines[-1:]
        raise SystemExit(f"{lab.name}: {' '.join(command)} failed: "
                         f"{(failed or [done.stderr.strip()])[-1][:300]}")


def deploy(lab, size, files, watch):
    """The lab's nodes, deployed (cron rounds off), every root holding the same tree; with
    watch, also known to every pair's archive, and the watchers running."""
    control.up(lab, size, log=lambda *_: None)
    ansible(lab, "ansible-playbook", "playbooks/site.yml", "-e", "replimesh_watch=false")
    nodes = list_nodes(lab)
    syncthing.stop(lab, nodes)   # a lab kept from an earlier run may still run it
    for node in nodes:   # no changes of an earlier run: their names are taken again
        on(lab, node, f"rm -f /etc/cron.d/replimesh {ROOT}/change-* {ROOT}/.stignore")
        on(lab, node, as_sync_user(f"python3 -c {quote(FILL)} {ROOT} {files}"))
    if not watch:
        return nodes
    for node in nodes:   # every pair's archive knows the tree
        on(lab, node, as_sync_user("replimesh sync"), timeout=3600)
    # Then the watchers, as an operator turns watch mode on: the role alone.
    ansible(lab, "ansible", "mesh", "-m", "ansible.builtin.include_role",
            "-a", "name=replimesh_watch")
    for node in nodes:   # each watcher's first (full) round done
        wait(lambda n=node: "(all)" in on(lab, n, "cat /var/log/replimesh/watch.log"), 600,
             f"{node.name}: its watcher's first round not done within 600 s: see "
             "/var/log/replimesh/watch.log there")
    return nodes


def stop_watchers(lab, nodes):
    """No replimesh watcher left to write the root (while Syncthing does, or while a
    tree is made again): the cron watchdog's file first (it would start one again within
    the minute), then the watcher, which --stop waits for."""
    for node in nodes:
        on(lab, node, "rm -f /etc/cron.d/replimesh-watch")
        # A watcher ends its round before it stops: a full one of a large tree may take
        # longer than one --stop waits.
        wait(lambda n=node: access.ssh(lab, n, as_sync_user("replimesh watch --stop"),
                                       timeout=120).returncode == 0, 1800,
             f"{node.name}: its watcher did not stop within 1800 s")


def wait(condition, deadline_s, problem):
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise SystemExit(problem)
        time.sleep(0.5)


def pollers(lab, nodes, path, want):
    started = []
    for node in nodes:
        process = subprocess.Popen(
            ["ssh", *access.ssh_options(lab), f"root@{node.address}",
             f"python3 -c {quote(POLLER)} {path} {want} {WAIT_S}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True)
        started.append(process)
    for node, process in zip(nodes, started):
        if process.stdout.readline().strip() != "ready":
            raise SystemExit(f"{node.name}: its poller did not start: try "
                             f"`ssh root@{node.address} python3 -V` with the lab's key")
    return started


def measure(lab, nodes, writer, kind, tag, cold=False):
    """One change made on writer: its time to every other node, or None if one of them
    did not have it within WAIT_S. cold: the writer's watcher has no connection open
    when the change is made."""
    name = f"{ROOT}/change-{tag}"
    others = [n for n in nodes if n is not writer]
    if kind == "deletion":
        on(lab, writer, as_sync_user(f"sh -c 'echo doomed > {name}'"))
        for process in pollers(lab, others, name, 7):   # everywhere first
            process.wait()
        watching, change = pollers(lab, others, name, "gone"), f"rm {name}"
    elif kind == "small file":
        watching, change = pollers(lab, others, name, 7), f"sh -c 'echo little > {name}'"
    else:
        watching = pollers(lab, others, name, 10 << 20)
        change = f"sh -c 'head -c 10M /dev/urandom > {name}.tmp && mv {name}.tmp {name}'"
    if cold:
        close_connections(lab, writer)
    started = time.time()
    on(lab, writer, as_sync_user(change))
    times = []
    for process in watching:
        line = process.stdout.readline().strip()
        process.wait()
        times.append(float(line) if line and line != "timeout" else math.nan)
    late = any(math.isnan(t) for t in times)
    return {"nodes": len(nodes), "kind": kind, "writer": writer.name,
            "seconds": None if late else round(max(times) - started, 3)}


def run(lab, size, files, changes, chosen):
    """Every chosen scheme's changes on the lab; returns their records and the version
    of Syncthing (None if it did not run)."""
    results, version = [], None
    nodes = deploy(lab, size, files,
                   watch=any(SCHEMES[key][1] is None for key in chosen))
    for key in chosen:
        scheme, delay = SCHEMES[key]
        if delay is not None and version is None:
            stop_watchers(lab, nodes)
            version = syncthing.start(lab, nodes, ROOT, delay)
        elif delay is not None:
            syncthing.set_delay(lab, nodes, delay)
        for number in range(changes * len(KINDS)):
            kind = KINDS[number % len(KINDS)]
            result = {"scheme": scheme,
                      **measure(lab, nodes, nodes[number % len(nodes)], kind,
                                f"{key}-{number}", cold=key == "replimesh-cold")}
            print(json.dumps(result), flush=True)
            results.append(result)
            if delay is None:
                time.sleep(QUIET_S)   # changes one by one
            else:
                syncthing.wait_synced(lab, nodes, wait_s=SETTLE_S)
    return results, version


def close_connections(lab, node):
    """End the SSH connections node's watcher keeps to its peers, as 120 s without a
    round does (KEEP_CONNECTIONS_S): its next round connects again, as a change after a
    quiet spell does."""
    masters = "-u replimesh -f 'ControlMaster=ye[s]'"   # not this shell's own line
    on(lab, node, f"pkill {masters} || true")
    wait(lambda: not on(lab, node, f"pgrep {masters} || true"), 30,
         f"{node.name}: its watcher's SSH connections did not end within 30 s")


def scheme_of(record):
    return record.get("scheme", UNNAMED)


def schemes_in(results):
    """The schemes of the records, in the order of SCHEMES (any other after them)."""
    known = [name for name, _ in SCHEMES.values()]
    found = {scheme_of(r) for r in results}
    return [s for s in known if s in found] + sorted(found - set(known))


def reached(results, size, scheme, kind):
    """The times of the changes that reached every node, and how many changes there were."""
    runs = [r for r in results
            if r["nodes"] == size and scheme_of(r) == scheme and r["kind"] == kind]
    return [r["seconds"] for r in runs if r["seconds"] is not None], len(runs)


def percentile(values, share):
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def table(results, files):
    lines = [f"| nodes | change (root of {files} files) | scheme | p50 (s) | p95 (s) "
             "| changes that reached every node |",
             "| ---: | --- | --- | ---: | ---: | ---: |"]
    for size in sorted({r["nodes"] for r in results}):
        for scheme in schemes_in(results):
            for kind in KINDS:
                times, count = reached(results, size, scheme, kind)
                if not count:
                    continue
                p50, p95 = ((f"{statistics.median(times):.2f}", f"{percentile(times, 0.95):.2f}")
                            if times else ("-", "-"))
                lines.append(f"| {size} | {kind} | {scheme} | {p50} | {p95} "
                             f"| {len(times)}/{count} |")
        lines.append(f"| {size} | any | cron rounds only (hourly) | {CRON_INTERVAL_S / 2:.0f} "
                     f"| {CRON_INTERVAL_S * 0.95:.0f} | (schedule) |")
    return "\n".join(lines)


def plot(results, path):
    """One panel a kind of change; a colour a scheme, p50 solid and p95 dotted."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter
    sizes = sorted({r["nodes"] for r in results})
    schemes = schemes_in(results)
    figure, axes = report.plot_area(1, len(KINDS), size=(12, 3.8))
    for axis, kind in zip(axes, KINDS):
        for index, scheme in enumerate(schemes):
            for share, style in ((0.5, "-"), (0.95, ":")):
                values = [percentile(reached(results, n, scheme, kind)[0], share) for n in sizes]
                axis.plot(sizes, values, style, marker="o^sv"[index % 4], color=f"C{index}")
        axis.set_title(kind, fontsize=10)
        axis.set_xticks(sizes)
        if axis is not axes[0]:
            axis.sharey(axes[0])
        report.label(axis, "nodes", "seconds to every node", legend=False)
    # Log scale, in plain seconds: a few seconds and a minute on the same axis.
    axes[0].set_yscale("log")
    axes[0].yaxis.set_major_locator(FixedLocator([0.5, 1, 2, 5, 10, 20, 50, 100]))
    axes[0].yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes[0].yaxis.set_minor_formatter(NullFormatter())
    keys = [Line2D([], [], color=f"C{i}", marker="o^sv"[i % 4], label=scheme)
            for i, scheme in enumerate(schemes)]
    keys += [Line2D([], [], color="grey", linestyle=style, label=label)
             for style, label in (("-", "p50"), (":", "p95"))]
    axes[-1].legend(handles=keys, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    report.save_plot(figure, "Write-to-everywhere time: replimesh watch and Syncthing", path)


def merged(path, files, results):
    """Records of an earlier run for the (nodes, scheme) pairs not measured now, then
    these; an earlier run's records without a scheme are replimesh watch's."""
    old = json.loads(path.read_text())
    if old["files"] != files:
        raise SystemExit(f"--merge: {path} was measured with --files {old['files']}")
    now = {(r["nodes"], scheme_of(r)) for r in results}
    kept = [{**r, "scheme": scheme_of(r)} for r in old["runs"]
            if (r["nodes"], scheme_of(r)) not in now]
    return kept + results, old.get("syncthing")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3,5")
    parser.add_argument("--files", type=int, default=100000)
    parser.add_argument("--changes", type=int, default=20, help="of each kind")
    parser.add_argument("--schemes", default=",".join(SCHEMES),
                        help=f"some of {', '.join(SCHEMES)} (they run in that order)")
    parser.add_argument("--lab-prefix", default="lat",
                        help="labs are named PREFIX3, PREFIX5...: runs side by side need "
                             "prefixes of their own")
    parser.add_argument("--merge", action="store_true",
                        help="keep the results of other sizes and schemes from "
                             "results/latency.json")
    parser.add_argument("--keep", action="store_true", help="leave the labs up")
    args = parser.parse_args()
    report.require_plotting()
    sizes = [int(s) for s in args.sizes.split(",")]
    asked = set(args.schemes.split(","))
    if not asked <= set(SCHEMES):
        raise SystemExit(f"--schemes: {', '.join(sorted(asked - set(SCHEMES)))} unknown: "
                         f"use some of {', '.join(SCHEMES)}")
    chosen = [key for key in SCHEMES if key in asked]
    results, version = [], None
    for size in sizes:
        lab = Lab(f"{args.lab_prefix}{size}")
        try:
            found, used = run(lab, size, args.files, args.changes, chosen)
        finally:
            if not args.keep:
                control.down(lab)
        results += found
        version = used or version
    path = HERE / "results" / "latency.json"
    if args.merge and path.exists():
        results, earlier = merged(path, args.files, results)
        version = version or earlier
    report.save("latency", {"files": args.files, "syncthing": version, "runs": results},
                table(results, args.files))
    plot(results, HERE / "latency.png")


if __name__ == "__main__":
    main()
