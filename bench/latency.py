"""Write-to-everywhere time with watch mode: from a change on one node until every other
node holds it, with the watchers deployed by site.yml and no round started by hand.

For each mesh size a lab is made and deployed (cron rounds off: the watcher alone), its
root filled with the same tree of small files on every node (then one round on each
node, so that every pair's Unison archive knows it). Each change is made on the next
node in turn: a new small file, a new file of 10 MiB, or the deletion of a small file.
A poller on every other node, started before the change, notes the moment the change is
there (the nodes share the host's clock); the change's time is the latest of them.
Cron-only rounds are given by their schedule: a change waits for the writer's next
round, uniformly within the interval, and then that round's own time (not counted).

    python bench/latency.py --sizes 3,5 --files 100000 --changes 20

writes bench/results/latency.json, its table in bench/README.md and bench/latency.png.
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

from fabfile.lab import access, control  # noqa: E402
from fabfile.lab.nodes import Lab, list_nodes  # noqa: E402

ROOT = "/srv/replimesh/data"
KINDS = ("small file", "10 MiB file", "deletion")
CRON_INTERVAL_S = 3600   # replimesh_cron_interval's default
WAIT_S = 120
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


def on(lab, node, command, timeout=1800):
    done = access.ssh(lab, node, command, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"{node.name}: {command[:80]}: {done.stderr.strip() or done.stdout}")
    return done.stdout


def as_sync_user(command):
    return f"runuser -u replimesh -- {command}"


def deploy(size, files):
    lab = Lab(f"lat{size}")
    control.up(lab, size, log=lambda *_: None)
    subprocess.run(["ansible-playbook", "-i", str(lab.inventory_dir), "playbooks/site.yml",
                    "-e", "replimesh_watch=false"], cwd=HERE.parent, check=True,
                   capture_output=True)
    nodes = list_nodes(lab)
    for node in nodes:
        on(lab, node, "rm -f /etc/cron.d/replimesh")
        on(lab, node, as_sync_user(f"python3 -c {quote(FILL)} {ROOT} {files}"))
    for node in nodes:   # every pair's archive knows the tree
        on(lab, node, as_sync_user("replimesh sync"), timeout=3600)
    # Then the watchers, as an operator turns watch mode on: the role alone.
    subprocess.run(["ansible", "-i", str(lab.inventory_dir), "mesh", "-m",
                    "ansible.builtin.include_role", "-a", "name=replimesh_watch"],
                   cwd=HERE.parent, check=True, capture_output=True)
    for node in nodes:   # each watcher's first (full) round done
        wait(lambda n=node: "(all)" in on(lab, n, "cat /var/log/replimesh/watch.log"), 600)
    return lab, nodes


def quote(text):
    return "'" + text.replace("'", "'\\''") + "'"


def wait(condition, deadline_s):
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            raise SystemExit("timed out waiting for the lab")
        time.sleep(0.5)


def pollers(lab, nodes, path, want):
    started = []
    for node in nodes:
        process = subprocess.Popen(
            ["ssh", *access.ssh_options(lab), f"root@{node.address}",
             f"python3 -c {quote(POLLER)} {path} {want} {WAIT_S}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        started.append(process)
    for process in started:
        assert process.stdout.readline().strip() == "ready"
    return started


def measure(lab, nodes, writer, kind, number):
    name = f"{ROOT}/change-{number}"
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
    started = time.time()
    on(lab, writer, as_sync_user(change))
    times = []
    for process in watching:
        line = process.stdout.readline().strip()
        process.wait()
        times.append(float(line) if line and line != "timeout" else float("nan"))
    return {"nodes": len(nodes), "kind": kind, "writer": writer.name,
            "seconds": round(max(times) - started, 3)}


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def table(results, sizes, files):
    lines = [f"| nodes | change (root of {files} files) | scheme | p50 (s) | p95 (s) | changes |",
             "| ---: | --- | --- | ---: | ---: | ---: |"]
    for size in sizes:
        for kind in KINDS:
            runs = [r["seconds"] for r in results if r["nodes"] == size and r["kind"] == kind]
            if not runs:
                continue
            lines.append(f"| {size} | {kind} | replimesh watch | {statistics.median(runs):.2f} "
                         f"| {percentile(runs, 0.95):.2f} | {len(runs)} |")
        lines.append(f"| {size} | any | cron rounds only (hourly) | {CRON_INTERVAL_S / 2:.0f} "
                     f"| {CRON_INTERVAL_S * 0.95:.0f} | (schedule) |")
    return "\n".join(lines)


def plot(results, sizes, path):
    figure, axis = report.plot_area()
    for kind, marker in zip(KINDS, "o^s"):
        for share, style in ((0.5, "-"), (0.95, ":")):
            values = [percentile([r["seconds"] for r in results
                                  if r["nodes"] == n and r["kind"] == kind], share)
                      for n in sizes]
            axis.plot(sizes, values, style, marker=marker,
                      label=f"{kind}, p{int(share * 100)}")
    axis.set_xticks(sizes)
    report.label(axis, "nodes", "seconds to every node")
    report.save_plot(figure, "Write-to-everywhere time with watch mode", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3,5")
    parser.add_argument("--files", type=int, default=100000)
    parser.add_argument("--changes", type=int, default=20, help="of each kind")
    parser.add_argument("--keep", action="store_true", help="leave the labs up")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for size in sizes:
        lab, nodes = deploy(size, args.files)
        try:
            for number in range(args.changes * len(KINDS)):
                kind = KINDS[number % len(KINDS)]
                result = measure(lab, nodes, nodes[number % len(nodes)], kind, number)
                print(json.dumps(result), flush=True)
                results.append(result)
                time.sleep(1.5)   # past the last burst's quiet time: changes one by one
        finally:
            if not args.keep:
                control.down(lab)
    report.save("latency", {"files": args.files, "runs": results},
                table(results, sizes, args.files))
    plot(results, sizes, HERE / "latency.png")


if __name__ == "__main__":
    main()
