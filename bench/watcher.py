"""What the watcher itself costs on a node: its memory, the kernel's memory for its
watches, and its CPU while nothing changes, as the number of watched folders grows.

A 2-node lab is deployed with watch mode on (cron rounds off). For each count, node1's
root gets that many empty folders (100 a parent, besides the root's own few), its
watcher is started again (`replimesh watch --detach --replace`) and its first round
waited for; then, with nothing changing, for --idle seconds: the watcher's CPU time
(utime + stime of /proc/PID/stat) over that time, its resident memory (VmRSS), the
watches it holds (its inotify descriptor's fdinfo), and the kernel's inotify marks (the
host's /proc/slabinfo: every node's watches, the lab's containers sharing one kernel).

    python bench/watcher.py --folders 0,25000,50000,100000 --idle 60

writes bench/results/watcher.json, its table in bench/README.md and bench/watcher.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import report  # noqa: E402 - bench/report.py, beside this script
from latency import ROOT, as_sync_user, deploy, on, quote, wait  # noqa: E402

from fabfile.lab import control  # noqa: E402
from fabfile.lab.nodes import Lab  # noqa: E402

FOLDERS = ROOT + "/folders"
# Makes count empty folders under FOLDERS, 100 a parent (what is there already stays).
MAKE = """
import os, sys
top, count = sys.argv[1], int(sys.argv[2])
for number in range(count):
    os.makedirs(os.path.join(top, f"p{number // 100:05d}", f"f{number:07d}"), exist_ok=True)
"""
# The watcher's pid, on the node.
PID = "pgrep -u replimesh -f 'replimesh watch' | head -1"
TICKS = os.sysconf("SC_CLK_TCK")


def watcher_pid(lab, node):
    pid = on(lab, node, PID + " || true")
    if not pid:
        raise SystemExit(f"{node.name}: no watcher running: see /var/log/replimesh/watch.log")
    return pid


def cpu_ticks(lab, node, pid):
    fields = on(lab, node, f"cat /proc/{pid}/stat").rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])   # utime, stime


def rss_kib(lab, node, pid):
    status = on(lab, node, f"grep VmRSS /proc/{pid}/status")
    return int(status.split()[1])


def watches(lab, node, pid):
    """The inotify watches the process holds, from its descriptors' fdinfo."""
    return int(on(lab, node, f"cat /proc/{pid}/fdinfo/* 2>/dev/null | grep -c '^inotify wd:' "
                             "|| true") or 0)


def kernel_marks_kib():
    """The host kernel's memory in inotify marks (every container's), from slabinfo."""
    with open("/proc/slabinfo", encoding="utf-8") as slabs:
        for line in slabs:
            if line.startswith("inotify_inode_mark "):
                fields = line.split()
                return int(fields[1]) * int(fields[3]) // 1024   # active objects x size
    return None


def measure(lab, node, count, idle_s):
    on(lab, node, as_sync_user(f"python3 -c {quote(MAKE)} {FOLDERS} {count}"), timeout=3600)
    log = "/var/log/replimesh/watch.log"
    on(lab, node, f"truncate -s 0 {log}")
    on(lab, node, as_sync_user("replimesh watch --detach --replace"))
    wait(lambda: "(all)" in on(lab, node, f"cat {log}"), 600,
         f"{node.name}: the watcher's first round not done within 600 s: see {log}")
    pid = watcher_pid(lab, node)
    marks = kernel_marks_kib()
    started, ticks = time.monotonic(), cpu_ticks(lab, node, pid)
    time.sleep(idle_s)
    used = (cpu_ticks(lab, node, pid) - ticks) / TICKS
    elapsed = time.monotonic() - started
    return {"folders": count, "watches": watches(lab, node, pid),
            "rss_mib": round(rss_kib(lab, node, pid) / 1024, 1),
            "kernel_marks_mib": None if marks is None else round(marks / 1024, 1),
            "idle_cpu_percent": round(100 * used / elapsed, 3), "idle_s": round(elapsed, 1)}


def table(rows):
    lines = ["| folders watched | watches | watcher RSS (MiB) | kernel inotify marks, all "
             "nodes (MiB) | idle CPU (% of a core) |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        marks = "n/a" if row["kernel_marks_mib"] is None else f"{row['kernel_marks_mib']:.1f}"
        lines.append(f"| {row['folders']} | {row['watches']} | {row['rss_mib']:.1f} | {marks} "
                     f"| {row['idle_cpu_percent']:.2f} |")
    if len(rows) > 1 and rows[-1]["folders"] > rows[0]["folders"]:
        per = 100000 / (rows[-1]["folders"] - rows[0]["folders"])
        rss = (rows[-1]["rss_mib"] - rows[0]["rss_mib"]) * per
        said = f"Per 100k watched folders: {rss:.0f} MiB of the watcher's memory"
        if rows[0]["kernel_marks_mib"] is not None:
            kernel = (rows[-1]["kernel_marks_mib"] - rows[0]["kernel_marks_mib"]) * per
            said += f", {kernel:.0f} MiB of the kernel's"
        lines += ["", said + "."]
    return "\n".join(lines)


def plot(rows, path):
    figure, axis = report.plot_area()
    folders = [r["folders"] for r in rows]
    axis.plot(folders, [r["rss_mib"] for r in rows], marker="o", label="watcher RSS")
    if all(r["kernel_marks_mib"] is not None for r in rows):
        axis.plot(folders, [r["kernel_marks_mib"] for r in rows], marker="s",
                  label="kernel inotify marks (all nodes)")
    report.label(axis, "folders watched on the node", "MiB")
    report.save_plot(figure, "The watcher's memory", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folders", default="0,25000,50000,100000")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of each sample")
    parser.add_argument("--keep", action="store_true", help="leave the lab up")
    args = parser.parse_args()
    counts = sorted(int(c) for c in args.folders.split(","))
    lab = Lab("wcost")
    try:
        nodes = deploy(lab, 2, 0, watch=True)
        rows = []
        for count in counts:
            rows.append(measure(lab, nodes[0], count, args.idle))
            print(rows[-1], flush=True)
    finally:
        if not args.keep:
            control.down(lab)
    report.save("watcher", {"rows": rows}, table(rows))
    plot(rows, HERE / "watcher.png")


if __name__ == "__main__":
    main()
