"""What a round costs as the tree grows: a full round with nothing changed, and a round
for one changed file (what the watcher runs), against raw Unison sessions between the
same roots over an unrestricted key (root's, no forced command), in one run, alternating.

For each mesh size a lab is made and deployed (watchers on, cron rounds off); for each
tree size the same tree of small files is made on every node and synced once by every
node, then each measurement is run --runs times, the three kinds in turn:

- no change: `replimesh sync --json` on node1, every peer's pair unchanged since its
  last session found them equal (the watchers' markers), so no Unison session runs;
- one file: a file of node1 rewritten, and the round its watcher starts for it, as long
  as that round took by the watcher's log (the burst's quiet time before it left out);
- raw Unison: `unison ROOT ssh://root@PEER/ROOT -batch` from node1 to every peer in turn,
  nothing changed (the scan of both trees that a user's own Unison setup pays).

    python bench/rounds.py --sizes 3,5 --files 1000,10000,100000,300000 --runs 5 [--merge]

writes bench/results/rounds.json, its table in bench/README.md and bench/rounds.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import report  # noqa: E402 - bench/report.py, beside this script
from latency import FILL, ROOT, as_sync_user, on, quote, stop_watchers  # noqa: E402

from fabfile.lab import access, control  # noqa: E402
from fabfile.lab.nodes import Lab, list_nodes  # noqa: E402

KINDS = ("no change", "one file", "raw Unison")
# Seconds on the node itself, around a command.
TIMED = "sh -c 's=$(date +%s.%N); {command} > /dev/null; e=$?; echo $(date +%s.%N) $s $e'"


def timed(lab, node, command):
    out = on(lab, node, TIMED.format(command=command.replace("'", "'\\''")), timeout=3600)
    ended, started, code = out.split()
    return round(float(ended) - float(started), 3), int(code)


def deploy(size):
    lab = Lab(f"rounds{size}")
    control.up(lab, size, log=lambda *_: None)
    subprocess.run(["ansible-playbook", "-i", str(lab.inventory_dir), "playbooks/site.yml"],
                   cwd=HERE.parent, check=True, capture_output=True)
    nodes = list_nodes(lab)
    key = access.key_path(lab)
    for node in nodes:   # root's unrestricted key, for the raw Unison sessions
        on(lab, node, "rm -f /etc/cron.d/replimesh && install -d -m 700 /root/.ssh")
        subprocess.run(["scp", *access.ssh_options(lab), str(key),
                        f"root@{node.address}:/root/.ssh/id_ed25519"], check=True,
                       capture_output=True)
        on(lab, node, "cp /var/lib/replimesh/mesh/known_hosts /root/.ssh/known_hosts")
    return lab, nodes


def fill(lab, nodes, files):
    # Every watcher stopped, and cron's watchdog with them (it would start one again
    # within the minute, to sync a half-made tree into a node being emptied).
    stop_watchers(lab, nodes)
    for node in nodes:
        on(lab, node, f"rm -rf {ROOT}/tree")
        on(lab, node, as_sync_user(f"python3 -c {quote(FILL)} {ROOT} {files}"))
    for node in nodes:
        on(lab, node, as_sync_user("replimesh sync"), timeout=3600)
    for node in nodes:
        on(lab, node, as_sync_user("replimesh watch --detach"))
    for node in nodes:   # every watcher's first round, then every pair found equal
        deadline = time.monotonic() + 1800
        while "(all)" not in on(lab, node, "cat /var/log/replimesh/watch.log 2>/dev/null"):
            if time.monotonic() > deadline:
                raise SystemExit(f"{node.name}: no first round of its watcher")
            time.sleep(1)
    on(lab, nodes[0], as_sync_user("replimesh sync"), timeout=3600)
    for peer in nodes[1:]:   # Unison's archive of root's pairs
        on(lab, nodes[0], raw(peer), timeout=3600)


def raw(peer):
    return f"unison {ROOT} ssh://root@{peer.address}/{ROOT} -batch -silent -times"


def measure(lab, nodes, kind, files, number):
    first = nodes[0]
    if kind == "no change":
        seconds, code = timed(lab, first, as_sync_user("replimesh sync --json"))
    elif kind == "one file":
        before = len(watcher_rounds(lab, first))
        on(lab, first, as_sync_user(f"sh -c 'echo {number} > {ROOT}/tree/d00000/f0000000'"))
        deadline = time.monotonic() + 600
        while len(watcher_rounds(lab, first)) == before:
            if time.monotonic() > deadline:
                raise SystemExit(f"{first.name}: no round of its watcher for the change")
            time.sleep(0.5)
        line = watcher_rounds(lab, first)[before]
        seconds = float(line.rsplit("(", 1)[1].split()[0])
        code = 0 if "(1 path(s))" in line and "failed" not in line else 1
        on(lab, first, as_sync_user("replimesh sync"))   # the pairs found equal again
    else:
        seconds, code = 0.0, 0
        for peer in nodes[1:]:
            took, status = timed(lab, first, raw(peer))
            seconds, code = seconds + took, max(code, status)
    return {"nodes": len(nodes), "files": files, "kind": kind, "seconds": seconds,
            "exit": code}


def watcher_rounds(lab, node):
    """The lines of node's watcher log that tell a round."""
    return [line for line in on(lab, node, "cat /var/log/replimesh/watch.log").splitlines()
            if " - round for " in line]


