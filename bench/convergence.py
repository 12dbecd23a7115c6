"""How a mesh converges after changes on every node: one round on one node (gather pass,
then a second pass to the peers that missed a change) against the original scheme, one
single-pass round on every node in turn.

For each mesh size, a lab of that many nodes is made and deployed with site.yml (cron
rounds off), then, for every run, each node writes one new file and each scheme is
timed in turn (alternating, so that both see the same conditions). A scheme has
converged when every node holds the same files with the same content. Unison sessions
are counted from the rounds' own reports.

    python bench/convergence.py --sizes 3,5,8 --runs 5

writes bench/results/convergence.json, the table in bench/README.md (between its
markers) and bench/convergence.png.
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
SCHEMES = ("one round", "every node in turn")


def on(lab, node, command, timeout=600):
    done = access.ssh(lab, node, command, timeout=timeout)
    if done.returncode not in (0, 1):  # 1: a peer failed, told in the JSON
        raise SystemExit(f"{node.name}: {command}: {done.stderr.strip() or done.stdout}")
    return done.stdout


def round_on(lab, node, *flags):
    """(Unison sessions, seconds measured on the node) of one round."""
    out = on(lab, node, "runuser -u replimesh -- sh -c 'start=$(date +%s.%N); "
                        f"replimesh sync --json {' '.join(flags)}; echo; date +%s.%N; "
                        "echo $start'")
    *lines, ended, started = out.strip().splitlines()
    peers = json.loads("\n".join(lines))["peers"]
    return sum(p["sessions"] for p in peers), float(ended) - float(started)


def fingerprint(lab, node):
    return on(lab, node, f"cd {ROOT} && find . -type f -not -path './.replimesh-backup/*' "
                         "-exec md5sum {} + | sort")


def deploy(size):
    lab = Lab(f"bench{size}")
    control.up(lab, size, log=lambda *_: None)
    subprocess.run(["ansible-playbook", "-i", str(lab.inventory_dir), "playbooks/site.yml"],
                   cwd=HERE.parent, check=True, capture_output=True)
    nodes = list_nodes(lab)
    for node in nodes:
        on(lab, node, "rm -f /etc/cron.d/replimesh")
    return lab, nodes


def measure(lab, nodes, scheme, tag):
    for node in nodes:
        on(lab, node, f"echo {tag} > {ROOT}/{tag}-{node.name}.txt && "
                      f"chown replimesh: {ROOT}/{tag}-{node.name}.txt")
    started = time.monotonic()
    if scheme == SCHEMES[0]:
        sessions, seconds = round_on(lab, nodes[0])
    else:
        sessions, seconds = 0, 0.0
        for node in nodes:
            more, took = round_on(lab, node, "--one-pass")
            sessions, seconds = sessions + more, seconds + took
    wall = time.monotonic() - started
    prints = {fingerprint(lab, node) for node in nodes}
    return {"scheme": scheme, "nodes": len(nodes), "sessions": sessions,
            "seconds": round(seconds, 2), "wall": round(wall, 2), "converged": len(prints) == 1}


def table(results, sizes):
    lines = ["| nodes | scheme | Unison sessions | time to converge (s) | converged runs |",
             "| ---: | --- | ---: | ---: | ---: |"]
    for size in sizes:
        for scheme in SCHEMES:
            runs = [r for r in results if r["nodes"] == size and r["scheme"] == scheme]
            sessions = statistics.median(r["sessions"] for r in runs)
            seconds = statistics.median(r["seconds"] for r in runs)
            lines.append(f"| {size} | {scheme} | {sessions:g} | {seconds:.1f} "
                         f"| {sum(r['converged'] for r in runs)}/{len(runs)} |")
    return "\n".join(lines)


def plot(results, sizes, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for scheme, marker in zip(SCHEMES, "os"):
        for axis, key, label in ((axes[0], "sessions", "Unison sessions"),
                                 (axes[1], "seconds", "seconds to converge")):
            medians = [statistics.median(r[key] for r in results
                                         if r["nodes"] == n and r["scheme"] == scheme)
                       for n in sizes]
            axis.plot(sizes, medians, marker=marker, label=scheme)
            axis.set_xlabel("nodes")
            axis.set_ylabel(label)
            axis.set_xticks(sizes)
            axis.grid(alpha=0.3)
    axes[0].legend()
    report.save_plot(figure, "Converging after a change on every node (median of runs)", path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3,5,8")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="leave the labs up")
    args = parser.parse_args()
    report.require_plotting()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for size in sizes:
        lab, nodes = deploy(size)
        try:
            for run in range(args.runs):
                for scheme in (SCHEMES if run % 2 == 0 else SCHEMES[::-1]):
                    tag = f"r{run}-{'one' if scheme == SCHEMES[0] else 'turn'}"
                    result = measure(lab, nodes, scheme, tag)
                    print(json.dumps(result), flush=True)
                    results.append(result)
        finally:
            if not args.keep:
                control.down(lab)
    report.save("convergence", results, table(results, sizes))
    plot(results, sizes, HERE / "convergence.png")


if __name__ == "__main__":
    main()
