"""What the watcher itself costs on a node: its memory, the kernel's memory for its
watches, and its CPU while nothing changes, as the number of watched folders grows.

A 2-node lab is deployed with watch mode on (cron rounds off). For each count, node1's
root gets that many empty folders (100 a parent, besides the root's own few), its
watcher is started again (`replimesh watch --detach`) and its first round waited for;
the kernel's unreclaimable slab memory (where inotify marks live; the host's
/proc/meminfo, one kernel for every container) is read before and after that start.
Then, with nothing changing, for --idle seconds: the watcher's CPU time (utime + stime
of /proc/PID/stat) over that time, its resident memory (VmRSS), the watches it holds (its
inotify descriptor's fdinfo) and the rounds it ran meanwhile.

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
    """The inotify watches the process holds, from its descriptors' fdinfo (readable by
    its own user: the container's root may not look into another user's descriptors)."""
    return int(on(lab, node, as_sync_user(f"sh -c 'cat /proc/{pid}/fdinfo/*'")
                  + " | grep -c '^inotify wd:' || true") or 0)


def unreclaimable_kib():
    """The host kernel's unreclaimable slab memory, where inotify marks live (every
    container's: one kernel)."""
    with open("/proc/meminfo", encoding="utf-8") as memory:
        for line in memory:
            if line.startswith("SUnreclaim:"):
                return int(line.split()[1])
    raise SystemExit("/proc/meminfo has no SUnreclaim line")


def rounds_in(lab, node, log):
    return int(on(lab, node, f"grep -c ' - round for ' {log} || true") or 0)


def measure(lab, node, count, idle_s):
    on(lab, node, as_sync_user(f"python3 -c {quote(MAKE)} {FOLDERS} {count}"), timeout=3600)
    log = "/var/log/replimesh/watch.log"
    on(lab, node, as_sync_user("replimesh watch --stop"))
    on(lab, node, f"truncate -s 0 {log}")
    before = unreclaimable_kib()
    on(lab, node, as_sync_user("replimesh watch --detach"))
    wait(lambda: "(all)" in on(lab, node, f"cat {log}"), 600,
         f"{node.name}: the watcher's first round not done within 600 s: see {log}")
    kernel = unreclaimable_kib() - before
    pid = watcher_pid(lab, node)
    rounds = rounds_in(lab, node, log)
    started, ticks = time.monotonic(), cpu_ticks(lab, node, pid)
    time.sleep(idle_s)
    used = (cpu_ticks(lab, node, pid) - ticks) / TICKS
    elapsed = time.monotonic() - started
    return {"folders": count, "watches": watches(lab, node, pid),
            "rss_mib": round(rss_kib(lab, node, pid) / 1024, 1),
            "kernel_mib": round(kernel / 1024, 1),
            "idle_cpu_percent": round(100 * used / elapsed, 3), "idle_s": round(elapsed, 1),
            "idle_rounds": rounds_in(lab, node, log) - rounds}


def table(rows):
    lines = ["| folders watched | watches | watcher RSS (MiB) | kernel, unreclaimable slab "
             "(MiB) | idle CPU (% of a core) | rounds while idle |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['folders']} | {row['watches']} | {row['rss_mib']:.1f} | "
                     f"{row['kernel_mib']:.1f} | {row['idle_cpu_percent']:.2f} | "
                     f"{row['idle_rounds']} |")
    if len(rows) > 1 and rows[-1]["folders"] > rows[0]["folders"]:
        per = 100000 / (rows[-1]["folders"] - rows[0]["folders"])
        rss = (rows[-1]["rss_mib"] - rows[0]["rss_mib"]) * per
        kernel = (rows[-1]["kernel_mib"] - rows[0]["kernel_mib"]) * per
        lines += ["", f"Per 100k watched folders: {rss:.0f} MiB of the watcher's memory, "
                      f"{kernel:.0f} MiB of the kernel's."]
    return "\n".join(lines)


def plot(rows, path):
    figure, axis = report.plot_area()
    folders = [r["folders"] for r in rows]
    axis.plot(folders, [r["rss_mib"] for r in rows], marker="o", label="watcher RSS")
    axis.plot(folders, [r["kernel_mib"] for r in rows], marker="s",
              label="kernel, unreclaimable slab, at the watcher's start")
    report.label(axis, "folders watched on the node", "MiB")
    report.save_plot(figure, "The watcher's memory", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folders", default="0,25000,50000,100000")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of each sample")
    parser.add_argument("--keep", action="store_true", help="leave the lab up")
    args = parser.parse_args()
    report.require_plotting()
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