def medians(results, size, files, kind):
    runs = [r["seconds"] for r in results
            if r["nodes"] == size and r["files"] == files and r["kind"] == kind]
    return statistics.median(runs) if runs else float("nan")


def table(results, sizes, trees):
    lines = ["| nodes | files | no-change full round (s) | one-file round (s) "
             "| raw Unison, every peer (s) | raw / no-change |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for size in sizes:
        for files in trees:
            none, one, rawly = (medians(results, size, files, k) for k in KINDS)
            lines.append(f"| {size} | {files} | {none:.2f} | {one:.2f} | {rawly:.2f} "
                         f"| {rawly / none:.1f}x |")
    return "\n".join(lines)


def plot(results, sizes, trees, path):
    figure, axis = report.plot_area()
    for size, style in zip(sizes, ("-", "--", ":")):
        for kind, marker in zip(KINDS, "os^"):
            axis.plot(trees, [medians(results, size, f, kind) for f in trees], style,
                      marker=marker, label=f"{kind}, {size} nodes")
    axis.set_xscale("log")
    axis.set_yscale("log")   # tenths of a second beside raw Unison's tens of seconds
    report.label(axis, "files in the root", "seconds (median)")
    report.save_plot(figure, "A round's cost as the tree grows", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3,5")
    parser.add_argument("--files", default="1000,10000,100000,300000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="leave the labs up")
    parser.add_argument("--merge", action="store_true",
                        help="keep the results of other (nodes, files) pairs from "
                             "results/rounds.json")
    args = parser.parse_args()
    report.require_plotting()
    sizes = [int(s) for s in args.sizes.split(",")]
    trees = [int(f) for f in args.files.split(",")]
    results = []
    for size in sizes:
        lab, nodes = deploy(size)
        try:
            for files in trees:
                fill(lab, nodes, files)
                for number in range(args.runs):
                    order = KINDS if number % 2 == 0 else KINDS[::-1]
                    for kind in order:
                        result = measure(lab, nodes, kind, files, number)
                        print(json.dumps(result), flush=True)
                        results.append(result)
        finally:
            if not args.keep:
                control.down(lab)
    path = HERE / "results" / "rounds.json"
    if args.merge and path.exists():   # the other pairs' records, measured before
        measured = {(r["nodes"], r["files"]) for r in results}
        results = [r for r in json.loads(path.read_text())
                   if (r["nodes"], r["files"]) not in measured] + results
        sizes = sorted({r["nodes"] for r in results})
        trees = sorted({r["files"] for r in results})
    report.save("rounds", results, table(results, sizes, trees))
    plot(results, sizes, trees, HERE / "rounds.png")


if __name__ == "__main__":
    main()
